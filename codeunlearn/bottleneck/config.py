"""`BottleneckConfig`: everything that defines a bottleneck's shape, stored as JSON beside its weights."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from codeunlearn.errors import CodeunlearnError

CONFIG_NAME = "bottleneck_config.json"
SITES = ("residual", "block_output")
KINDS = ("vq", "sae")
# SAE architectures a config can name: `relu` (MSE + L1) and `topk` are trained here; `pretrained` marks SAEs
# attached from sae-lens directories, whose own cfg.json says what they are (jumprelu, gated, ...).
SAE_ARCHITECTURES = ("relu", "topk", "pretrained")
TRAINABLE_SAE_ARCHITECTURES = ("relu", "topk")


@dataclass
class BottleneckConfig:
    """Shape of a set of bottlenecks attached at decoder layers: codebooks (`kind="vq"`) or SAEs (`kind="sae"`).

    The defaults are the faithful codebook (`configs/faithful_smollm2.yaml`): 8 residual stages x 8 heads x 4,096
    codes, 768 bits per token, within 5% of SmolLM2-135M's held-out loss at layer 15 (benchmarks/RESULTS.md).

    Each token's state at a bottleneck is centred, rotated by a fixed random orthogonal matrix (so that every head
    sees a similar share of the variance instead of a few outlier dimensions), split into `num_heads` pieces and
    each piece snapped to one of `codebook_size` codes, `num_stages` times on the remaining residual. A token thus
    carries `num_stages * num_heads` codes, `num_stages * num_heads * log2(codebook_size)` bits.

    Attributes:
        layers: decoder-layer indices; the bottleneck replaces the output of each of these layers.
        site: `residual` quantizes the whole residual stream after the layer (a true bottleneck: later layers see
            only codes); `block_output` quantizes only what the layer writes into the stream (output - input).
        num_heads: code pieces per stage; the hidden size must divide by it.
        codebook_size: codes per head and stage.
        num_stages: residual-quantization stages (1 = plain multi-head VQ).
        passthrough_first_position: leave position 0 unquantized (attention sink: huge norm, no content).
        massive_norm_factor: tokens whose norm exceeds this multiple of the typical norm are left unquantized
            ("massive activations", ~0.01% of tokens); 0 disables.
        kmeans_iters: Lloyd iterations per stage of the k-means fit of the keys (`codeunlearn.bottleneck.kmeans`).
        ema_decay / dead_code_threshold: EMA key steps after the k-means fit, if any
            (`vector_quantize_pytorch.VectorQuantize`). The threshold is on a code's EMA usage *per batch*: with
            2048-token batches and 4096 codes an average code scores 0.5, so the threshold must sit far below that
            or live codes get replaced by batch samples.
        adapter_rank: rank of LoRA adapters (peft) trained on the layers after the first bottleneck to read the
            quantized stream; 0 = none. Base weights are never changed.
        seed: seeds the rotation and the k-means initialisation (VQ) or the SAE weight initialisation.
        sae_architecture: `relu` (ReLU encoder, MSE + L1 on decoder-norm-weighted activations) or `topk` (the k
            largest pre-activations, MSE + aux-k), both sae-lens's own training classes; `pretrained` for SAEs
            attached from sae-lens directories.
        sae_width: SAE features per layer (d_sae); 0 = `sae_expansion_factor` x hidden size.
        sae_k: active features per token of a `topk` SAE.
        sae_l1_coefficient: weight of the L1 sparsity loss of a `relu` SAE (on inputs scaled to norm sqrt(d_in)).
        sae_error_term: keep the SAE's reconstruction error in the output (output = decode(edited features) +
            (h - decode(features))), so an unedited SAE changes nothing; False splices the bare reconstruction in.
        hidden_size / num_hidden_layers / model_type / base_model: the model it was built for, checked on load.
    """

    layers: list[int]
    kind: Literal["vq"] = "vq"
    site: Literal["residual", "block_output"] = "residual"
    num_heads: int = 8
    codebook_size: int = 4096
    num_stages: int = 8
    passthrough_first_position: bool = True
    massive_norm_factor: float = 20.0
    ema_decay: float = 0.99
    kmeans_iters: int = 2
    dead_code_threshold: float = 0.02
    adapter_rank: int = 0
    seed: int = 0
    sae_architecture: Literal["relu", "topk", "pretrained"] = "topk"
    sae_width: int = 0
    sae_expansion_factor: int = 8
    sae_k: int = 32
    sae_l1_coefficient: float = 5.0
    sae_error_term: bool = True
    hidden_size: int = 0
    num_hidden_layers: int = 0
    model_type: str = ""
    base_model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.layers, int) or not all(isinstance(layer, int) for layer in self.layers):
            raise CodeunlearnError(f"layers must be a list of integers, got {self.layers!r}", "pass e.g. layers=[15]")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = {"int": int, "float": (int, float), "str": str, "bool": bool}.get(str(f.type))
            if expected is not None and (
                not isinstance(value, expected) or (expected is int and isinstance(value, bool))
            ):
                raise CodeunlearnError(
                    f"{f.name} must be {f.type}, got {value!r}", f"fix {f.name} in the bottleneck config"
                )
        self.layers = [int(layer) for layer in self.layers]
        if self.kind not in KINDS:
            raise CodeunlearnError(f"unknown bottleneck kind {self.kind!r}", f"use one of {KINDS}")
        if self.site not in SITES:
            raise CodeunlearnError(f"unknown bottleneck site {self.site!r}", f"use one of {SITES}")
        if self.adapter_rank < 0:
            raise CodeunlearnError(
                f"adapter_rank must be >= 0, got {self.adapter_rank}", "use 0 (no adapters) or a small rank such as 8"
            )
        for name in ("num_heads", "codebook_size", "num_stages"):
            if getattr(self, name) < 1:
                raise CodeunlearnError(f"{name} must be >= 1, got {getattr(self, name)}", f"set {name} to 1 or more")
        if self.kind == "sae":
            self._check_sae()
        elif self.hidden_size and self.hidden_size % self.num_heads:
            raise CodeunlearnError(
                f"hidden size {self.hidden_size} is not divisible by num_heads={self.num_heads}",
                "choose num_heads that divides the hidden size",
            )

    def _check_sae(self) -> None:
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
        for name in ("sae_width", "sae_expansion_factor", "sae_k"):
            if getattr(self, name) < (0 if name == "sae_width" else 1):
                raise CodeunlearnError(f"{name} must be positive, got {getattr(self, name)}", f"fix {name}")
        if self.sae_l1_coefficient < 0:
            raise CodeunlearnError(f"sae_l1_coefficient must be >= 0, got {self.sae_l1_coefficient}", "use e.g. 5.0")
        width = self.sae_width or self.sae_expansion_factor * self.hidden_size
        if self.sae_architecture == "topk" and width and self.sae_k > width:
            raise CodeunlearnError(
                f"sae_k={self.sae_k} exceeds the SAE width {width}", "choose sae_k below the number of features"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def codes_per_layer(self) -> int:
        """Number of distinct code ids at one layer (stage x head x code; SAE: features)."""
        if self.kind == "sae":
            return self.sae_width or self.sae_expansion_factor * self.hidden_size
        return self.num_stages * self.num_heads * self.codebook_size

    @property
    def bits_per_token(self) -> float:
        import math

        return self.num_stages * self.num_heads * math.log2(self.codebook_size)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BottleneckConfig:
        if not isinstance(data, dict):
            raise CodeunlearnError("bottleneck config is not a JSON object", "re-save the bottleneck")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise CodeunlearnError(
                f"bottleneck config has unknown keys {unknown}", "write it with this codeunlearn version"
            )
        return cls(**data)

    @classmethod
    def from_json_file(cls, path: str | Path) -> BottleneckConfig:
        path = Path(path)
        if not path.is_file():
            raise CodeunlearnError(f"no bottleneck config at {path}", f"point to a directory holding {CONFIG_NAME}")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CodeunlearnError(f"{path} is not valid JSON ({err.msg})", "re-save the bottleneck") from None
        return cls.from_dict(data)
