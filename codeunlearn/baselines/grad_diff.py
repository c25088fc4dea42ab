"""Gradient difference (GradDiff): ascend the forget loss while descending the retain loss.

Paper: Liu et al. 2022, "Continual Learning and Private Unlearning" (CoLLAs); the "Grad. Diff." baseline of TOFU
(Maini et al. 2024).

Loss: L = -forget_weight · NLL(forget) + retain_weight · NLL(retain). All weights are trained.

Hyperparameters: TOFU's recipe (see `codeunlearn.baselines.ga` and `MethodConfig`): AdamW, lr 1e-5 on Llama-2-7B
(scaled to SmolLM2-135M by 4096/576: 7e-5), weight decay 0.01, warm-up ratio 0.2 then linear decay, clipping at 1.0,
60 steps of 8 chunks x 256 tokens from each corpus. Both weights are 1, as in TOFU (open-unlearning's gamma = alpha
= 1); neither depends on model size, since both terms are mean token losses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor, nn

from codeunlearn.baselines.base import MethodConfig, UnlearningMethod
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.evaluation import next_token_nll


@dataclass
class GradDiffConfig(MethodConfig):
    """Gradient difference: the shared optimiser settings plus the two loss weights."""

    forget_weight: float = field(default=1.0, metadata={"help": "Weight of the forget-loss ascent term."})
    retain_weight: float = field(default=1.0, metadata={"help": "Weight of the retain-loss descent term."})

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("forget_weight", "retain_weight"):
            value = getattr(self, name)
            check_range(name, value, math.isfinite(value) and value >= 0, ">= 0")
        if self.forget_weight == 0 and self.retain_weight == 0:
            raise CodeunlearnError("forget_weight and retain_weight are both 0", "make at least one weight positive")


class GradDiff(UnlearningMethod):
    """Minimise -forget_weight · NLL(forget) + retain_weight · NLL(retain)."""

    name = "grad_diff"
    config_class = GradDiffConfig
    config: GradDiffConfig

    @property
    def needs_forget(self) -> bool:
        return self.config.forget_weight > 0

    @property
    def needs_retain(self) -> bool:
        return self.config.retain_weight > 0

    def loss(self, model: nn.Module, forget: Tensor | None, retain: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        parts: dict[str, float] = {}
        total: Tensor | float = 0.0
        if self.needs_forget:  # skipped at weight 0: a wasted forward and backward otherwise
            forget_nll = next_token_nll(model, forget)
            total = total - self.config.forget_weight * forget_nll
            parts["forget_nll"] = float(forget_nll.detach())
        if self.needs_retain:
            retain_nll = next_token_nll(model, retain)
            total = total + self.config.retain_weight * retain_nll
            parts["retain_nll"] = float(retain_nll.detach())
        return total, parts
