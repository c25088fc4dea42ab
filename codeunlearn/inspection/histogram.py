"""Activation histograms of SAE features, counted exactly in bounded memory while a corpus streams by.

The bins are fixed before any activation is seen (log-spaced, `PER_DECADE` per decade from `LOW` to `HIGH`; values
outside fall into the end bins), so every batch adds its counts with one `index_add_` and nothing is kept per token.
Log bins because a feature's activations span orders of magnitude, and an SAE's scale (the model's activation norm)
is unknown in advance; `Histogram` keeps the bins from the first to the last non-empty one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

LOW, HIGH, PER_DECADE = 1e-4, 1e4, 8


@dataclass
class Histogram:
    """Counts of firing activations in bins: `counts[i]` activations fell in [edges[i], edges[i + 1])."""

    edges: list[float]
    counts: list[int]

    @property
    def total(self) -> int:
        return sum(self.counts)

    def to_dict(self) -> dict[str, Any]:
        return {"edges": self.edges, "counts": self.counts, "scale": "log"}


class ActivationHistograms:
    """Per watched unit, the counts of its firing activations (finite strengths of `Bottleneck.firing_strength`)."""

    def __init__(self, num_units: int, low: float = LOW, high: float = HIGH, per_decade: int = PER_DECADE) -> None:
        bins = round(math.log10(high / low) * per_decade)
        self.edges = torch.logspace(math.log10(low), math.log10(high), bins + 1, dtype=torch.float64)
        self.bins = len(self.edges) - 1
        self.counts = torch.zeros(num_units, self.bins, dtype=torch.long)

    def update(self, strength: Tensor) -> None:
        """Add a batch: `strength` (N, U), -inf where a unit does not fire."""
        fires = torch.isfinite(strength)
        if not bool(fires.any()):
            return
        token, unit = fires.nonzero(as_tuple=True)
        values = strength[token, unit].double().cpu()
        index = torch.bucketize(values, self.edges[1:-1], right=True)  # below LOW -> bin 0, above HIGH -> last bin
        self.counts.view(-1).index_add_(0, unit.cpu() * self.bins + index, torch.ones_like(index))

    def histogram(self, unit_index: int) -> Histogram | None:
        """A unit's histogram from its first to its last non-empty bin; None where it never fired."""
        counts = self.counts[unit_index]
        filled = counts.nonzero().flatten()
        if len(filled) == 0:
            return None
        first, last = int(filled[0]), int(filled[-1])
        return Histogram(self.edges[first : last + 2].tolist(), counts[first : last + 1].tolist())


def aligned(histograms: list[Histogram]) -> list[Histogram]:
    """Histograms cut from one grid of log bins (one `ActivationHistograms`), each over the range that covers all of
    them, so that they can be drawn on one axis."""
    if not histograms:
        return []
    ratio = histograms[0].edges[1] / histograms[0].edges[0]  # every bin of a grid spans the same ratio
    low = min(h.edges[0] for h in histograms)

    def index(edge: float) -> int:
        return round(math.log(edge / low) / math.log(ratio))

    bins = max(index(h.edges[-1]) for h in histograms)
    edges = [low * ratio**i for i in range(bins + 1)]
    result = []
    for histogram in histograms:
        start = index(histogram.edges[0])
        counts = [0] * bins
        counts[start : start + len(histogram.counts)] = histogram.counts
        result.append(Histogram(edges, counts))
    return result
