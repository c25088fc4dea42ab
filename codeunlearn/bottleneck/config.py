"""Bottleneck configs: the fields every kind shares (`BottleneckConfig`) and one subclass per kind (`CodebookConfig`,
`SAEConfig`), stored as JSON (`bottleneck_config.json`) beside the bottleneck's weights.

The JSON layout is flat and the same for every kind: the shared fields, `kind`, the codebook's fields and the SAE's
`sae_*` fields, whichever the kind. A config keeps the fields of the other kinds as it read them
(`inactive_fields`), so it writes back exactly the file it read; that matters because a codebook's fingerprint
hashes this text (`BottleneckedModel.fingerprint`). `BottleneckConfig.from_dict` picks the class by `kind`
(`codeunlearn.bottleneck.registry`).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

from codeunlearn.bottleneck.registry import config_class_for, kind_names
from codeunlearn.errors import CodeunlearnError

CONFIG_NAME = "bottleneck_config.json"
SITES = ("residual", "block_output")
# SAE architectures a config can name: `relu` (MSE + L1) and `topk` are trained here; `pretrained` marks SAEs
# attached from sae-lens directories, whose own cfg.json says what they are (jumprelu, gated, ...).
SAE_ARCHITECTURES = ("relu", "topk", "pretrained")
TRAINABLE_SAE_ARCHITECTURES = ("relu", "topk")
DEFAULT_KIND = "vq"  # what a file without a `kind` field holds
_TYPES = {"int": int, "float": (int, float), "str": str, "bool": bool}


@dataclass
class CardText:
    """A kind's lines on a bottleneck repository's card: its name, the rows of the shape table ((setting, value)
    pairs, laid out by the card), the Hub tags beyond codeunlearn's own, and what the residual stream passes through
    (`through {units}`)."""

    kind: str
    shape_rows: list[tuple[str, str]]
    tags: list[str]
    units: str


@dataclass
class BottleneckConfig:
    """The fields of a set of bottlenecks that every kind shares; a kind's subclass adds its own.

    Attributes:
        layers: decoder-layer indices; the bottleneck replaces the output of each of these layers.
        site: `residual` passes the whole residual stream after the layer through the bottleneck (a true
            bottleneck: later layers see only its output); `block_output` only what the layer writes into the stream
            (output - input).
        passthrough_first_position: leave position 0 untouched (attention sink: huge norm, no content).
        massive_norm_factor: tokens whose norm exceeds this multiple of the typical norm are left untouched
            ("massive activations", ~0.01% of tokens); 0 disables.
        adapter_rank: rank of LoRA adapters (peft) trained on the layers after the first bottleneck to read its
            output; 0 = none. Base weights are never changed.
        seed: seeds the bottleneck's random initialisation.
        hidden_size / num_hidden_layers / model_type / base_model: the model it was built for, checked on load.
        extra: free-form facts recorded with the bottleneck (e.g. the base model's revision).
        inactive_fields: the other kinds' fields of the flat JSON layout, as read (see the module docstring).

    Class attributes (what the rest of the package asks of a kind, rather than branching on its name):
        kind: the string recorded in the file and registered in `codeunlearn.bottleneck.registry`.
        unit_name: what an edit removes, in messages and cards (`codes`, `features`).
        interventions / default_intervention: the `Edit` interventions this kind honours.
        has_activations: its units carry activation values (statistics keep their sums and maxima; edits carry
            each unit's activation scale and may clamp to a multiple of it; quality is L0/FVU, not codes used).
    """

    kind: ClassVar[str]
    unit_name: ClassVar[str]
    interventions: ClassVar[tuple[str, ...]]
    default_intervention: ClassVar[str]
    has_activations: ClassVar[bool] = False

    layers: list[int]
    site: Literal["residual", "block_output"] = "residual"
    passthrough_first_position: bool = True
    massive_norm_factor: float = 20.0
    adapter_rank: int = 0
    seed: int = 0
    hidden_size: int = 0
    num_hidden_layers: int = 0
    model_type: str = ""
    base_model: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    inactive_fields: dict[str, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.layers, int) or not all(isinstance(layer, int) for layer in self.layers):
            raise CodeunlearnError(f"layers must be a list of integers, got {self.layers!r}", "pass e.g. layers=[15]")
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            expected = _TYPES.get(str(f.type))
            if expected is not None and (
                not isinstance(value, expected) or (expected is not bool and isinstance(value, bool))
            ):
                raise CodeunlearnError(
                    f"{f.name} must be {f.type}, got {value!r}", f"fix {f.name} in the bottleneck config"
                )
        self.layers = [int(layer) for layer in self.layers]
        if self.site not in SITES:
            raise CodeunlearnError(f"unknown bottleneck site {self.site!r}", f"use one of {SITES}")
        if self.adapter_rank < 0:
            raise CodeunlearnError(
                f"adapter_rank must be >= 0, got {self.adapter_rank}", "use 0 (no adapters) or a small rank such as 8"
            )
        # 0 is allowed: no token is passed through for its norm. nan passes a `< 0` test and inf would silently
        # mean 0, so both are refused (a config file can hold them: JSON NaN, YAML .inf).
        if not (math.isfinite(self.massive_norm_factor) and self.massive_norm_factor >= 0):
            raise CodeunlearnError(
                f"massive_norm_factor must be a finite number >= 0, got {self.massive_norm_factor}",
                "use e.g. 20 (the default), or 0 to pass no token through",
            )
        self._check()

    def _check(self) -> None:
        """The kind's own checks (called at the end of `__post_init__`)."""

    # ------------------------------------------------------------------------------------------ what a kind says
    @property
    def codes_per_layer(self) -> int:
        """Distinct unit ids at one layer (codebook: stage x head x code; SAE: features)."""
        raise NotImplementedError

    @property
    def bits_per_token(self) -> float | None:
        """Bits a token carries through the bottleneck; None where its units are continuous."""
        return None

    def describe(self) -> str:
        """The shape in a few words, for messages."""
        raise NotImplementedError

    def card_text(self) -> CardText:
        """How the Hub card of a bottleneck repository (`codeunlearn push --bottleneck_dir`) describes this kind."""
        raise NotImplementedError

    def fill_model_facts(self) -> None:
        """Set the fields that follow from the model facts (`hidden_size` ...), once `attach` has filled those in."""

    def fingerprint_prefix(self) -> bytes:
        """What the bottleneck's fingerprint hashes before each layer's `Bottleneck.fingerprint_bytes`."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        """The flat JSON layout (module docstring), its keys in the order files have always had."""
        own = dataclasses.asdict(self)
        del own["inactive_fields"]
        flat = {**_inactive_defaults(type(self)), **copy.deepcopy(self.inactive_fields), **own, "kind": self.kind}
        order = {name: index for index, name in enumerate(FLAT_LAYOUT)}
        return dict(sorted(flat.items(), key=lambda item: order.get(item[0], len(order))))

    def to_json_string(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> BottleneckConfig:
        """The config a flat dict describes, of the class its `kind` names (default `vq`)."""
        if not isinstance(data, dict):
            raise CodeunlearnError("bottleneck config is not a JSON object", "re-save the bottleneck")
        data = dict(data)
        kind = data.pop("kind", DEFAULT_KIND)
        if not isinstance(kind, str):  # the registry looks kinds up by hashing: a list would be a TypeError
            raise CodeunlearnError(f"bottleneck kind must be a string, got {kind!r}", f"use one of {kind_names()}")
        target = config_class_for(kind)
        if cls is not BottleneckConfig and not issubclass(target, cls):
            raise CodeunlearnError(f"bottleneck config is of kind {kind!r}, not {cls.kind!r}", f"load it as {kind}")
        own = {f.name for f in dataclasses.fields(target)} - {"inactive_fields"}
        inactive = set(_inactive_defaults(target))
        unknown = sorted(set(data) - own - inactive)
        if unknown:
            raise CodeunlearnError(
                f"bottleneck config has unknown keys {unknown}", "write it with this codeunlearn version"
            )
        layers = data.get("layers")
        # checked before construction: a missing or non-iterable `layers` fails inside the dataclass with a TypeError
        if not isinstance(layers, list) or not all(isinstance(x, int) and not isinstance(x, bool) for x in layers):
            raise CodeunlearnError(f"layers must be a list of integers, got {layers!r}", "pass e.g. layers=[15]")
        for key, value in data.items():
            # Python's json reads NaN and Infinity; NaN passes every `x < 0` range check, so it is refused here
            if isinstance(value, float) and not math.isfinite(value):
                raise CodeunlearnError(f"{key} must be a finite number, got {value!r}", f"fix {key} in the config")
        if not isinstance(data.get("extra", {}), dict):
            raise CodeunlearnError(f"extra must be an object, got {data['extra']!r}", "fix extra in the config")
        values = {k: v for k, v in data.items() if k in own}
        return target(**values, inactive_fields={k: v for k, v in data.items() if k in inactive})

    @classmethod
    def from_json_file(cls, path: str | Path) -> BottleneckConfig:
        path = Path(path)
        if not path.is_file():
            raise CodeunlearnError(f"no bottleneck config at {path}", f"point to a directory holding {CONFIG_NAME}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CodeunlearnError(f"{path} is not valid JSON ({err.msg})", "re-save the bottleneck") from None
        except UnicodeDecodeError:
            raise CodeunlearnError(f"{path} is not UTF-8 text (a damaged file?)", "re-save the bottleneck") from None
        return cls.from_dict(data)


@dataclass
class CodebookConfig(BottleneckConfig):
    """A multi-head residual vector quantizer at each layer (`kind="vq"`, `codeunlearn.bottleneck.codebook`).

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
        kmeans_iters: Lloyd iterations per stage of the k-means fit of the keys (`codeunlearn.bottleneck.kmeans`).

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


@dataclass
class SAEConfig(BottleneckConfig):
    """A sae-lens sparse autoencoder on the residual stream after each layer (`kind="sae"`,
    `codeunlearn.bottleneck.sae`).

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


# Every bottleneck_config.json carries these kinds' fields, whatever its kind, in this order (module docstring).
FLAT_LAYOUT_KINDS: tuple[type[BottleneckConfig], ...] = (CodebookConfig, SAEConfig)
FLAT_LAYOUT = (
    "layers", "kind", "site", "num_heads", "codebook_size", "num_stages", "passthrough_first_position",
    "massive_norm_factor", "ema_decay", "kmeans_iters", "dead_code_threshold", "adapter_rank", "seed",
    "sae_architecture", "sae_width", "sae_expansion_factor", "sae_k", "sae_l1_coefficient", "sae_error_term",
    "hidden_size", "num_hidden_layers", "model_type", "base_model", "extra",
)  # fmt: skip


def _inactive_defaults(cls: type[BottleneckConfig]) -> dict[str, Any]:
    """The defaults of the flat-layout fields that `cls` does not have (another kind's)."""
    mine = {f.name for f in dataclasses.fields(cls)}
    defaults = {}
    for other in FLAT_LAYOUT_KINDS:
        for f in dataclasses.fields(other):
            if f.name not in mine:
                defaults[f.name] = f.default
    return defaults
