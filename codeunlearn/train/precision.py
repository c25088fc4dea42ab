"""`LossScaler`: fp16 loss scaling of the trained parameters (`--fp16`), on `torch.amp.GradScaler`.

Under fp16 autocast the gradients flowing back through the frozen model's fp16 layers can underflow to zero; the
loss is multiplied by a scale before `backward` and the fp32 gradients divided by it before the update. An update
whose gradients hold an inf or a nan is skipped (the parameters and the optimizer state stay as they are) and the
scale is halved; after 2,000 updates without one the scale doubles (GradScaler's defaults).

The learning-rate schedule counts steps, skipped or not: the rate at step s is the same in every run, whatever its
precision, and a resumed run continues the schedule where the checkpoint left it. A skipped update only loses that
update (they happen in the first few steps while the scale settles, and are logged as `skipped_updates`).

Data-parallel, the scaler sees the gradients after the processes' reduction (DDP's, or the SAE trainer's own), so
every process finds the same overflow, skips the same updates and holds the same scale. Outside fp16 the scaler
is a pass-through.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

# Stepping the schedule after an update the scaler skipped is what `LossScaler.step` means to do.
_SKIPPED_FIRST_STEP = r"Detected call of `lr_scheduler\.step\(\)` before `optimizer\.step\(\)`"


class LossScaler:
    """The loss scale of one run's optimizer (`enabled` for fp16), with the number of updates it skipped."""

    def __init__(self, device: torch.device | str, enabled: bool) -> None:
        self.enabled = enabled
        self.scaler = torch.amp.GradScaler(torch.device(device).type, enabled=enabled)
        self.skipped = 0

    def scale(self, loss: Tensor) -> Tensor:
        """`loss` times the scale (unchanged when not enabled), to call `backward` on."""
        return self.scaler.scale(loss)

    def unscale_(self, optimizer: torch.optim.Optimizer) -> None:
        """Divide the optimizer's gradients by the scale in place: before clipping them, which must see their true
        norm. `step` then does not divide them again."""
        self.scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> bool:
        """Update the parameters unless a gradient is inf or nan, adjust the scale, and step the schedule either
        way; returns whether the update was made."""
        before = self.scaler.get_scale()
        self.scaler.step(optimizer)
        self.scaler.update()
        made = not self.enabled or self.scaler.get_scale() >= before  # GradScaler lowers the scale iff it skipped
        self.skipped += not made
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=_SKIPPED_FIRST_STEP)
            scheduler.step()
        return made

    def record(self) -> dict[str, float | int]:
        """The metrics fields of the scaler (none when not enabled): the scale after the last update and the
        updates skipped so far."""
        if not self.enabled:
            return {}
        return {"grad_scale": self.scaler.get_scale(), "skipped_updates": self.skipped}

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps (JSON-safe numbers), so a resumed run scales and skips as the uninterrupted one."""
        return {"grad_scaler": self.scaler.state_dict(), "skipped_updates": self.skipped}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.enabled and state.get("grad_scaler"):
            self.scaler.load_state_dict(state["grad_scaler"])
            self.skipped = int(state.get("skipped_updates", 0))
