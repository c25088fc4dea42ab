"""What an SAE edit does to feature activations: pure tensor functions, no model and no I/O.

An edit at a layer names features and how to treat them *when they fire* (activation > 0 in the unedited SAE):

- `zero`: set them to 0 (zero-ablation);
- `clamp`: set them to `multiplier * scale` with a negative multiplier (the SAE-unlearning literature finds
  zero-ablation weak and needs large negative values);
- `guardrail`: either of the above, but only at tokens where a causal *local window* gate is on. The gate's score
  at token t is the mean, over the last `window` tokens (zeros before the sequence start), of how many selected
  features fire per token; the gate is on where the score exceeds the calibrated threshold. A whole-prompt
  fraction (the published guardrail) is diluted by padding the prompt with unrelated text; a local window is not:
  the score at a topic token depends only on the `window` tokens before it, however much text precedes them.

Several edits at one layer compose in order (a later edit overwrites an earlier one's value for a shared feature);
every gate reads the unedited activations, so edits never switch each other's gates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.errors import CodeunlearnError


@dataclass
class FeatureIntervention:
    """One edit's effect at one layer: firing `features` are set to `values` (where the gate, if any, is on)."""

    features: Tensor  # (n,) long feature ids
    values: Tensor  # (n,) float: 0 for zero-ablation, multiplier * scale for clamping
    window: int = 0  # 0 = no gate (always on)
    threshold: float = 0.0

    @property
    def gated(self) -> bool:
        return self.window > 0


def window_scores(counts: Tensor, window: int) -> Tensor:
    """Causal moving average over the last `window` positions of `counts` (..., T), zero-padded on the left.

    score[t] = sum(counts[max(0, t - window + 1) : t + 1]) / window."""
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    counts = counts.float()
    lead, length = counts.shape[:-1], counts.shape[-1]
    flat = counts.reshape(-1, 1, length)
    padded = F.pad(flat, (window - 1, 0))
    summed = F.conv1d(padded, torch.ones(1, 1, window, device=counts.device, dtype=counts.dtype))
    return (summed / window).reshape(*lead, length)


def firing_counts(acts: Tensor, features: Tensor, passthrough: Tensor | None = None) -> Tensor:
    """How many of `features` fire at each token: acts (..., d_sae) -> (...); passthrough tokens count 0."""
    counts = (acts[..., features] > 0).sum(-1)
    if passthrough is not None:
        counts = counts.masked_fill(passthrough, 0)
    return counts


def gate(
    acts: Tensor,
    features: Tensor,
    window: int,
    threshold: float,
    passthrough: Tensor | None = None,
    history: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Boolean (...) gate: the local-window firing score of `features` exceeds `threshold`; and the counts of the
    last `window - 1` tokens (to continue the window in the next call).

    `acts` is (batch, seq, d_sae) or (seq, d_sae); the window runs along the sequence dimension. `history` holds the
    firing counts of the tokens just before these (e.g. earlier decoding steps), or None at a sequence start."""
    counts = firing_counts(acts, features, passthrough)
    if history is not None:
        counts = torch.cat([history.to(counts), counts], -1)
    scores = window_scores(counts, window)[..., counts.shape[-1] - acts.shape[-2] :]
    return scores > threshold, counts[..., max(0, counts.shape[-1] - (window - 1)) :]


def apply_interventions(
    acts: Tensor,
    interventions: list[FeatureIntervention],
    passthrough: Tensor | None = None,
    history: list[Tensor | None] | None = None,
) -> tuple[Tensor, Tensor | None, list[Tensor | None]]:
    """Edited activations, the union of the gates that were on (None when no intervention is gated), and per
    intervention the counts that continue its window (None when not gated).

    Only firing features change (a feature at 0 stays 0), and passthrough tokens never change. `history` gives,
    per intervention, the counts preceding these tokens (see `gate`)."""
    edited = acts.clone()
    fires = acts > 0
    if passthrough is not None:
        fires = fires & ~passthrough.unsqueeze(-1)
    gated_any: Tensor | None = None
    tails: list[Tensor | None] = []
    for index, intervention in enumerate(interventions):
        features = intervention.features.to(acts.device)
        hit = fires[..., features]
        tail = None
        if intervention.gated:
            previous = history[index] if history is not None else None
            on, tail = gate(acts, features, intervention.window, intervention.threshold, passthrough, previous)
            gated_any = on if gated_any is None else gated_any | on
            hit = hit & on.unsqueeze(-1)
        tails.append(tail)
        values = intervention.values.to(device=acts.device, dtype=acts.dtype)
        edited[..., features] = torch.where(hit, values, edited[..., features])
    return edited, gated_any, tails


def compile_edit(edit: Edit, layer: int) -> FeatureIntervention:
    """An SAE edit's effect at one layer as a `FeatureIntervention` (features, their values, the gate)."""
    codes = edit.layers[layer]
    features = torch.tensor(codes.codes, dtype=torch.long)
    action = edit.guardrail.action if edit.intervention == "guardrail" and edit.guardrail else edit.intervention
    if action == "clamp":
        values = torch.tensor(codes.scales, dtype=torch.float32) * float(edit.multiplier)
    else:
        values = torch.zeros(len(codes.codes))
    if edit.intervention != "guardrail":
        return FeatureIntervention(features, values)
    if layer not in edit.guardrail.thresholds:
        raise CodeunlearnError(
            f"guardrail {edit.topic!r} has no threshold for layer {layer}", "calibrate it with `codeunlearn calibrate`"
        )
    return FeatureIntervention(features, values, edit.guardrail.window, edit.guardrail.thresholds[layer])
