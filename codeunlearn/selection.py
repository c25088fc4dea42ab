"""Selection: score codes by how much more the forget corpus uses them than the retain corpus, pick the top ones,
and build the random-codes control of the same size."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from codeunlearn.edit import DEFAULT_INTERVENTION, Edit, LayerCodes
from codeunlearn.errors import CodeunlearnError
from codeunlearn.statistics import CodeStatistics


@dataclass
class SelectionRule:
    """Enrichment rule: score = log((f_forget + a) / (f_retain + a)), a = 1 / retain tokens (a pseudo-count).

    Attributes:
        num_codes: codes to remove at each layer (the top-scoring eligible ones).
        min_forget_count: a code must fire at least this often on the forget corpus (noise floor).
        max_retain_frequency: a code firing on more than this fraction of retain tokens is never removed.
        min_score: only codes scoring above this (log-ratio) are eligible.
    """

    num_codes: int = 2048
    min_forget_count: int = 5
    max_retain_frequency: float = 1.0
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if self.num_codes < 1:
            raise CodeunlearnError(f"num_codes={self.num_codes}", "remove at least one code")


def enrichment_scores(forget: CodeStatistics, retain: CodeStatistics, layer: int, rule: SelectionRule) -> Tensor:
    """Score of every code at `layer`; ineligible codes get -inf."""
    for stats in (forget, retain):
        if layer not in stats.counts:
            raise CodeunlearnError(
                f"statistics of {stats.corpus!r} have no layer {layer}", "recompute them with this bottleneck"
            )
    pseudo = 1.0 / max(retain.tokens[layer], 1)
    f_forget, f_retain = forget.frequency(layer), retain.frequency(layer)
    scores = torch.log((f_forget + pseudo) / (f_retain + pseudo))
    eligible = (
        (forget.counts[layer] >= rule.min_forget_count)
        & (f_retain <= rule.max_retain_frequency)
        & (scores > rule.min_score)
    )
    return scores.masked_fill(~eligible, -math.inf)


def _check_same_bottleneck(forget: CodeStatistics, retain: CodeStatistics) -> None:
    if forget.bottleneck_fingerprint != retain.bottleneck_fingerprint:
        raise CodeunlearnError(
            "forget and retain statistics come from different bottlenecks", "recompute both with the same bottleneck"
        )


def select_codes(
    forget: CodeStatistics,
    retain: CodeStatistics,
    rule: SelectionRule,
    topic: str,
    intervention: str = DEFAULT_INTERVENTION,
) -> Edit:
    """Pick the top `rule.num_codes` eligible codes per layer (fewer if fewer are eligible)."""
    _check_same_bottleneck(forget, retain)
    layers = {}
    for layer in sorted(forget.counts):
        scores = enrichment_scores(forget, retain, layer, rule)
        k = min(rule.num_codes, int(torch.isfinite(scores).sum()))
        top = torch.topk(scores, k)
        layers[layer] = LayerCodes(codes=top.indices.tolist(), scores=[round(s, 4) for s in top.values.tolist()])
    if not any(c.codes for c in layers.values()):
        raise CodeunlearnError(
            "no code passes the selection rule", "lower --min_forget_count / --min_score or use more forget text"
        )
    return Edit(
        topic=topic,
        layers=layers,
        intervention=intervention,
        rule={
            "name": "enrichment",
            **dataclasses.asdict(rule),
            "forget_corpus": forget.corpus,
            "retain_corpus": retain.corpus,
        },
        bottleneck_fingerprint=forget.bottleneck_fingerprint,
    )


def random_control(edit: Edit, forget: CodeStatistics, retain: CodeStatistics, seed: int = 0) -> Edit:
    """Same number of codes per layer, drawn uniformly among codes that fire at all on forget or retain text."""
    generator = torch.Generator().manual_seed(seed)
    layers = {}
    for layer, chosen in edit.layers.items():
        live = torch.nonzero((forget.counts[layer] + retain.counts[layer]) > 0).flatten()
        pick = live[torch.randperm(len(live), generator=generator)[: len(chosen.codes)]]
        layers[layer] = LayerCodes(codes=sorted(pick.tolist()))
    return Edit(
        topic=f"{edit.topic}/random-control",
        layers=layers,
        intervention=edit.intervention,
        rule={"name": "random-control", "seed": seed, "matches": edit.topic},
        bottleneck_fingerprint=edit.bottleneck_fingerprint,
    )


def truncate(edit: Edit, num_codes: int) -> Edit:
    """The top `num_codes` codes per layer of a scored edit (for forget-vs-retain curves)."""
    layers = {layer: LayerCodes(c.codes[:num_codes], c.scores[:num_codes]) for layer, c in edit.layers.items()}
    rule = {**edit.rule, "num_codes": num_codes}
    return Edit(edit.topic, layers, edit.intervention, rule, edit.bottleneck_fingerprint, edit.kind)
