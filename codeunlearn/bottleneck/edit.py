"""`Edit`: which codes a topic removes, how, and why -- a small human-readable JSON that composes and undoes.

One format for every bottleneck kind; the interventions a kind honours are its config's `interventions`. A codebook (`kind="vq"`) edit removes codes (`substitute` / `exclude`); an
SAE (`kind="sae"`) edit acts on features when they fire (`zero`, `clamp` to `multiplier * scale`, or either only
where a calibrated local-window `guardrail` gate is on; see `codeunlearn.kinds.sae.interventions`). Fields an older file
lacks take their defaults, and a VQ edit writes exactly the keys it always did.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from codeunlearn.bottleneck.config import DEFAULT_KIND
from codeunlearn.bottleneck.registry import all_interventions, config_class_for, kind_names
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_write_text

# Firing features clamped to -10x their mean forget activation: zero-ablation leaves most of the topic's loss
# (Farrell et al. 2024, "Applying sparse autoencoders to unlearn knowledge"); sweep it with benchmarks/sae_curves.py.
DEFAULT_MULTIPLIER = -10.0
GUARDRAIL_ACTIONS = ("zero", "clamp")


def default_intervention() -> str:
    """The intervention of an edit that names none: that of the default kind (looked up when an edit is made, as
    the kinds register themselves above this module)."""
    return config_class_for(DEFAULT_KIND).default_intervention


def check_multiplier(multiplier: Any, what: str = "clamp") -> float:
    """A clamp multiplier must be a finite negative number (0 is zero-ablation: use `zero`)."""
    if isinstance(multiplier, bool) or not isinstance(multiplier, (int, float)) or not _finite(multiplier):
        raise CodeunlearnError(
            f"{what} needs a numeric multiplier, got {multiplier!r}", "pass a negative --multiplier such as -10"
        )
    if multiplier >= 0:
        raise CodeunlearnError(
            f"{what} multiplier must be negative, got {multiplier}",
            "pass a negative --multiplier such as -10 (for zero-ablation use --intervention zero)",
        )
    return float(multiplier)


def _finite(value: float) -> bool:
    """`math.isfinite` that says False for an integer past float range (a JSON file may hold one) instead of
    raising OverflowError."""
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _json_type_problem(data: dict[str, Any]) -> str | None:
    """What is ill-typed in an edit's JSON object, or None. The constructors convert leniently (`int("12")`,
    `list("12")`, `int(1.7)`), which suits code that builds edits from tensors but would turn a hand-damaged file
    into other codes without a word; a file must hold exactly the JSON types `Edit.to_dict` writes."""
    # unknown keys are named here, by repr: the constructors' TypeError would print a key holding a newline raw
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(Edit)})
    if unknown:
        return f"unknown keys {unknown}"
    for name in ("topic", "kind", "intervention", "bottleneck_fingerprint"):
        if name in data and not isinstance(data[name], str):
            return f"{name} must be a string, got {data[name]!r}"
    if "rule" in data and not isinstance(data["rule"], dict):
        return f"rule must be an object, got {data['rule']!r}"
    if data.get("multiplier") is not None and not _is_number(data["multiplier"]):
        return f"multiplier must be a number, got {data['multiplier']!r}"
    if not isinstance(data.get("layers"), dict):
        return f"layers must map layer indices to codes, got {data.get('layers')!r}"
    for layer, codes in data["layers"].items():
        if not _is_layer_key(layer):  # " 2" and "02" would both become layer 2 and one would replace the other
            return f'layer {layer!r} is not a layer index (a non-negative integer written plainly, e.g. "15")'
        if not isinstance(codes, dict):
            return f"layer {layer!r} must hold an object with codes, got {codes!r}"
        unknown = sorted(set(codes) - {f.name for f in dataclasses.fields(LayerCodes)})
        if unknown:
            return f"layer {layer!r} has unknown keys {unknown}"
        if not isinstance(codes.get("codes"), list) or not all(
            isinstance(c, int) and not isinstance(c, bool) for c in codes["codes"]
        ):
            return f"layer {layer!r}: codes must be a list of integers, got {codes.get('codes')!r}"
        for name in ("scores", "scales"):
            if name in codes and (not isinstance(codes[name], list) or not all(map(_is_number, codes[name]))):
                return f"layer {layer!r}: {name} must be a list of numbers, got {codes[name]!r}"
    guardrail = data.get("guardrail")
    if guardrail is None:
        return None
    if not isinstance(guardrail, dict):
        return f"guardrail must be an object, got {guardrail!r}"
    unknown = sorted(set(guardrail) - {f.name for f in dataclasses.fields(Guardrail)})
    if unknown:
        return f"guardrail has unknown keys {unknown}"
    thresholds = guardrail.get("thresholds")
    if not isinstance(thresholds, dict) or not all(map(_is_number, thresholds.values())):
        return f"guardrail thresholds must map layers to numbers, got {thresholds!r}"
    if not all(map(_is_layer_key, thresholds)):
        return f"guardrail thresholds must map layer indices to numbers, got {thresholds!r}"
    return None


def _is_layer_key(key: object) -> bool:
    """A layer index as `Edit.to_dict` writes it ("15"), or an int from Python."""
    if isinstance(key, str):
        return re.fullmatch(r"0|[1-9][0-9]*", key) is not None
    return isinstance(key, int) and not isinstance(key, bool) and key >= 0


@dataclass
class LayerCodes:
    """Selected code ids at one layer (VQ flat id = (stage * num_heads + head) * codebook_size + code; SAE: feature
    index), their selection scores and, for SAE clamping, each feature's activation scale."""

    codes: list[int]
    scores: list[float] = field(default_factory=list)
    scales: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.codes = [int(c) for c in self.codes]
        self.scores = [float(s) for s in self.scores]
        self.scales = [float(s) for s in self.scales]
        if self.scores and len(self.scores) != len(self.codes):
            raise CodeunlearnError("edit has a different number of scores and codes", "re-create the edit")
        if self.scales and len(self.scales) != len(self.codes):
            raise CodeunlearnError("edit has a different number of scales and features", "re-create the edit")
        if any(not math.isfinite(s) or s < 0 for s in self.scales):
            raise CodeunlearnError("edit has a negative or non-finite feature scale", "re-create the edit")

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"codes": self.codes, "scores": self.scores}
        if self.scales:
            data["scales"] = self.scales
        return data


@dataclass
class Guardrail:
    """A local-window gate: at each token, the mean number of the edit's features firing over the last `window`
    tokens is compared with the layer's threshold, calibrated on retain text to a target false-positive rate.

    Attributes:
        window: tokens in the causal window.
        thresholds: per layer; the gate is on where the window score is strictly above it.
        action: what the gate does to the firing features: `zero` or `clamp` (uses the edit's multiplier).
        target_fpr: false-positive rate the thresholds were calibrated to (fraction of retain windows gated).
        calibration: how it was calibrated (corpus, windows, measured rates), for the record.
    """

    window: int
    thresholds: dict[int, float]
    action: Literal["zero", "clamp"] = "clamp"
    target_fpr: float = 0.02
    calibration: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        fix = "calibrate it with `codeunlearn calibrate` (codeunlearn.unlearn.guardrail.calibrate_guardrail)"
        if isinstance(self.window, bool) or not isinstance(self.window, int) or self.window < 1:
            raise CodeunlearnError(f"guardrail window must be a positive integer, got {self.window!r}", fix)
        if self.action not in GUARDRAIL_ACTIONS:
            raise CodeunlearnError(f"unknown guardrail action {self.action!r}", f"use one of {GUARDRAIL_ACTIONS}")
        if not 0.0 < self.target_fpr < 1.0:
            raise CodeunlearnError(f"guardrail target_fpr={self.target_fpr}", "use a rate in (0, 1), e.g. 0.02")
        if not isinstance(self.thresholds, dict):
            raise CodeunlearnError("guardrail thresholds must map layers to numbers", fix)
        self.thresholds = {int(layer): float(value) for layer, value in self.thresholds.items()}

    def to_dict(self) -> dict[str, Any]:
        return {
            "window": self.window,
            "action": self.action,
            "target_fpr": self.target_fpr,
            "thresholds": {str(k): v for k, v in sorted(self.thresholds.items())},
            "calibration": self.calibration,
        }


@dataclass
class Edit:
    """A removal of codes (VQ) or an intervention on features (SAE) at one or more layers of one bottleneck.

    Attributes:
        multiplier: SAE `clamp` (and guardrail action `clamp`): firing features are set to multiplier * scale,
            scale being the feature's activation statistic in `LayerCodes.scales`; must be negative.
        guardrail: SAE `guardrail`: the calibrated gate (`Guardrail`).
    """

    topic: str
    layers: dict[int, LayerCodes]
    intervention: str | None = None  # None: the default kind's `default_intervention` (`default_intervention()`)
    rule: dict[str, Any] = field(default_factory=dict)
    bottleneck_fingerprint: str = ""
    kind: str = DEFAULT_KIND
    multiplier: float | None = None
    guardrail: Guardrail | None = None

    def __post_init__(self) -> None:
        if self.intervention is None:
            self.intervention = default_intervention()
        if self.intervention not in all_interventions():
            raise CodeunlearnError(f"unknown intervention {self.intervention!r}", f"use one of {all_interventions()}")
        self.layers = {
            int(layer): codes if isinstance(codes, LayerCodes) else LayerCodes(**codes)
            for layer, codes in self.layers.items()
        }
        if isinstance(self.guardrail, dict):
            self.guardrail = Guardrail(**self.guardrail)
        allowed = config_class_for(self.kind).interventions if self.kind in kind_names() else all_interventions()
        if self.intervention not in allowed:
            raise CodeunlearnError(
                f"intervention {self.intervention!r} is not for a {self.kind!r} bottleneck", f"use one of {allowed}"
            )
        if self.intervention == "guardrail" and self.guardrail is None:
            raise CodeunlearnError(
                "a guardrail edit has no calibrated gate", "make it with `codeunlearn calibrate` from a zero/clamp edit"
            )
        if self.uses_clamp:
            self.multiplier = check_multiplier(self.multiplier)
            missing = [layer for layer, codes in self.layers.items() if codes.codes and not codes.scales]
            if missing:
                raise CodeunlearnError(
                    f"clamp edit has no feature scales at layers {missing}", "select it from SAE statistics"
                )

    @property
    def uses_clamp(self) -> bool:
        """Whether firing features are clamped to multiplier * scale (directly or by the guardrail)."""
        return self.intervention == "clamp" or (
            self.intervention == "guardrail" and self.guardrail is not None and self.guardrail.action == "clamp"
        )

    @property
    def num_codes(self) -> int:
        return sum(len(codes.codes) for codes in self.layers.values())

    def with_intervention(self, intervention: str, **changes: Any) -> Edit:
        """The same codes, removed another way (to compare semantics); `changes` sets other fields, e.g.
        `multiplier` or `guardrail`."""
        if intervention != "guardrail":
            changes.setdefault("guardrail", None)
        return dataclasses.replace(self, intervention=intervention, **changes)

    def to_dict(self) -> dict[str, Any]:
        data = {
            "topic": self.topic,
            "kind": self.kind,
            "intervention": self.intervention,
            "bottleneck_fingerprint": self.bottleneck_fingerprint,
            "num_codes": self.num_codes,
            "rule": self.rule,
            "layers": {str(k): v.to_dict() for k, v in sorted(self.layers.items())},
        }
        if self.multiplier is not None:
            data["multiplier"] = self.multiplier
        if self.guardrail is not None:
            data["guardrail"] = self.guardrail.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Edit:
        if not isinstance(data, dict):
            raise CodeunlearnError(
                f"not an edit file (a JSON {type(data).__name__}, not an object)",
                "pass a JSON written by `codeunlearn forget`",
            )
        data = dict(data)
        data.pop("num_codes", None)
        problem = _json_type_problem(data)
        if problem is not None:
            raise CodeunlearnError(f"not an edit file ({problem})", "pass a JSON written by `codeunlearn forget`")
        try:
            return cls(**data)
        except (TypeError, ValueError, AttributeError, OverflowError) as err:
            reason = " ".join(str(err).split())  # one line, whatever the file's strings hold
            raise CodeunlearnError(
                f"not an edit file ({reason})", "pass a JSON written by `codeunlearn forget`"
            ) from None

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        path = Path(path)
        if not path.is_file():
            raise CodeunlearnError(f"edit file not found: {path}", "pass the JSON written by `codeunlearn forget`")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise CodeunlearnError(f"edit file {path} is not valid JSON ({err.msg})", "re-create the edit") from None
        except UnicodeDecodeError:
            raise CodeunlearnError(
                f"edit file {path} is not UTF-8 text (a damaged file?)", "re-create the edit"
            ) from None
        return cls.from_dict(data)
