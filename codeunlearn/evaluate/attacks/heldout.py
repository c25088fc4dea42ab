"""What the weight attacks (`bypass`, `quantization`) score: the held-out text `heldout_loss` scores, and optionally
held-out facts as `fact_cloze` scores them.

Each corpus is split by document with `codeunlearn.data.load_split` (the split of `codeunlearn stats`, `forget`,
`train` and `heldout_loss`), its held-out documents packed into `seq_len` chunks up to `max_tokens`, and a model's
loss on them is the mean next-token loss with the first `skip_positions` targets of every chunk left out. With the
same parameters, an attack's unattacked forget loss is the suite's `heldout_loss` row of the forget corpus.

A fact topic (`codeunlearn fact-topic`) is forgotten or not in its held-out facts rather than in a loss over short
sentences: with a facts file, `facts_top1` is `fact_cloze`'s top-1 accuracy of the model on them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor, nn

from codeunlearn.data import load_split
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import token_losses
from codeunlearn.evaluate.metrics.base import EvalContext
from codeunlearn.evaluate.metrics.cloze import fact_cloze

FORGET = "forget"


@dataclass
class HeldoutText:
    """Held-out chunks of the forget corpus and of each retain corpus, and how they are scored."""

    forget: Tensor
    retain: dict[str, Tensor]  # corpus -> chunks
    skip_positions: int

    @property
    def tokens(self) -> int:
        """Forget targets scored per measurement (as `heldout_loss` counts them)."""
        return int(self.forget.shape[0]) * (int(self.forget.shape[1]) - 1 - self.skip_positions)

    def losses(self, ctx: EvalContext, model: nn.Module) -> dict[str, float]:
        """Mean loss of `model` on each set: key `forget`, and each retain corpus by its path."""
        sets = {FORGET: self.forget, **self.retain}
        return {key: self.loss(ctx, model, chunks) for key, chunks in sets.items()}

    def loss(self, ctx: EvalContext, model: nn.Module, chunks: Tensor) -> float:
        return float(token_losses(model, chunks, ctx.batch_size, None, ctx.bf16)[:, self.skip_positions :].mean())

    def retain_mean(self, losses: dict[str, float]) -> float | None:
        """The retain loss in `losses` (as `losses` returns them): the mean over the retain corpora, each weighted
        alike (None without retain corpora)."""
        values = [losses[corpus] for corpus in self.retain]
        return sum(values) / len(values) if values else None


def load_heldout_text(
    ctx: EvalContext,
    forget_corpus: str,
    retain_corpora: Sequence[str],
    heldout_fraction: float,
    split_seed: int,
    seq_len: int,
    max_tokens: int | None,
    skip_positions: int,
    text_field: str,
    where: str,
) -> HeldoutText:
    """The held-out chunks of the forget corpus and the retain corpora, checked: one-line errors for a corpus with
    no held-out documents or `skip_positions` that leaves no target."""
    if not 0 <= skip_positions < seq_len - 1:
        raise CodeunlearnError(
            f"{where}: skip_positions={skip_positions} leaves no target in chunks of seq_len={seq_len}",
            "use 0 <= skip_positions < seq_len - 1",
        )
    if isinstance(retain_corpora, str):
        retain_corpora = [retain_corpora]

    def heldout(corpus: str) -> Tensor:
        _, chunks = load_split(corpus, ctx.tokenizer, seq_len, heldout_fraction, split_seed, text_field, max_tokens)
        if len(chunks) == 0:
            raise CodeunlearnError(
                f"{where}: corpus {corpus} has no held-out documents (heldout_fraction={heldout_fraction})",
                "use a corpus with at least two documents and heldout_fraction > 0",
            )
        return chunks

    return HeldoutText(heldout(forget_corpus), {c: heldout(c) for c in retain_corpora}, skip_positions)


def facts_top1(ctx: EvalContext, model: nn.Module, path: str, relations: Sequence[str] | None) -> float:
    """`fact_cloze` top-1 accuracy of `model` on the facts in `path` (filtered to `relations`; `ctx.max_items`
    caps them, a seeded sample: the same facts for every model of one run)."""
    quiet = dataclasses.replace(ctx, model=model, progress=False)
    return float(fact_cloze(quiet, path=path, relations=relations).scores["top1"])
