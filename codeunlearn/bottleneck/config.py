"""Bottleneck configs: the fields every kind shares (`BottleneckConfig`; each kind's subclass lives in its folder under
`codeunlearn.kinds`, e.g. `CodebookConfig`, `SAEConfig`), stored as JSON (`bottleneck_config.json`) beside the
bottleneck's weights.

The JSON layout is flat: the shared fields, `kind`, the codebook's fields and the SAE's `sae_*` fields, whichever
the kind (`FLAT_LAYOUT_KINDS`). A config keeps the fields of the other kinds as it read them (`inactive_fields`), so
it writes back exactly the file it read; that matters because a codebook's fingerprint hashes this text
(`BottleneckedModel.fingerprint`). `BottleneckConfig.from_dict` picks the class by `kind`
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


# Every bottleneck_config.json carries these kinds' fields, whatever its kind, in this order (module docstring). The
# list is part of the file format, not the list of registered kinds: a kind added later writes its own fields in its
# own files only, so that the files of these kinds (and a codebook's fingerprint, which hashes them) stay the same.
FLAT_LAYOUT_KINDS = ("vq", "sae")
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
        for f in dataclasses.fields(config_class_for(other)):
            if f.name not in mine:
                defaults[f.name] = f.default
    return defaults
