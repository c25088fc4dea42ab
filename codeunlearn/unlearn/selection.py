"""Selection: score codes (or SAE features) by how much more the forget corpus uses them than the retain corpus,
pick the top ones, and build the random-codes control of the same size.

Two scores, as in the SAE-unlearning literature:
- `frequency_ratio` (the codebook's enrichment): log((f_forget + a) / (f_retain + a)), f = firing frequency,
  a = 1 / retain tokens (a pseudo-count);
- `mean_activation_difference` (Dynamic SAE Guardrails): mean activation on forget tokens minus mean activation
  on retain tokens, a feature counting 0 where it does not fire (SAE statistics only).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from codeunlearn.bottleneck.edit import DEFAULT_MULTIPLIER, Edit, LayerCodes
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.errors import CodeunlearnError
from codeunlearn.figures import LayerFiring
from codeunlearn.unlearn.statistics import CodeStatistics

SCORES = ("frequency_ratio", "mean_activation_difference")
SCALES = ("mean", "max")
# Summing the same activations in another order gives +-1e-9-relative "scores" on identical text: a score must clear
# the threshold by more than float noise, measured against the size of what is subtracted (an SAE's activations can
# be of any scale, so no absolute step would do).
RELATIVE_NOISE = 1e-6
NO_SIGNAL = (
    "no code fires more on the forget text than on the retain text (the statistics do not tell the topic apart)",
    "use the topic's own text for --forget_corpora/--forget_stats and general text for the retain side",
)


@dataclass
class SelectionRule:
    """Which codes/features a topic removes.

    Attributes:
        num_codes: codes (features) to remove at each layer (the top-scoring eligible ones).
        min_forget_count: a code must fire at least this often on the forget corpus (noise floor).
        max_retain_frequency: a code firing on more than this fraction of retain tokens is never removed (the
            retain-frequency cap).
        min_score: only codes scoring above this are eligible.
        score: `frequency_ratio` (log-enrichment of the firing frequency) or `mean_activation_difference`
            (SAE: mean activation on forget minus retain tokens).
    """

    num_codes: int = 2048
    min_forget_count: int = 5
    max_retain_frequency: float = 1.0
    min_score: float = 0.0
    score: Literal["frequency_ratio", "mean_activation_difference"] = "frequency_ratio"

    def __post_init__(self) -> None:
        if self.num_codes < 1:
            raise CodeunlearnError(f"num_codes={self.num_codes}", "remove at least one code")
        if self.score not in SCORES:
            raise CodeunlearnError(f"unknown selection score {self.score!r}", f"use one of {SCORES}")


def _check_layer(forget: CodeStatistics, retain: CodeStatistics, layer: int) -> None:
    for stats in (forget, retain):
        if layer not in stats.counts:
            raise CodeunlearnError(
                f"statistics of {stats.corpus!r} have no layer {layer}", "recompute them with this bottleneck"
            )


def enrichment_scores(forget: CodeStatistics, retain: CodeStatistics, layer: int, rule: SelectionRule) -> Tensor:
    """Frequency-ratio score of every code at `layer`; ineligible codes get -inf."""
    _check_layer(forget, retain, layer)
    pseudo = 1.0 / max(retain.tokens[layer], 1)
    f_forget, f_retain = forget.frequency(layer), retain.frequency(layer)
    scores = torch.log((f_forget + pseudo) / (f_retain + pseudo))
    return _eligible(scores, forget, retain, layer, rule, noise=torch.full_like(scores, RELATIVE_NOISE))


def mean_activation_difference_scores(
    forget: CodeStatistics, retain: CodeStatistics, layer: int, rule: SelectionRule
) -> Tensor:
    """Mean activation on forget tokens minus on retain tokens for every SAE feature; ineligible ones get -inf."""
    _check_layer(forget, retain, layer)
    forget_mean, retain_mean = forget.mean_activation(layer), retain.mean_activation(layer)
    scores = forget_mean - retain_mean
    # against the layer's largest mean activation: a feature that never fires has no scale of its own
    noise = RELATIVE_NOISE * torch.maximum(forget_mean.abs(), retain_mean.abs()).max()
    return _eligible(scores, forget, retain, layer, rule, noise=noise)


def feature_scores(forget: CodeStatistics, retain: CodeStatistics, layer: int, rule: SelectionRule) -> Tensor:
    """The score `rule.score` names, for every code/feature at `layer` (-inf where ineligible)."""
    if rule.score == "mean_activation_difference":
        return mean_activation_difference_scores(forget, retain, layer, rule)
    return enrichment_scores(forget, retain, layer, rule)


def _eligible(
    scores: Tensor, forget: CodeStatistics, retain: CodeStatistics, layer: int, rule: SelectionRule, noise: Tensor
) -> Tensor:
    """`scores` with -inf where the rule's noise floor, retain-frequency cap or minimum score excludes a code (a score
    must exceed the minimum by more than its float `noise`)."""
    f_retain = retain.frequency(layer)
    eligible = (
        (forget.counts[layer] >= rule.min_forget_count)
        & (f_retain <= rule.max_retain_frequency)
        & (scores > rule.min_score + noise)
    )
    return scores.masked_fill(~eligible, -math.inf)


def _check_same_bottleneck(forget: CodeStatistics, retain: CodeStatistics) -> None:
    if (forget.bottleneck_fingerprint, forget.kind) != (retain.bottleneck_fingerprint, retain.kind):
        raise CodeunlearnError(
            "forget and retain statistics come from different bottlenecks", "recompute both with the same bottleneck"
        )


def feature_scales(forget: CodeStatistics, retain: CodeStatistics, layer: int, codes: list[int], scale: str) -> list:
    """SAE clamp scales: each feature's mean activation where it fires (`mean`) or its largest (`max`) on the forget
    text, falling back to the retain text for a feature that never fires on forget text."""
    if scale not in SCALES:
        raise CodeunlearnError(f"unknown clamp scale {scale!r}", f"use one of {SCALES}")
    index = torch.tensor(codes, dtype=torch.long)

    def of(stats: CodeStatistics) -> Tensor:
        values = stats.mean_firing_activation(layer) if scale == "mean" else stats.activation_max[layer].double()
        return values[index]

    chosen = torch.where(forget.counts[layer][index] > 0, of(forget), of(retain))
    return [round(float(v), 6) for v in chosen]


def select_codes(
    forget: CodeStatistics,
    retain: CodeStatistics,
    rule: SelectionRule,
    topic: str,
    intervention: str | None = None,
    multiplier: float | None = None,
    scale: str = "mean",
) -> Edit:
    """Pick the top `rule.num_codes` eligible codes per layer (fewer if fewer are eligible).

    `intervention` defaults to the statistics' kind's (`substitute` for a codebook, `clamp` for an SAE). Edits of a
    kind whose units have activations (an SAE's) carry every feature's `scale` (see `feature_scales`); `clamp` sets
    a firing feature to `multiplier * scale` (default multiplier `DEFAULT_MULTIPLIER`).

    Statistics in which no code scores above 0 (forget and retain text the same, or the topic's text no more
    specific than the retain text) are refused (`NO_SIGNAL`) rather than turned into an edit of arbitrary codes
    scoring 0.00, whatever the rule's --min_score."""
    _check_same_bottleneck(forget, retain)
    kind = config_class_for(forget.kind)
    intervention = intervention or kind.default_intervention
    if intervention == "guardrail":
        raise CodeunlearnError(
            "a guardrail needs its threshold calibrated on retain text",
            "select with --intervention clamp (or zero), then run `codeunlearn calibrate` on the edit",
        )
    if kind.has_activations and intervention == "clamp" and multiplier is None:
        multiplier = DEFAULT_MULTIPLIER
    layers = {}
    signal = False  # does any code at any layer score above 0, rule aside?
    passed = False  # does a code the rule keeps score above 0?
    for layer in sorted(forget.counts):
        scores = feature_scores(forget, retain, layer, rule)
        raw = feature_scores(forget, retain, layer, SelectionRule(min_forget_count=0, score=rule.score))
        signal = signal or bool(torch.isfinite(raw).any())
        k = min(rule.num_codes, int(torch.isfinite(scores).sum()))
        # A stable sort, not topk: topk breaks ties differently for different k, so the top N codes were not the
        # first N of the top N + 1 (integer counts tie often); here equal scores keep the lower code id first.
        order = torch.sort(scores, descending=True, stable=True).indices[:k]
        values = scores[order]
        codes = order.tolist()
        passed = passed or bool((values > 0).any())
        scales = feature_scales(forget, retain, layer, codes, scale) if kind.has_activations else []
        # Six significant digits, not decimals: an SAE's activation-difference scores can all sit below 1e-4.
        layers[layer] = LayerCodes(codes=codes, scores=[float(f"{s:.6g}") for s in values.tolist()], scales=scales)
    if not signal:
        raise CodeunlearnError(*NO_SIGNAL)
    if not passed:  # the rule excludes every code that scores > 0
        raise CodeunlearnError(
            "no code passes the selection rule", "lower --min_forget_count / --min_score or use more forget text"
        )
    name = "enrichment" if rule.score == "frequency_ratio" else rule.score
    extra = {"scale": scale} if kind.has_activations else {}
    return Edit(
        topic=topic,
        layers=layers,
        intervention=intervention,
        rule={
            "name": name,
            **dataclasses.asdict(rule),
            **extra,
            "forget_corpus": forget.corpus,
            "retain_corpus": retain.corpus,
        },
        bottleneck_fingerprint=forget.bottleneck_fingerprint,
        kind=forget.kind,
        multiplier=multiplier if kind.has_activations else None,
    )


def random_control(edit: Edit, forget: CodeStatistics, retain: CodeStatistics, seed: int = 0) -> Edit:
    """Same number of codes per layer, drawn uniformly among codes that fire at all on forget or retain text (SAE:
    with the same intervention and multiplier, each feature scaled by its own statistics)."""
    if edit.intervention == "guardrail":
        raise CodeunlearnError(
            "a guardrail's control needs its own calibration",
            "make the control from the zero/clamp edit, then calibrate it like the topic edit",
        )
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for layer, chosen in edit.layers.items():
        live = torch.nonzero((forget.counts[layer] + retain.counts[layer]) > 0).flatten()
        pick = sorted(live[torch.randperm(len(live), generator=generator)[: len(chosen.codes)]].tolist())
        scale = edit.rule.get("scale", "mean")
        scaled = config_class_for(edit.kind).has_activations and pick
        scales = feature_scales(forget, retain, layer, pick, scale) if scaled else []
        layers[layer] = LayerCodes(codes=pick, scales=scales)
    return Edit(
        topic=f"{edit.topic}/random-control",
        layers=layers,
        intervention=edit.intervention,
        rule={"name": "random-control", "seed": seed, "matches": edit.topic},
        bottleneck_fingerprint=edit.bottleneck_fingerprint,
        kind=edit.kind,
        multiplier=edit.multiplier,
    )


def truncate(edit: Edit, num_codes: int) -> Edit:
    """The top `num_codes` codes per layer of a scored edit (for forget-vs-retain curves)."""
    if edit.intervention == "guardrail":
        raise CodeunlearnError(
            "a guardrail's thresholds were calibrated for its full feature set",
            "truncate the zero/clamp edit, then calibrate each truncated edit",
        )
    layers = {
        layer: LayerCodes(c.codes[:num_codes], c.scores[:num_codes], c.scales[:num_codes])
        for layer, c in edit.layers.items()
    }
    return dataclasses.replace(edit, layers=layers, rule={**edit.rule, "num_codes": num_codes})


def firing_frequencies(
    forget: CodeStatistics, retain: CodeStatistics, edit: Edit, control: Edit | None = None
) -> list[LayerFiring]:
    """Per layer of `edit`: every code's (feature's) firing frequency on the forget and the retain text, the edit's
    codes and the control's: what `codeunlearn.figures.firing_frequency` draws."""
    layers = []
    for layer, chosen in sorted(edit.layers.items()):
        _check_layer(forget, retain, layer)
        other = control.layers.get(layer) if control is not None else None
        layers.append(
            LayerFiring(
                layer=layer,
                forget=forget.frequency(layer).numpy(),
                retain=retain.frequency(layer).numpy(),
                forget_tokens=forget.tokens[layer],
                retain_tokens=retain.tokens[layer],
                selected=list(chosen.codes),
                control=list(other.codes) if other is not None else [],
            )
        )
    return layers
