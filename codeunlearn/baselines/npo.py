"""Negative Preference Optimization (NPO), optionally with a retain term (NPO+RT).

Paper: Zhang, Lin, Bai and Mei 2024, "Negative Preference Optimization: From Catastrophic Collapse to Effective
Unlearning" (COLM).

Loss over forget sequences y (here: packed chunks, x empty, log-probs summed over the chunk's tokens 1..T-1):

    L_NPO = -(2/β) · E[ log σ( -β · (log π_θ(y) - log π_ref(y)) ) ]

with π_ref the frozen starting model. At the start π_θ = π_ref, so L_NPO = (2/β)·log 2, and its gradient is that of
gradient ascent on the summed log-probability; as a sequence's likelihood falls below the reference, its weight
σ(β·Δ) decays, which is what keeps NPO from GA's collapse. NPO+RT adds `retain_weight` · NLL(retain).

Hyperparameters: β = 0.1 (the paper's value); NPO+RT's retain weight 1 (`retain_weight`, default 0 = plain NPO);
optimiser as TOFU's recipe on Llama-2-7B (AdamW, lr 1e-5, weight decay 0.01, warm-up then linear decay, clipping at
1.0), scaled to SmolLM2-135M by 4096/576: lr 7e-5, 60 steps of 8 chunks x 256 tokens. β is not rescaled, but note
that it acts on *summed* log-probs: a 255-token chunk accumulates a larger log-ratio than a TOFU answer of a few
dozen tokens, so the weights σ(β·Δ) saturate after fewer steps here.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codeunlearn.baselines.base import MethodConfig, UnlearningMethod, sequence_logprob
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.evaluation import next_token_nll


@dataclass
class NPOConfig(MethodConfig):
    """NPO: the shared optimiser settings plus β and the optional retain weight (NPO+RT)."""

    beta: float = field(default=0.1, metadata={"help": "Inverse temperature β of the NPO loss (paper: 0.1)."})
    retain_weight: float = field(
        default=0.0, metadata={"help": "Weight of the retain NLL term (0 = plain NPO; NPO+RT in the paper uses 1)."}
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range("beta", self.beta, math.isfinite(self.beta) and self.beta > 0, "> 0 (the paper uses 0.1)")
        check_range(
            "retain_weight", self.retain_weight, math.isfinite(self.retain_weight) and self.retain_weight >= 0, ">= 0"
        )


def npo_loss(logp: Tensor, ref_logp: Tensor, beta: float) -> Tensor:
    """-(2/β) · mean(log σ(-β (logp - ref_logp))) over sequences."""
    return -(2.0 / beta) * F.logsigmoid(-beta * (logp - ref_logp)).mean()


def npo_loss_at_reference(beta: float) -> float:
    """The NPO loss while the policy equals the reference: (2/β)·log 2."""
    return 2.0 / beta * math.log(2.0)


class NPO(UnlearningMethod):
    """NPO against a frozen copy of the starting model, plus `retain_weight` · NLL(retain)."""

    name = "npo"
    config_class = NPOConfig
    config: NPOConfig

    def __init__(self, config: NPOConfig | None = None) -> None:
        super().__init__(config)
        self.reference: nn.Module | None = None

    @property
    def needs_retain(self) -> bool:
        return self.config.retain_weight > 0

    def prepare(self, model: nn.Module, forget: Tensor, retain: Tensor | None) -> dict[str, Any]:
        self.reference = copy.deepcopy(model).eval().requires_grad_(False)
        return {
            "reference": "frozen copy of the starting model",
            "loss_at_reference": npo_loss_at_reference(self.config.beta),
        }

    def loss(self, model: nn.Module, forget: Tensor | None, retain: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        if self.reference is None:
            raise CodeunlearnError("NPO.loss called before prepare()", "call prepare(model, forget, retain) first")
        logp = sequence_logprob(model, forget)
        with torch.no_grad():
            ref_logp = sequence_logprob(self.reference, forget)
        total = npo_loss(logp, ref_logp, self.config.beta)
        parts = {"npo_loss": float(total.detach()), "log_ratio": float((logp - ref_logp).detach().mean())}
        if self.needs_retain:
            retain_nll = next_token_nll(model, retain)
            total = total + self.config.retain_weight * retain_nll
            parts["retain_nll"] = float(retain_nll.detach())
        return total, parts

    def release(self) -> None:
        self.reference = None
