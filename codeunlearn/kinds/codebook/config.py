"""`CodebookConfig`: the fields and the sayings of the codebook kind (`kind="vq"`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from codeunlearn.bottleneck.config import BottleneckConfig, CardText
from codeunlearn.errors import CodeunlearnError


@dataclass
class CodebookConfig(BottleneckConfig):
    """A multi-head residual vector quantizer at each layer (`kind="vq"`, `codeunlearn.kinds.codebook.bottleneck`).

    The defaults are the faithful codebook (`configs/faithful_smollm2.yaml`): 8 residual stages x 8 heads x 4,096
    codes, 768 bits per token, within 5% of SmolLM2-135M's held-out loss at layer 15 (benchmarks/RESULTS.md).

    Each token's state at a bottleneck is centred, rotated by a fixed random orthogonal matrix (so that every head
    sees a similar share of the variance instead of a few outlier dimensions), split into `num_heads` pieces and
    each piece snapped to one of `codebook_size` codes, `num_stages` times on the remaining residual. A token thus
    carries `num_stages * num_heads` codes, `num_stages * num_heads * log2(codebook_size)` bits.

    Attributes:
        num_heads: code pieces per stage; the hidden size must divide by it.
        codebook_size: codes per head and stage.
        num_stages: residual-quantization stages (1 = plain multi-head VQ).
        ema_decay: decay of the search keys in the EMA key steps after the k-means fit, if any
            (`vector_quantize_pytorch.VectorQuantize`).
        dead_code_threshold: EMA usage below which an EMA key step replaces a code by a batch sample. It is a
            code's usage *per batch*: with 2048-token batches and 4096 codes an average code scores 0.5, so the
            threshold must sit far below that or live codes get replaced.
        kmeans_iters: Lloyd iterations per stage of the k-means fit of the keys (`codeunlearn.kinds.codebook.kmeans`).

    `seed` seeds the rotation and the k-means initialisation.
    """

    kind: ClassVar[str] = "vq"
    unit_name: ClassVar[str] = "codes"
    interventions: ClassVar[tuple[str, ...]] = ("substitute", "exclude")
    default_intervention: ClassVar[str] = "substitute"  # measured stronger than `exclude` (benchmarks/RESULTS.md)

    num_heads: int = 8
    codebook_size: int = 4096
    num_stages: int = 8
    ema_decay: float = 0.99
    kmeans_iters: int = 2
    dead_code_threshold: float = 0.02

    def _check(self) -> None:
        for name in ("num_heads", "codebook_size", "num_stages"):
            if getattr(self, name) < 1:
                raise CodeunlearnError(f"{name} must be >= 1, got {getattr(self, name)}", f"set {name} to 1 or more")
        # Out of these ranges the EMA key steps diverge or never replace a dead code, with no error until much later.
        if not 0 <= self.ema_decay <= 1:
            raise CodeunlearnError(f"ema_decay must be in [0, 1], got {self.ema_decay}", "use e.g. 0.99 (the default)")
        if self.kmeans_iters < 0:
            raise CodeunlearnError(f"kmeans_iters must be >= 0, got {self.kmeans_iters}", "use e.g. 2 (the default)")
        if not (math.isfinite(self.dead_code_threshold) and self.dead_code_threshold >= 0):
            raise CodeunlearnError(
                f"dead_code_threshold must be a finite number >= 0, got {self.dead_code_threshold}",
                "use e.g. 0.02 (the default)",
            )
        if self.hidden_size and self.hidden_size % self.num_heads:
            raise CodeunlearnError(
                f"hidden size {self.hidden_size} is not divisible by num_heads={self.num_heads}",
                "choose num_heads that divides the hidden size",
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def codes_per_layer(self) -> int:
        return self.num_stages * self.num_heads * self.codebook_size

    @property
    def bits_per_token(self) -> float:
        return self.num_stages * self.num_heads * math.log2(self.codebook_size)

    def describe(self) -> str:
        return f"{self.codebook_size} codes x {self.num_heads} heads"

    def card_text(self) -> CardText:
        adapters = f"rank {self.adapter_rank}" if self.adapter_rank else "none"
        return CardText(
            kind="codebook (multi-head residual vector quantization)",
            shape_rows=[
                (
                    "heads x codes x stages",
                    f"{self.num_heads} x {self.codebook_size} x {self.num_stages} ({self.codes_per_layer:,} codes per "
                    "layer)",
                ),
                ("bits per token", f"{self.bits_per_token:g}"),
                ("downstream LoRA adapters", adapters),
            ],
            tags=["vector-quantization"],
            units="a small set of discrete codes",
        )

    def fingerprint_prefix(self) -> bytes:
        # the whole shape: the same keys mean other codes under another rotation, head split or stage count
        return self.to_json_string().encode()
