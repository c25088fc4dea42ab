"""`SAEConfig`: the fields and the sayings of the sparse-autoencoder kind (`kind="sae"`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

from codeunlearn.bottleneck.config import BottleneckConfig, CardText
from codeunlearn.errors import CodeunlearnError

# SAE architectures a config can name: `relu` (MSE + L1) and `topk` are trained here; `pretrained` marks SAEs
# attached from sae-lens directories, whose own cfg.json says what they are (jumprelu, gated, ...).
SAE_ARCHITECTURES = ("relu", "topk", "pretrained")
TRAINABLE_SAE_ARCHITECTURES = ("relu", "topk")


@dataclass
class SAEConfig(BottleneckConfig):
    """A sae-lens sparse autoencoder on the residual stream after each layer (`kind="sae"`,
    `codeunlearn.kinds.sae.bottleneck`).

    Attributes:
        sae_architecture: `relu` (ReLU encoder, MSE + L1 on decoder-norm-weighted activations) or `topk` (the k
            largest pre-activations, MSE + aux-k), both sae-lens's own training classes; `pretrained` for SAEs
            attached from sae-lens directories.
        sae_width: SAE features per layer (d_sae); 0 = `sae_expansion_factor` x hidden size.
        sae_expansion_factor: SAE width as a multiple of the hidden size (when `sae_width` is 0).
        sae_k: active features per token of a `topk` SAE.
        sae_l1_coefficient: weight of the L1 sparsity loss of a `relu` SAE (on inputs scaled to norm sqrt(d_in)).
        sae_error_term: keep the SAE's reconstruction error in the output (output = decode(edited features) +
            (h - decode(features))), so an unedited SAE changes nothing; False splices the bare reconstruction in.

    `seed` seeds the SAE weight initialisation; `site` must be `residual` and `adapter_rank` 0.
    """

    kind: ClassVar[str] = "sae"
    unit_name: ClassVar[str] = "features"
    interventions: ClassVar[tuple[str, ...]] = ("zero", "clamp", "guardrail")
    default_intervention: ClassVar[str] = "clamp"
    has_activations: ClassVar[bool] = True

    sae_architecture: Literal["relu", "topk", "pretrained"] = "topk"
    sae_width: int = 0
    sae_expansion_factor: int = 8
    sae_k: int = 32
    sae_l1_coefficient: float = 5.0
    sae_error_term: bool = True

    def _check(self) -> None:
        if self.sae_architecture not in SAE_ARCHITECTURES:
            raise CodeunlearnError(
                f"unknown SAE architecture {self.sae_architecture!r}", f"use one of {TRAINABLE_SAE_ARCHITECTURES}"
            )
        if self.site != "residual":
            raise CodeunlearnError(
                f"an SAE bottleneck reads the residual stream, not site={self.site!r}", "use site residual"
            )
        if self.adapter_rank:
            raise CodeunlearnError(
                "downstream adapters are for codebooks; an SAE keeps its error term instead", "set adapter_rank 0"
            )
        if self.sae_width < 0:  # 0 is allowed: sae_expansion_factor x the hidden size
            raise CodeunlearnError(
                f"sae_width must be >= 0, got {self.sae_width}", "use 0 (sae_expansion_factor x hidden size) or a width"
            )
        for name in ("sae_expansion_factor", "sae_k"):
            if getattr(self, name) < 1:
                raise CodeunlearnError(f"{name} must be >= 1, got {getattr(self, name)}", f"set {name} to 1 or more")
        if not (math.isfinite(self.sae_l1_coefficient) and self.sae_l1_coefficient >= 0):
            raise CodeunlearnError(
                f"sae_l1_coefficient must be a finite number >= 0, got {self.sae_l1_coefficient}", "use e.g. 5.0"
            )
        width = self.codes_per_layer
        if self.sae_architecture == "topk" and width and self.sae_k > width:
            raise CodeunlearnError(
                f"sae_k={self.sae_k} exceeds the SAE width {width}", "choose sae_k below the number of features"
            )

    @property
    def codes_per_layer(self) -> int:
        return self.sae_width or self.sae_expansion_factor * self.hidden_size

    def describe(self) -> str:
        return f"{self.sae_architecture} SAE, {self.sae_width} features"

    def card_text(self) -> CardText:
        top_k = f" (top-k, k = {self.sae_k})" if self.sae_architecture == "topk" else ""
        return CardText(
            kind=f"sparse autoencoder ({self.sae_architecture})",
            shape_rows=[
                ("features per layer", f"{self.codes_per_layer:,}{top_k}"),
                ("error term", "kept" if self.sae_error_term else "dropped"),
                ("bits per token", "- (continuous feature activations)"),
            ],
            tags=["sparse-autoencoder", "sae-lens"],
            units="sparse features",
        )

    def fill_model_facts(self) -> None:
        self.sae_width = self.codes_per_layer

    def fingerprint_prefix(self) -> bytes:
        # the layers only: the encoders identify the features, and a pretrained SAE's config says little
        return repr(list(self.layers)).encode()
