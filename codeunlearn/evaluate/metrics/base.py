"""What every evaluation metric shares: the model under test, batched scoring primitives and the result record.

A metric is a function `metric(ctx: EvalContext, **params) -> MetricResult`, registered by name in
`codeunlearn.evaluate.metrics.METRICS`; an evaluation config lists metric names with their parameters. The model is any
causal LM with the Hugging Face call signature (`model(input_ids=..., attention_mask=...).logits`): a base model, a
`BottleneckedModel` (with or without edits), an exported directory loaded with remote code, or a baseline's output.

Both primitives avoid left padding: continuations are scored with right padding (later pads cannot change earlier
logits in a causal LM), and greedy generation batches only prompts of the same token length. A bottleneck that
passes position 0 through unquantized therefore sees exactly what it sees on an unbatched prompt.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from codeunlearn.runtime import autocast, model_device


@dataclass
class EvalContext:
    """The model under test and how to run it.

    Attributes:
        model: the causal LM evaluated.
        tokenizer: its tokenizer.
        batch_size: sequences per forward pass.
        max_items: score at most this many items per probe set (a seeded sample; None: all). The fast path.
        seed: seeds every sample drawn, so a run is deterministic.
        bf16: bf16 autocast for the forward passes (fast on GPUs / AMX CPUs only).
        progress: show progress bars.
        reference_model: the base model, for metrics measured *under the base model* (fluency perplexity);
            None when the model under test is the base model itself.
        max_length: longest sequence fed to the model; longer inputs are cut from the left.
    """

    model: nn.Module
    tokenizer: Any
    batch_size: int = 8
    max_items: int | None = None
    seed: int = 0
    bf16: bool = False
    progress: bool = True
    reference_model: nn.Module | None = None
    max_length: int = 1024


@dataclass
class MetricResult:
    """One metric's scores on one model.

    Attributes:
        name: the metric's name in the evaluation config (e.g. `hp_trivia_hard`).
        scores: headline numbers, e.g. {"acc": 0.44, "acc_norm": 0.45}; higher is not always better (losses).
        chance: the chance level of each score that has one (same keys as `scores`).
        n: items scored.
        details: per-item records (prompt, choices, scores, generations), saved beside the report.
        group: the report section: `forget`, `retain`, `general`, `fluency` or `attack`.
    """

    name: str
    scores: dict[str, float]
    chance: dict[str, float] = field(default_factory=dict)
    n: int = 0
    details: list[dict] = field(default_factory=list)
    group: str = "general"


class Metric(Protocol):
    def __call__(self, ctx: EvalContext, **params: Any) -> MetricResult: ...


@dataclass
class ContinuationScore:
    """log p(continuation | context) summed over the continuation's tokens, and what normalises it."""

    logprob: float
    num_tokens: int
    num_chars: int
    greedy: bool  # every continuation token is the model's top-1 prediction

    @property
    def per_char(self) -> float:
        return self.logprob / max(self.num_chars, 1)


def encode_pair(tokenizer: Any, context: str, continuation: str, max_length: int) -> tuple[list[int], int]:
    """Token ids of context + continuation (the continuation tokenized on its own, as lm-eval does) and the
    number of continuation tokens; cut from the left to `max_length`."""
    context_ids = tokenizer(context, add_special_tokens=True)["input_ids"]
    continuation_ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not continuation_ids:
        raise ValueError(f"continuation {continuation!r} has no tokens")
    ids = (context_ids + continuation_ids)[-max_length:]
    return ids, min(len(continuation_ids), len(ids) - 1)


@torch.no_grad()
def score_token_continuations(
    model: nn.Module,
    encoded: Sequence[tuple[list[int], int]],
    batch_size: int,
    bf16: bool = False,
    desc: str | None = None,
    progress: bool = True,
) -> list[tuple[Tensor, bool] | None]:
    """Per-token log-probabilities of the last `count` tokens of each `(ids, count)` under `model`, and whether every
    one of them is the top-1 prediction (None where count is 0).

    Right padding, longest first; only the continuation positions are normalised (a full-vocabulary log-softmax of
    every position would cost more than the forward on long prompts)."""
    device = model_device(model)
    results: list[tuple[Tensor, bool] | None] = [None] * len(encoded)
    order = sorted((i for i, (_, count) in enumerate(encoded) if count > 0), key=lambda i: -len(encoded[i][0]))
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False, disable=not progress or desc is None):
        index = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in index)
        input_ids = torch.zeros((len(index), width), dtype=torch.long)
        mask = torch.zeros((len(index), width), dtype=torch.long)
        for row, i in enumerate(index):
            ids = encoded[i][0]
            input_ids[row, : len(ids)] = torch.tensor(ids)
            mask[row, : len(ids)] = 1
        with autocast(device, bf16):
            logits = model(input_ids=input_ids.to(device), attention_mask=mask.to(device), use_cache=False).logits
        for row, i in enumerate(index):
            ids, count = encoded[i]
            targets = torch.tensor(ids[-count:], device=logits.device)
            predicted = F.log_softmax(logits[row, len(ids) - count - 1 : len(ids) - 1].float(), -1)
            token_logp = predicted.gather(-1, targets[:, None])[:, 0].cpu()
            results[i] = (token_logp, bool((predicted.argmax(-1) == targets).all()))
    return results


def continuation_logprobs(
    ctx: EvalContext, pairs: Sequence[tuple[str, str]], desc: str | None = None
) -> list[ContinuationScore]:
    """Score every (context, continuation) pair: summed log-probability, token and character counts, greedy hit.

    Batched with right padding, longest first (fewer pad tokens); results come back in input order."""
    encoded = [encode_pair(ctx.tokenizer, c, x, ctx.max_length) for c, x in pairs]
    scored = score_token_continuations(ctx.model, encoded, ctx.batch_size, ctx.bf16, desc, ctx.progress)
    results = []
    for (_, count), (token_logp, greedy), (_, continuation) in zip(encoded, scored, pairs, strict=True):
        results.append(
            ContinuationScore(
                logprob=float(token_logp.sum()), num_tokens=count, num_chars=len(continuation), greedy=greedy
            )
        )
    return results


@torch.no_grad()
def next_token_logprobs(ctx: EvalContext, prompts: Sequence[str], desc: str | None = None) -> torch.Tensor:
    """log p(next token | prompt) over the whole vocabulary, (len(prompts), vocab), fp32 on CPU."""
    device = model_device(ctx.model)
    out: list[torch.Tensor | None] = [None] * len(prompts)
    for index in _by_length(ctx, prompts).values():
        for start in tqdm(
            range(0, len(index), ctx.batch_size), desc=desc, leave=False, disable=not ctx.progress or desc is None
        ):
            rows = index[start : start + ctx.batch_size]
            ids = torch.tensor([_encode_prompt(ctx, prompts[i]) for i in rows], device=device)
            with autocast(device, ctx.bf16):
                logits = ctx.model(input_ids=ids, use_cache=False).logits[:, -1]
            for row, i in enumerate(rows):
                out[i] = F.log_softmax(logits[row].float(), -1).cpu()
    return torch.stack(out)  # type: ignore[arg-type]


@torch.no_grad()
def greedy_generate(
    ctx: EvalContext, prompts: Sequence[str], max_new_tokens: int, desc: str | None = None
) -> list[list[int]]:
    """Greedy continuation token ids of every prompt (no padding: prompts are batched by token length).

    Stops early only when every sequence of a batch has produced the end-of-sequence token."""
    device = model_device(ctx.model)
    eos = ctx.tokenizer.eos_token_id
    out: list[list[int] | None] = [None] * len(prompts)
    for index in _by_length(ctx, prompts).values():
        for start in tqdm(
            range(0, len(index), ctx.batch_size), desc=desc, leave=False, disable=not ctx.progress or desc is None
        ):
            rows = index[start : start + ctx.batch_size]
            ids = torch.tensor([_encode_prompt(ctx, prompts[i]) for i in rows], device=device)
            past = None
            step_input = ids
            generated = torch.empty((len(rows), 0), dtype=torch.long, device=device)
            done = torch.zeros(len(rows), dtype=torch.bool, device=device)
            for _ in range(max_new_tokens):
                with autocast(device, ctx.bf16):
                    output = ctx.model(input_ids=step_input, past_key_values=past, use_cache=True)
                past = output.past_key_values
                token = output.logits[:, -1].float().argmax(-1)
                generated = torch.cat([generated, token[:, None]], 1)
                if eos is not None:
                    done |= token == eos
                    if bool(done.all()):
                        break
                step_input = token[:, None]
            for row, i in enumerate(rows):
                tokens = generated[row].tolist()
                if eos is not None and eos in tokens:
                    tokens = tokens[: tokens.index(eos)]
                out[i] = tokens
    return out  # type: ignore[return-value]


def _encode_prompt(ctx: EvalContext, prompt: str) -> list[int]:
    ids = ctx.tokenizer(prompt, add_special_tokens=True)["input_ids"]
    if not ids:
        raise ValueError(f"prompt {prompt!r} has no tokens")
    return ids[-ctx.max_length :]


def _by_length(ctx: EvalContext, prompts: Sequence[str]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, prompt in enumerate(prompts):
        groups[len(_encode_prompt(ctx, prompt))].append(i)
    return dict(sorted(groups.items()))


def sample_items(items: Sequence[Any], ctx: EvalContext) -> list[Any]:
    """At most `ctx.max_items` items, a seeded sample in the original order (all items when max_items is None)."""
    if ctx.max_items is None or len(items) <= ctx.max_items:
        return list(items)
    generator = torch.Generator().manual_seed(ctx.seed)
    keep = sorted(torch.randperm(len(items), generator=generator)[: ctx.max_items].tolist())
    return [items[i] for i in keep]


def mean(values: Sequence[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan
