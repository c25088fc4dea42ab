"""`heldout_loss`: mean next-token loss of the model on the held-out documents of a corpus.

The corpus is split by document exactly as `codeunlearn stats`, `forget`, `train` and `eval` split it
(`codeunlearn.data.load_split` with the same `heldout_fraction` and `split_seed`), so the text scored here is never
text the statistics, the code selection or a baseline's training saw.
"""

from __future__ import annotations

import math

from codeunlearn.data import load_split
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import token_losses
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult


def heldout_loss(
    ctx: EvalContext,
    *,
    corpus: str,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    max_tokens: int | None = 8192,
    seq_len: int = 256,
    skip_positions: int = 1,
    text_field: str = "text",
    name: str = "heldout_loss",
    group: str = "general",
) -> MetricResult:
    """Mean next-token cross-entropy (nat/token) and perplexity on the held-out split of `corpus`.

    Args:
        ctx: the model under test (batch size, bf16 and progress bars are read from it).
        corpus: a `.txt`/`.json`/`.jsonl` file or dataset name, as every command reads corpora.
        heldout_fraction, split_seed: the document split; use the values of the run that computed statistics.
        max_tokens: cap on held-out tokens scored (packed in document order; None: all).
        seq_len: tokens per packed chunk (each chunk is one forward pass row).
        skip_positions: ignore the first targets of every chunk; packed chunks start mid-document, so their first
            tokens have almost no context and would add the same large constant to every model.
        text_field: the text column of a `.json(l)` corpus.
        name, group: the result's name and report section.

    Scores: `loss` and `ppl` = exp(loss); chance is the loss of the uniform distribution over the tokenizer's
    vocabulary (no chance perplexity: a vocabulary-sized bar would flatten every plot).
    Details: one record per chunk (its mean loss), so the spread across the held-out text can be inspected.
    """
    if not 0 <= skip_positions < seq_len - 1:
        raise CodeunlearnError(
            f"{name}: skip_positions={skip_positions} leaves no target in chunks of seq_len={seq_len}",
            "use 0 <= skip_positions < seq_len - 1",
        )
    _, heldout = load_split(corpus, ctx.tokenizer, seq_len, heldout_fraction, split_seed, text_field, max_tokens)
    if len(heldout) == 0:
        raise CodeunlearnError(
            f"{name}: corpus {corpus} has no held-out documents (heldout_fraction={heldout_fraction})",
            "use a corpus with at least two documents and heldout_fraction > 0",
        )
    desc = f"{name}: held-out loss" if ctx.progress else None
    losses = token_losses(ctx.model, heldout, ctx.batch_size, desc, ctx.bf16)[:, skip_positions:]
    loss = float(losses.mean())
    uniform = math.log(len(ctx.tokenizer))
    return MetricResult(
        name=name,
        scores={"loss": loss, "ppl": math.exp(loss)},
        chance={"loss": uniform},
        n=losses.numel(),
        details=[{"chunk": i, "loss": float(row.mean())} for i, row in enumerate(losses)],
        group=group,
    )
