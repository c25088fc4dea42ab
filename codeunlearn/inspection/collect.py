"""One pass over a corpus that watches chosen units: how often each fires (exactly as `codeunlearn stats` counts,
through each bottleneck's `tally`), its strongest firings and, for units with activations, their histogram.

Like the statistics pass it stops after the deepest bottleneck layer (`BottleneckedModel.run_to_deepest`), so no
later layer and no LM head runs; what it keeps per unit is bounded (`TopFirings`, `ActivationHistograms`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.inspection.contexts import TopFirings
from codeunlearn.inspection.histogram import ActivationHistograms
from codeunlearn.runtime import autocast, batches, model_device


@dataclass
class UnitObservations:
    """What one pass saw of the watched units of one layer (`units[i]` is row i of every per-unit field)."""

    units: Tensor  # (U,) long
    counts: Tensor  # (U,) long: tokens each unit fires on
    tokens: int  # counted tokens (passthrough tokens left out, as in the statistics)
    top: TopFirings
    histograms: ActivationHistograms | None

    def row(self, unit: int) -> int:
        """The row of a unit id."""
        return int((self.units == unit).nonzero()[0])


@torch.no_grad()
def observe_units(
    bmodel: BottleneckedModel,
    chunks: Tensor,
    units: dict[int, list[int]],
    contexts: int = 5,
    batch_size: int = 8,
    bf16: bool = False,
    progress: bool = False,
    corpus: str = "",
) -> dict[int, UnitObservations]:
    """Watch `units` ({layer: unit ids}) over `chunks` (num_chunks, seq_len): per layer, each unit's firing count,
    its `contexts` strongest firings (strength and flat location chunk * seq_len + position) and, where the kind's
    units have activations, their histogram. Runs the bottleneck as it is (with whatever edits are active)."""
    if len(chunks) == 0:
        raise CodeunlearnError(f"corpus {corpus!r} gave no chunks", "use more text or a smaller --seq_len")
    device = model_device(bmodel)
    watched = {layer: torch.tensor(sorted(set(ids)), dtype=torch.long) for layer, ids in units.items() if ids}
    on_device = {layer: ids.to(device) for layer, ids in watched.items()}
    with_histograms = bmodel.config.has_activations
    observed = {
        layer: UnitObservations(
            ids,
            torch.zeros(len(ids), dtype=torch.long),
            0,
            TopFirings(len(ids), contexts),
            ActivationHistograms(len(ids)) if with_histograms else None,
        )
        for layer, ids in watched.items()
    }
    offset = 0  # flat location of the current batch's first token

    def observe(layer: int, states: Tensor, result: Any) -> None:
        seen = observed.get(layer)
        if seen is None:
            return
        bottleneck = bmodel.bottleneck(layer)
        tally = bottleneck.tally(result)  # the statistics' own count, so frequencies equal `stats`'
        seen.counts += tally.counts[seen.units]
        seen.tokens += tally.tokens
        strength = bottleneck.firing_strength(states, result, on_device[layer]).reshape(-1, len(seen.units))
        seen.top.update(strength, torch.arange(offset, offset + len(strength), device=strength.device))
        if seen.histograms is not None:
            seen.histograms.update(strength)

    with autocast(device, bf16):
        for batch in batches(chunks, batch_size, desc=f"inspect {corpus}", progress=progress):
            bmodel.run_to_deepest(batch.to(device), observe)
            offset += batch.numel()
    return observed
