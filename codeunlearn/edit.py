"""`Edit`: which codes a topic removes, how, and why -- a small human-readable JSON that composes and undoes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_write_text

INTERVENTIONS = ("substitute", "exclude")
DEFAULT_INTERVENTION = "substitute"  # measured stronger than `exclude` (benchmarks/RESULTS.md)


@dataclass
class LayerCodes:
    """Selected code ids at one layer (flat id = (stage * num_heads + head) * codebook_size + code)."""

    codes: list[int]
    scores: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.codes = [int(c) for c in self.codes]
        self.scores = [float(s) for s in self.scores]
        if self.scores and len(self.scores) != len(self.codes):
            raise CodeunlearnError("edit has a different number of scores and codes", "re-create the edit")


@dataclass
class Edit:
    """A removal of codes at one or more layers of one bottleneck."""

    topic: str
    layers: dict[int, LayerCodes]
    intervention: Literal["substitute", "exclude"] = DEFAULT_INTERVENTION
    rule: dict[str, Any] = field(default_factory=dict)
    bottleneck_fingerprint: str = ""
    kind: str = "vq"

    def __post_init__(self) -> None:
        if self.intervention not in INTERVENTIONS:
            raise CodeunlearnError(f"unknown intervention {self.intervention!r}", f"use one of {INTERVENTIONS}")
        self.layers = {
            int(layer): codes if isinstance(codes, LayerCodes) else LayerCodes(**codes)
            for layer, codes in self.layers.items()
        }

    @property
    def num_codes(self) -> int:
        return sum(len(codes.codes) for codes in self.layers.values())

    def with_intervention(self, intervention: str) -> Edit:
        """The same codes, removed another way (to compare semantics)."""
        return Edit(self.topic, self.layers, intervention, self.rule, self.bottleneck_fingerprint, self.kind)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "kind": self.kind,
            "intervention": self.intervention,
            "bottleneck_fingerprint": self.bottleneck_fingerprint,
            "num_codes": self.num_codes,
            "rule": self.rule,
            "layers": {str(k): {"codes": v.codes, "scores": v.scores} for k, v in sorted(self.layers.items())},
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Edit:
        if not isinstance(data, dict):
            raise CodeunlearnError(
                f"not an edit file (a JSON {type(data).__name__}, not an object)",
                "pass a JSON written by `codeunlearn forget`",
            )
        data = dict(data)
        data.pop("num_codes", None)
        try:
            return cls(**data)
        except (TypeError, ValueError) as err:
            raise CodeunlearnError(f"not an edit file ({err})", "pass a JSON written by `codeunlearn forget`") from None

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Edit:
        path = Path(path)
        if not path.is_file():
            raise CodeunlearnError(f"edit file not found: {path}", "pass the JSON written by `codeunlearn forget`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise CodeunlearnError(f"edit file {path} is not valid JSON ({err.msg})", "re-create the edit") from None
        return cls.from_dict(data)
