"""The SAE guardrail: calibrating its threshold on retain text, and the two numbers that show it works.

A guardrail edit intervenes (zero / clamp its features) only at tokens where the local-window score of its
features is above a threshold (`codeunlearn.kinds.sae.interventions`). Here:

- `calibrate_guardrail` turns a zero/clamp edit into a guardrail whose per-layer threshold gives at most a target
  false-positive rate on retain text: at most that fraction of retain windows (one window ends at every counted
  token) is gated;
- `gate_rate` measures the fraction of windows gated on other text (the false-positive rate on held-out retain
  text of the same register, or the share of forget tokens caught);
- the attack on the gate itself, and the published whole-prompt gate to compare with, are in
  `codeunlearn.unlearn.guardrail_attacks`.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from codeunlearn.bottleneck.edit import GUARDRAIL_ACTIONS, Edit, Guardrail
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.sae.bottleneck import SAEOutput
from codeunlearn.kinds.sae.interventions import firing_counts, window_scores
from codeunlearn.runtime import autocast, batches, model_device

DEFAULT_WINDOW = 32
DEFAULT_TARGET_FPR = 0.02


def calibrate_threshold(scores: Tensor, target_fpr: float) -> float:
    """The smallest threshold t such that at most `target_fpr` of `scores` are above it (the gate is on where
    score > t): the (floor(target_fpr * n) + 1)-th largest score."""
    if not 0.0 < target_fpr < 1.0:
        raise CodeunlearnError(f"target false-positive rate {target_fpr}", "use a rate in (0, 1), e.g. 0.02")
    flat = scores.flatten().double()
    if flat.numel() == 0:
        raise CodeunlearnError("no retain windows to calibrate on", "pass more retain text")
    allowed = math.floor(target_fpr * flat.numel())
    return float(torch.sort(flat, descending=True).values[allowed])


@contextmanager
def unedited(bmodel: BottleneckedModel) -> Iterator[None]:
    """Gates read the unedited SAE; set the model's own edits aside (so upstream edits do not move the scores)."""
    saved = list(bmodel.edits)
    bmodel.clear_edits()
    try:
        yield
    finally:
        for edit in saved:
            bmodel.apply_edit(edit)


def check_sae_edit(bmodel: BottleneckedModel, edit: Edit) -> None:
    if "guardrail" not in bmodel.config.interventions or "guardrail" not in config_class_for(edit.kind).interventions:
        raise CodeunlearnError("a guardrail gates SAE features", "use an SAE bottleneck and an edit selected from it")
    bmodel.check_edit(edit)


@torch.no_grad()
def window_scores_on(
    bmodel: BottleneckedModel,
    chunks: Tensor,
    edit: Edit,
    window: int,
    batch_size: int = 8,
    bf16: bool = False,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Per edited layer: (window scores, counted-token mask), both (num_chunks, seq_len), of the edit's features on
    `chunks` with the unedited SAE. Passthrough tokens (position 0, massive norms) are not counted windows."""
    check_sae_edit(bmodel, edit)
    features = {layer: torch.tensor(codes.codes, dtype=torch.long) for layer, codes in edit.layers.items()}
    scores: dict[int, list[Tensor]] = {layer: [] for layer in features}
    counted: dict[int, list[Tensor]] = {layer: [] for layer in features}

    def observe(layer: int, states: Tensor, result: SAEOutput) -> None:
        if layer in features:
            counts = firing_counts(result.acts, features[layer].to(result.acts.device), result.passthrough)
            scores[layer].append(window_scores(counts, window).cpu())
            counted[layer].append((~result.passthrough).cpu())

    device = model_device(bmodel)
    with unedited(bmodel), autocast(device, bf16):
        for batch in batches(chunks, batch_size):
            bmodel.run_to_deepest(batch.to(device), observe)
    return {layer: (torch.cat(scores[layer]), torch.cat(counted[layer])) for layer in features}


def calibrate_guardrail(
    bmodel: BottleneckedModel,
    edit: Edit,
    retain_chunks: Tensor,
    window: int = DEFAULT_WINDOW,
    target_fpr: float = DEFAULT_TARGET_FPR,
    action: str | None = None,
    multiplier: float | None = None,
    batch_size: int = 8,
    bf16: bool = False,
    corpus: str = "",
) -> Edit:
    """A guardrail edit from a zero/clamp (or guardrail) SAE edit: its features, gated per layer by a local window
    of `window` tokens whose threshold lets at most `target_fpr` of the windows of `retain_chunks` through.

    `action` (`zero` / `clamp`) defaults to the edit's own intervention; `multiplier` to the edit's."""
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise CodeunlearnError(f"guardrail window {window!r}", "use a positive number of tokens, e.g. 32")
    if not 0.0 < target_fpr < 1.0:
        raise CodeunlearnError(f"target false-positive rate {target_fpr}", "use a rate in (0, 1), e.g. 0.02")
    if action is None:
        action = edit.guardrail.action if edit.guardrail is not None else edit.intervention
    if action not in GUARDRAIL_ACTIONS:
        raise CodeunlearnError(f"unknown guardrail action {action!r}", f"use one of {GUARDRAIL_ACTIONS}")
    per_layer = window_scores_on(bmodel, retain_chunks, edit, window, batch_size, bf16)
    thresholds, measured, windows = {}, {}, {}
    for layer, (scores, counted) in per_layer.items():
        values = scores[counted]
        thresholds[layer] = calibrate_threshold(values, target_fpr)
        measured[layer] = round(float((values > thresholds[layer]).double().mean()), 6)
        windows[layer] = int(values.numel())
    guardrail = Guardrail(
        window=window,
        thresholds=thresholds,
        action=action,
        target_fpr=target_fpr,
        calibration={"corpus": corpus, "windows": windows, "fpr": measured},
    )
    return edit.with_intervention(
        "guardrail", guardrail=guardrail, multiplier=multiplier if multiplier is not None else edit.multiplier
    )


def gate_rate(
    bmodel: BottleneckedModel, edit: Edit, chunks: Tensor, batch_size: int = 8, bf16: bool = False
) -> dict[str, float]:
    """Fraction of the windows (counted tokens) of `chunks` on which the guardrail is on, per layer and at any
    layer (`any`): the false-positive rate on retain text, or the share of forget tokens caught."""
    if edit.guardrail is None:
        raise CodeunlearnError(f"edit {edit.topic!r} is not a guardrail", "calibrate it first (codeunlearn calibrate)")
    per_layer = window_scores_on(bmodel, chunks, edit, edit.guardrail.window, batch_size, bf16)
    rates, union, counted_any = {}, None, None
    for layer, (scores, counted) in per_layer.items():
        on = (scores > edit.guardrail.thresholds[layer]) & counted
        rates[str(layer)] = float(on[counted].double().mean())
        union = on if union is None else union | on
        counted_any = counted if counted_any is None else counted_any | counted
    rates["any"] = float(union[counted_any].double().mean())
    return rates
