"""`inspect_edit`: what each unit of an edit (and of its random-codes control) fires on, and what it writes.

For every selected unit: its firing frequency on the forget and the retain text (counted as `codeunlearn stats`
counts), its selection score, its strongest firings as token windows in each corpus, for units with activations
(SAE features) their activation histogram, and the tokens its output vector promotes and suppresses through the
final norm and LM head alone (`logit_lens`). The result is a plain dataclass (`InspectionReport`) that
`codeunlearn.inspection.page` renders and `to_dict` turns into JSON.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.inspection.collect import UnitObservations, observe_units
from codeunlearn.inspection.contexts import Context, context_window
from codeunlearn.inspection.histogram import Histogram
from codeunlearn.inspection.logit_lens import LABEL as LOGIT_LENS_LABEL
from codeunlearn.inspection.logit_lens import LogitEffects, check_logit_lens, logit_effects

GROUPS = ("edit", "control")


@dataclass
class InspectOptions:
    """How much `inspect_edit` keeps and how it runs.

    Attributes:
        contexts: top contexts kept per unit and corpus.
        left: tokens shown before a firing token.
        right: tokens shown after it.
        top_tokens: tokens listed on each side of a logit lens.
        batch_size: chunks per forward pass.
        bf16: bf16 autocast of the forward passes (bottleneck math stays fp32).
        progress: show progress bars.
    """

    contexts: int = 5
    left: int = 8
    right: int = 4
    top_tokens: int = 10
    batch_size: int = 8
    bf16: bool = False
    progress: bool = False


@dataclass
class CorpusFiring:
    """How one unit fires on one corpus: `count` of `tokens` counted tokens, its top contexts, its histogram."""

    corpus: str
    tokens: int
    count: int
    contexts: list[Context]
    histogram: Histogram | None = None

    @property
    def frequency(self) -> float:
        """Fraction of counted tokens it fires on (`CodeStatistics.frequency`)."""
        return self.count / max(self.tokens, 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "corpus": self.corpus,
            "tokens": self.tokens,
            "count": self.count,
            "frequency": self.frequency,
            "contexts": [c.to_dict() for c in self.contexts],
            "histogram": self.histogram.to_dict() if self.histogram else None,
        }


@dataclass
class UnitReport:
    """One unit of the edit or of the control at one layer."""

    group: str  # "edit" or "control"
    layer: int
    unit: int
    label: str  # the unit id as a reader knows it (`Bottleneck.unit_label`)
    score: float | None  # selection score from the edit; None for the control (drawn at random)
    forget: CorpusFiring
    retain: CorpusFiring
    logits: LogitEffects

    @property
    def ratio(self) -> float:
        """Forget frequency over retain frequency (inf where it fires on forget text only, nan where on neither)."""
        if self.retain.count == 0:
            return math.inf if self.forget.count else math.nan
        return self.forget.frequency / self.retain.frequency

    @property
    def anchor(self) -> str:
        """An HTML id for the unit's card."""
        return f"{self.group}-layer{self.layer}-unit{self.unit}"

    def to_dict(self) -> dict[str, Any]:
        ratio = self.ratio
        return {
            "group": self.group,
            "layer": self.layer,
            "unit": self.unit,
            "label": self.label,
            "score": self.score,
            "forget": self.forget.to_dict(),
            "retain": self.retain.to_dict(),
            "forget_retain_ratio": None if math.isnan(ratio) else ("inf" if math.isinf(ratio) else ratio),
            "logit_lens": self.logits.to_dict(),
        }


@dataclass
class EditInfo:
    """Which edit a group of units comes from."""

    topic: str
    intervention: str
    num_codes: int
    rule: dict[str, Any]
    path: str = ""

    @classmethod
    def of(cls, edit: Edit, path: str = "") -> EditInfo:
        return cls(edit.topic, edit.intervention, edit.num_codes, dict(edit.rule), path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "intervention": self.intervention,
            "num_codes": self.num_codes,
            "rule": self.rule,
            "path": self.path,
        }


@dataclass
class InspectionReport:
    """Everything the inspection pages show; the fields a caller knows better (where the bottleneck and the edit
    files are, which split was counted, why there is no control) default to empty and may be set afterwards."""

    kind: str
    unit_name: str  # "codes" or "features"
    fingerprint: str
    strength_meaning: str  # what the top contexts are ranked by
    forget_corpus: str
    retain_corpus: str
    edit: EditInfo
    control: EditInfo | None
    units: list[UnitReport]
    options: InspectOptions
    bottleneck: str = ""
    model: str = ""
    split: str = "train"
    control_note: str = ""
    logit_lens_label: str = LOGIT_LENS_LABEL

    def group(self, name: str) -> list[UnitReport]:
        """The units of the edit (`edit`) or of the control (`control`), in the order of the edit file."""
        return [u for u in self.units if u.group == name]

    def find(self, group: str, layer: int, unit: int) -> UnitReport:
        """One unit's report."""
        for report in self.units:
            if (report.group, report.layer, report.unit) == (group, layer, unit):
                return report
        raise KeyError((group, layer, unit))

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "unit_name": self.unit_name,
            "bottleneck": self.bottleneck,
            "model": self.model,
            "fingerprint": self.fingerprint,
            "split": self.split,
            "corpora": {"forget": self.forget_corpus, "retain": self.retain_corpus},
            "ranking": self.strength_meaning,
            "logit_lens": self.logit_lens_label,
            "options": {
                "contexts": self.options.contexts,
                "left": self.options.left,
                "right": self.options.right,
                "top_tokens": self.options.top_tokens,
            },
            "edit": self.edit.to_dict(),
            "control": self.control.to_dict() if self.control else None,
            "control_note": self.control_note,
            "units": [u.to_dict() for u in self.units],
        }


def _watched(edits: list[Edit]) -> dict[int, list[int]]:
    """Every layer's units named by any of the edits."""
    units: dict[int, set[int]] = {}
    for edit in edits:
        for layer, chosen in edit.layers.items():
            units.setdefault(layer, set()).update(chosen.codes)
    return {layer: sorted(ids) for layer, ids in sorted(units.items())}


def _firing(
    seen: UnitObservations, unit: int, corpus: str, chunks: Tensor, tokenizer: Any, options: InspectOptions
) -> CorpusFiring:
    row = seen.row(unit)
    contexts = [
        context_window(chunks, location, strength, tokenizer, options.left, options.right)
        for strength, location in seen.top.firings(row)
    ]
    histogram = seen.histograms.histogram(row) if seen.histograms is not None else None
    return CorpusFiring(corpus, seen.tokens, int(seen.counts[row]), contexts, histogram)


@torch.no_grad()
def inspect_edit(
    bmodel: BottleneckedModel,
    tokenizer: Any,
    edit: Edit,
    forget: tuple[str, Tensor],
    retain: tuple[str, Tensor],
    control: Edit | None = None,
    options: InspectOptions | None = None,
) -> InspectionReport:
    """Inspect the units of `edit` (and of `control`, its random-codes control) on the forget and the retain text,
    each given as (name, packed chunks (num_chunks, seq_len)).

    The units are watched on the unedited bottleneck, as the statistics that selected them were counted: active
    edits are set aside for the passes and restored after. Edits made for another bottleneck are refused with a
    one-line error (`BottleneckedModel.check_edit`), as is a model without a final norm or LM head."""
    options = options or InspectOptions()
    edits = [edit] + ([control] if control is not None else [])
    for each in edits:
        bmodel.check_edit(each)
    check_logit_lens(bmodel.model)
    units = _watched(edits)
    saved = list(bmodel.edits)
    bmodel.clear_edits()
    try:
        seen = {
            side: observe_units(
                bmodel, chunks, units, options.contexts, options.batch_size, options.bf16, options.progress, name
            )
            for side, (name, chunks) in (("forget", forget), ("retain", retain))
        }
    finally:
        for previous in saved:
            bmodel.apply_edit(previous)
    effects = {}
    for layer, ids in units.items():
        vectors = bmodel.bottleneck(layer).output_vectors(torch.tensor(ids, dtype=torch.long))
        effects[layer] = dict(
            zip(ids, logit_effects(bmodel.model, tokenizer, vectors, options.top_tokens), strict=True)
        )
    reports = []
    for group, source in zip(GROUPS, edits, strict=False):
        for layer, chosen in sorted(source.layers.items()):
            scores = dict(zip(chosen.codes, chosen.scores, strict=True)) if chosen.scores else {}
            for unit in chosen.codes:
                reports.append(
                    UnitReport(
                        group,
                        layer,
                        unit,
                        bmodel.bottleneck(layer).unit_label(unit),
                        scores.get(unit),
                        _firing(seen["forget"][layer], unit, forget[0], forget[1], tokenizer, options),
                        _firing(seen["retain"][layer], unit, retain[0], retain[1], tokenizer, options),
                        effects[layer][unit],
                    )
                )
    return InspectionReport(
        kind=bmodel.config.kind,
        unit_name=bmodel.config.unit_name,
        fingerprint=bmodel.fingerprint(),
        strength_meaning=bmodel.bottleneck(bmodel.layers[0]).strength_meaning,
        forget_corpus=forget[0],
        retain_corpus=retain[0],
        edit=EditInfo.of(edit),
        control=EditInfo.of(control) if control is not None else None,
        units=reports,
        options=options,
        model=str(getattr(bmodel.model.config, "_name_or_path", "")),
    )
