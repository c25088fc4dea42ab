"""The padding attack: does unrelated text in front of a forget passage bring the forgotten knowledge back?

A guardrail that gates on how much of the *prompt* looks like the topic is diluted by padding the prompt with
unrelated text; an edit that removes the topic everywhere is not. Each of `num_passages` held-out forget passages
(`passage_tokens` tokens, packed from held-out documents) is scored behind 0, 1k, 2k, 4k ... tokens of held-out text of
an unrelated (retain) corpus, and the row `loss_pad_{n}` is the mean next-token loss on the passage tokens only. An
edited model should keep its raised loss in every row; a row that falls back to the base model's loss is a bypass.

Only the passage's own next-token targets are scored (`passage_tokens - 1` per passage, the first token excluded in
every row, since without padding it has no context), so the rows differ only in what precedes the passage. A
passage's padding is the same text in every row, cut shorter: the 1k padding is the last 1k tokens of the 2k
padding, so the text right before the passage never changes. Padding lengths are checked against the model's
`max_position_embeddings`, not `ctx.max_length` (a long prefix is the point of the attack).
"""

from __future__ import annotations

import inspect
import random
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import DocumentSplit, load_documents, pack_documents, split_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult, mean
from codeunlearn.runtime import autocast, model_device


def _hf_model(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, BottleneckedModel) else model


def max_positions(model: nn.Module) -> int | None:
    """The longest input the model's position embeddings allow (None when its config does not say)."""
    config = getattr(_hf_model(model), "config", None)
    if config is not None and hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for key in ("max_position_embeddings", "n_positions"):
        value = getattr(config, key, None)
        if isinstance(value, int):
            return value
    return None


def _accepts_logits_to_keep(model: nn.Module) -> bool:
    try:
        return "logits_to_keep" in inspect.signature(_hf_model(model).forward).parameters
    except (TypeError, ValueError):
        return False


def _heldout(corpus: str, heldout_fraction: float, split_seed: int, text_field: str) -> DocumentSplit:
    split = split_documents(
        Path(corpus).stem, load_documents(corpus, text_field=text_field), heldout_fraction, split_seed
    )
    if not split.heldout:
        raise CodeunlearnError(f"corpus {corpus} has no held-out documents", "use a heldout_fraction above 0")
    return split


def _token_stream(docs: list[str], tokenizer) -> Tensor:
    """All documents' token ids joined with EOS, as one stream."""
    ids: list[int] = []
    for row in tokenizer(docs, add_special_tokens=False)["input_ids"]:
        ids.extend(row)
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    return torch.tensor(ids, dtype=torch.long)


@torch.no_grad()
def passage_losses(ctx: EvalContext, inputs: Tensor, passage_tokens: int) -> Tensor:
    """Mean next-token loss over the last `passage_tokens - 1` targets of each row of `inputs` (rows of one length).

    Batches hold at most `ctx.batch_size` rows and about `ctx.batch_size * ctx.max_length` tokens, and only the
    passage's logits are computed when the model supports `logits_to_keep` (a 4k-token prefix would otherwise cost a
    (4k, vocab) logits tensor per row)."""
    device = model_device(ctx.model)
    rows_per_batch = max(1, min(ctx.batch_size, ctx.batch_size * ctx.max_length // inputs.shape[1]))
    keep = {"logits_to_keep": passage_tokens} if _accepts_logits_to_keep(ctx.model) else {}
    out = []
    for start in range(0, len(inputs), rows_per_batch):
        batch = inputs[start : start + rows_per_batch].to(device)
        with autocast(device, ctx.bf16):
            logits = ctx.model(input_ids=batch, use_cache=False, **keep).logits
        # Position t predicts token t + 1: the passage's targets 1 .. P-1 come from its positions 0 .. P-2.
        predicted = logits[:, -passage_tokens:-1].float()
        targets = batch[:, -passage_tokens + 1 :]
        out.append(F.cross_entropy(predicted.transpose(1, 2), targets, reduction="none").mean(-1).cpu())
    return torch.cat(out)


def padding_attack(
    ctx: EvalContext,
    *,
    forget_corpus: str,
    padding_corpus: str,
    pad_tokens: Sequence[int] = (0, 1024, 2048, 4096),
    num_passages: int = 16,
    passage_tokens: int = 128,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    text_field: str = "text",
    name: str = "padding_attack",
    group: str = "attack",
) -> MetricResult:
    """Mean loss on held-out forget passages behind each padding length of held-out `padding_corpus` text: scores
    `loss_pad_{n}` for every n in `pad_tokens`. At most `ctx.max_items` passages when that is smaller."""
    pads = sorted(set(pad_tokens))
    if not pads or pads[0] < 0 or passage_tokens < 2 or num_passages < 1:
        raise CodeunlearnError(
            f"{name}: pad_tokens={list(pad_tokens)}, passage_tokens={passage_tokens}, num_passages={num_passages}",
            "use non-negative pad_tokens, passage_tokens >= 2 and num_passages >= 1",
        )
    limit = max_positions(ctx.model)
    if limit is not None and pads[-1] + passage_tokens > limit:
        raise CodeunlearnError(
            f"{name}: {pads[-1]} padding + {passage_tokens} passage tokens exceed the model's {limit} positions",
            f"use pad_tokens up to {limit - passage_tokens}",
        )
    forget = _heldout(forget_corpus, heldout_fraction, split_seed, text_field)
    chunks = pack_documents(forget.heldout, ctx.tokenizer, passage_tokens)
    count = min(num_passages, len(chunks), ctx.max_items or num_passages)
    generator = torch.Generator().manual_seed(ctx.seed)
    chosen = sorted(torch.randperm(len(chunks), generator=generator)[:count].tolist())
    passages = chunks[chosen]
    stream = _token_stream(_heldout(padding_corpus, heldout_fraction, split_seed, text_field).heldout, ctx.tokenizer)
    if len(stream) < pads[-1]:
        raise CodeunlearnError(
            f"{name}: the held-out part of {padding_corpus} has {len(stream)} tokens, fewer than {pads[-1]} of padding",
            "use a longer padding corpus or smaller pad_tokens",
        )
    # One seeded window of the longest padding per passage; shorter paddings are its last tokens.
    rng = random.Random(ctx.seed)
    windows = [
        stream[start : start + pads[-1]] for start in (rng.randrange(len(stream) - pads[-1] + 1) for _ in chosen)
    ]
    losses = {}
    for pad in pads:
        prefix = torch.stack([w[len(w) - pad :] for w in windows])
        losses[pad] = passage_losses(ctx, torch.cat([prefix, passages], 1), passage_tokens)
    details = [
        {"passage": i, "chunk": chunk, **{f"loss_pad_{pad}": float(losses[pad][i]) for pad in pads}}
        for i, chunk in enumerate(chosen)
    ]
    scores = {f"loss_pad_{pad}": mean(losses[pad].tolist()) for pad in pads}
    return MetricResult(name=name, scores=scores, n=count, details=details, group=group)
