"""The SAE guardrail: calibrating its threshold on retain text, and the two numbers that show it works.

A guardrail edit intervenes (zero / clamp its features) only at tokens where the local-window score of its
features is above a threshold (`codeunlearn.bottleneck.interventions`). Here:

- `calibrate_guardrail` turns a zero/clamp edit into a guardrail whose per-layer threshold gives at most a target
  false-positive rate on retain text: at most that fraction of retain windows (one window ends at every counted
  token) is gated;
- `gate_rate` measures the fraction of windows gated on other text (the false-positive rate on held-out retain
  text of the same register, or the share of forget tokens caught);
- `padding_attack` prefixes forget passages with 1k/2k/4k tokens of retain text and reports how many passages the
  gate still blocks. A whole-prompt gate (the fraction of the prompt's tokens that fire, as published) is
  diluted by such padding; a local window only sees padding through the model's attention.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import Tensor

from codeunlearn.bottleneck.edit import GUARDRAIL_ACTIONS, Edit, Guardrail
from codeunlearn.bottleneck.interventions import firing_counts, window_scores
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.bottleneck.sae import SAEOutput
from codeunlearn.errors import CodeunlearnError
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
def _unedited(bmodel: BottleneckedModel) -> Iterator[None]:
    """Gates read the unedited SAE; set the model's own edits aside (so upstream edits do not move the scores)."""
    saved = list(bmodel.edits)
    bmodel.clear_edits()
    try:
        yield
    finally:
        for edit in saved:
            bmodel.apply_edit(edit)


def _check_sae_edit(bmodel: BottleneckedModel, edit: Edit) -> None:
    if "guardrail" not in bmodel.config.interventions or "guardrail" not in config_class_for(edit.kind).interventions:
        raise CodeunlearnError("a guardrail gates SAE features", "use an SAE bottleneck and an edit selected from it")
    bmodel._check_edit(edit)


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
    _check_sae_edit(bmodel, edit)
    features = {layer: torch.tensor(codes.codes, dtype=torch.long) for layer, codes in edit.layers.items()}
    scores: dict[int, list[Tensor]] = {layer: [] for layer in features}
    counted: dict[int, list[Tensor]] = {layer: [] for layer in features}

    def observe(layer: int, states: Tensor, result: SAEOutput) -> None:
        if layer in features:
            counts = firing_counts(result.acts, features[layer].to(result.acts.device), result.passthrough)
            scores[layer].append(window_scores(counts, window).cpu())
            counted[layer].append((~result.passthrough).cpu())

    device = model_device(bmodel)
    with _unedited(bmodel), autocast(device, bf16):
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


@dataclass
class PaddingAttackResult:
    """How a guardrail holds when forget passages are preceded by retain text."""

    pad_tokens: list[int]
    passages: int
    blocked: dict[int, float]  # padding length -> fraction of passages with at least one gated token
    gated_token_fraction: dict[int, float]  # padding length -> mean fraction of passage tokens gated
    attack_success: dict[int, float]  # padding length -> fraction of the passages blocked unpadded that get through
    still_blocked: dict[int, float] = field(default_factory=dict)  # 1 - attack_success

    def to_dict(self) -> dict:
        return {
            "pad_tokens": self.pad_tokens,
            "passages": self.passages,
            "blocked": {str(k): v for k, v in self.blocked.items()},
            "gated_token_fraction": {str(k): v for k, v in self.gated_token_fraction.items()},
            "attack_success": {str(k): v for k, v in self.attack_success.items()},
            "still_blocked": {str(k): v for k, v in self.still_blocked.items()},
        }


@torch.no_grad()
def _passage_gates(bmodel: BottleneckedModel, edit: Edit, inputs: Tensor, passage_len: int, bf16: bool) -> Tensor:
    """Boolean (batch, passage_len): the guardrail is on at some layer, on the last `passage_len` tokens."""
    gated: list[Tensor] = []
    thresholds = edit.guardrail.thresholds
    features = {layer: torch.tensor(codes.codes, dtype=torch.long) for layer, codes in edit.layers.items()}

    def observe(layer: int, states: Tensor, result: SAEOutput) -> None:
        if layer in features:
            counts = firing_counts(result.acts, features[layer].to(result.acts.device), result.passthrough)
            on = window_scores(counts, edit.guardrail.window) > thresholds[layer]
            gated.append(on[:, -passage_len:].cpu())

    device = model_device(bmodel)
    with autocast(device, bf16):
        bmodel.run_to_deepest(inputs.to(device), observe)
    return torch.stack(gated).any(0)


def padding_attack(
    bmodel: BottleneckedModel,
    edit: Edit,
    passages: Tensor,
    padding: Tensor,
    pad_tokens: Sequence[int] = (1024, 2048, 4096),
    batch_size: int = 1,
    bf16: bool = False,
) -> PaddingAttackResult:
    """Run each forget passage (rows of `passages`, (n, L)) alone and after `pad_tokens` tokens of `padding` (a 1-D
    stream of retain token ids; passage i takes its padding from offset i * 997 so passages see different text).

    A passage counts as blocked when the guardrail is on at one of its tokens at least; the attack succeeds on a
    passage that is blocked alone and not blocked after the padding."""
    if edit.guardrail is None:
        raise CodeunlearnError(f"edit {edit.topic!r} is not a guardrail", "calibrate it first (codeunlearn calibrate)")
    _check_sae_edit(bmodel, edit)
    lengths = [0, *sorted(set(pad_tokens))]
    if padding.numel() < max(lengths):
        raise CodeunlearnError(
            f"{padding.numel()} padding tokens, fewer than the longest padding {max(lengths)}",
            "pass more retain text or shorter --pad_tokens",
        )
    n, length = passages.shape
    gates: dict[int, Tensor] = {}
    with _unedited(bmodel):
        for pad in lengths:
            rows = []
            for start in range(0, n, batch_size):
                chunk = passages[start : start + batch_size]
                prefix = [padding.roll(-((start + i) * 997))[:pad] for i in range(len(chunk))]
                inputs = torch.cat([torch.stack(prefix), chunk], 1) if pad else chunk
                rows.append(_passage_gates(bmodel, edit, inputs, length, bf16))
            gates[pad] = torch.cat(rows)
    blocked = {pad: g.any(-1) for pad, g in gates.items()}
    base = blocked[0]
    success = {pad: float((base & ~blocked[pad]).sum()) / max(int(base.sum()), 1) for pad in lengths if pad}
    return PaddingAttackResult(
        pad_tokens=[pad for pad in lengths if pad],
        passages=n,
        blocked={pad: float(b.double().mean()) for pad, b in blocked.items()},
        gated_token_fraction={pad: float(g.double().mean()) for pad, g in gates.items()},
        attack_success=success,
        still_blocked={pad: 1.0 - rate for pad, rate in success.items()},
    )


def prompt_fraction_gate(acts: Tensor, features: Tensor, threshold: float, passthrough: Tensor | None = None) -> Tensor:
    """The published whole-prompt gate, for comparison: on for a whole sequence (batch, seq) when the fraction of
    its counted tokens that fire a selected feature exceeds `threshold`. Padding the prompt dilutes it."""
    fires = firing_counts(acts, features, passthrough) > 0
    counted = torch.ones_like(fires) if passthrough is None else ~passthrough
    fraction = fires.sum(-1).double() / counted.sum(-1).clamp_min(1).double()
    return (fraction > threshold).unsqueeze(-1).expand_as(fires)
