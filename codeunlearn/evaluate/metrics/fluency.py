"""Fluency of free generation: does the model still write text, or does it loop or emit gibberish?

    fluency(ctx, corpus="retain/wikitext2_raw_test.txt")       # prompts cut from held-out documents
    fluency(ctx, prompts=["The history of the city", ...])

Each prompt is continued greedily for `max_new_tokens` tokens (`greedy_generate`: no left padding, stops at EOS), and
the generations are scored on four numbers:

- `repetition`: 1 - distinct-3 of each generation (the share of its 3-grams that repeat an earlier 3-gram of the
  same generation), averaged over generations of at least 3 tokens. 0 for text that never repeats itself; a
  generation that loops with period p over n tokens scores 1 - p / (n - 2), which tends to 1.
- `distinct_1`: distinct tokens / tokens of each generation, averaged (low for loops).
- `ppl_under_base`: perplexity of the generated tokens given the prompt under `ctx.reference_model` (the base model),
  or under the model itself when there is none (`details[i]["scored_under"]` says which), pooled over all generated
  tokens. Gibberish is improbable under the base model, so an edit that breaks the model shows up here even when the
  broken model is confident in its own output.
- `mean_length`: generated tokens before EOS, averaged (a model that stops at once writes nothing to judge).

The generated token ids are scored exactly as generated (never decoded and re-tokenized), with the prompt's ids as
`greedy_generate` encoded them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from codeunlearn.data import load_documents, split_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import (
    EvalContext,
    MetricResult,
    _encode_prompt,
    greedy_generate,
    mean,
    sample_items,
    score_token_continuations,
)


def ngrams(tokens: Sequence[int], n: int) -> list[tuple[int, ...]]:
    """All n-grams of `tokens`, in order (with repeats)."""
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]


def repetition_rate(tokens: Sequence[int], n: int = 3) -> float | None:
    """1 - distinct-n: the share of the n-grams of `tokens` that repeat an earlier one; None under n tokens."""
    grams = ngrams(tokens, n)
    return 1.0 - len(set(grams)) / len(grams) if grams else None


def distinct_fraction(tokens: Sequence[int]) -> float | None:
    """distinct-1: distinct tokens / tokens; None for an empty generation."""
    return len(set(tokens)) / len(tokens) if tokens else None


def heldout_prompts(
    ctx: EvalContext,
    corpus: str,
    num_prompts: int,
    prompt_tokens: int,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    text_field: str = "text",
) -> list[str]:
    """The first `prompt_tokens` tokens (decoded) of `num_prompts` held-out documents of `corpus`, drawn with
    `ctx.seed`; documents shorter than `prompt_tokens` are skipped (a whole document is no prompt to continue)."""
    split = split_documents(
        Path(corpus).stem, load_documents(corpus, text_field=text_field), heldout_fraction, split_seed
    )
    if not split.heldout:
        raise CodeunlearnError(f"corpus {corpus} has no held-out documents", "use a heldout_fraction above 0")
    order = list(range(len(split.heldout)))
    random.Random(ctx.seed).shuffle(order)
    prompts: list[str] = []
    for index in order:  # tokenize only as many documents as needed
        ids = ctx.tokenizer(split.heldout[index], add_special_tokens=False)["input_ids"]
        if len(ids) >= prompt_tokens:
            prompts.append(ctx.tokenizer.decode(ids[:prompt_tokens]))
            if len(prompts) == num_prompts:
                break
    if not prompts:
        raise CodeunlearnError(
            f"no held-out document of {corpus} has {prompt_tokens} tokens", "use a smaller prompt_tokens or more text"
        )
    return prompts


@torch.no_grad()
def continuation_nll(
    model: nn.Module, sequences: Sequence[tuple[list[int], list[int]]], batch_size: int, bf16: bool, max_length: int
) -> list[float]:
    """Summed negative log-likelihood of each continuation's token ids given its prompt's ids under `model`.

    Right padding (later pads cannot change earlier logits in a causal LM), longest first; an empty continuation
    scores 0. Sequences longer than `max_length` are cut from the left (the continuation is kept whole when it fits)."""
    encoded = []
    for prompt_ids, continuation in sequences:
        ids = (prompt_ids + continuation)[-max_length:]
        encoded.append((ids, min(len(continuation), len(ids) - 1)))
    scored = score_token_continuations(model, encoded, batch_size, bf16)
    return [0.0 if score is None else -float(score[0].sum()) for score in scored]


def fluency(
    ctx: EvalContext,
    *,
    prompts: list[str] | None = None,
    corpus: str | None = None,
    num_prompts: int = 32,
    prompt_tokens: int = 32,
    max_new_tokens: int = 48,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    text_field: str = "text",
    name: str = "fluency",
    group: str = "fluency",
) -> MetricResult:
    """Greedy generations from `prompts` (or from the first `prompt_tokens` tokens of held-out documents of `corpus`,
    split as `codeunlearn.data` splits it) scored for repetition, distinct-1, perplexity under the base model and
    length. At most `ctx.max_items` prompts (a seeded sample)."""
    if (prompts is None) == (corpus is None):
        raise CodeunlearnError(f"{name}: give either prompts or a corpus", "pass exactly one of prompts / corpus")
    if max_new_tokens < 3 or prompt_tokens < 1 or num_prompts < 1:
        raise CodeunlearnError(
            f"{name}: max_new_tokens={max_new_tokens}, prompt_tokens={prompt_tokens}, num_prompts={num_prompts}",
            "use max_new_tokens >= 3 (repetition counts 3-grams) and at least one prompt token and prompt",
        )
    if prompts is not None:
        prompts = [p for p in prompts if p.strip()]
        if not prompts:
            raise CodeunlearnError(f"{name}: the prompt list is empty", "pass at least one non-empty prompt")
    else:
        prompts = heldout_prompts(ctx, corpus, num_prompts, prompt_tokens, heldout_fraction, split_seed, text_field)
    prompts = sample_items(prompts, ctx)
    generations = greedy_generate(ctx, prompts, max_new_tokens, desc=f"{name}: generate")
    scorer, scored_under = (
        (ctx.reference_model, "reference_model") if ctx.reference_model is not None else (ctx.model, "model")
    )
    prompt_ids = [_encode_prompt(ctx, prompt) for prompt in prompts]
    nll = continuation_nll(
        scorer, list(zip(prompt_ids, generations, strict=True)), ctx.batch_size, ctx.bf16, ctx.max_length
    )
    details = []
    for prompt, tokens, item_nll in zip(prompts, generations, nll, strict=True):
        details.append(
            {
                "prompt": prompt,
                "generation": ctx.tokenizer.decode(tokens, skip_special_tokens=True),
                "num_tokens": len(tokens),
                "repetition": repetition_rate(tokens),
                "distinct_1": distinct_fraction(tokens),
                "nll": item_nll,
                "scored_under": scored_under,
            }
        )
    total_tokens = sum(len(tokens) for tokens in generations)
    scores = {
        "repetition": mean([d["repetition"] for d in details if d["repetition"] is not None]),
        "distinct_1": mean([d["distinct_1"] for d in details if d["distinct_1"] is not None]),
        # Pooled over tokens: one long fluent generation and one short broken one weigh by what they wrote.
        "ppl_under_base": math.exp(sum(nll) / total_tokens) if total_tokens else math.nan,
        "mean_length": mean([len(tokens) for tokens in generations]),
    }
    return MetricResult(name=name, scores=scores, n=len(prompts), details=details, group=group)
