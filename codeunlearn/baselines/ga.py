"""Gradient ascent (GA): maximise the next-token loss on the forget text.

Paper: Jang et al. 2023, "Knowledge Unlearning for Mitigating Privacy Risks in Language Models" (ACL), the GA
baseline of TOFU (Maini et al. 2024, "TOFU: A Task of Fictitious Unlearning for LLMs").

Loss: L = -NLL(forget) = mean over forget tokens of log π_θ(x_t | x_<t). All weights are trained.

Hyperparameters (TOFU's recipe on Llama-2-7B, `MethodConfig`): AdamW, lr 1e-5, weight decay 0.01, linear warm-up
over the first of five epochs then linear decay, clipping at 1.0, effective batch 32 question-answer pairs.
Scaled to SmolLM2-135M: lr 1e-5 x 4096/576 ≈ 7e-5 (muP width rule, see `codeunlearn.baselines.base`), batches of
8 chunks x 256 tokens (about the tokens of 32 TOFU pairs), warm-up ratio 0.2, 60 steps (five epochs of TOFU's
forget10 split, 400 pairs, at 32 pairs per step). GA has no retain term, so it degrades retain text as well;
its loss is unbounded and the model collapses if run long enough.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from codeunlearn.baselines.base import MethodConfig, UnlearningMethod
from codeunlearn.evaluate.evaluation import next_token_nll


@dataclass
class GAConfig(MethodConfig):
    """Gradient ascent: only the shared optimiser settings (TOFU's recipe, scaled)."""


class GradientAscent(UnlearningMethod):
    """Minimise -NLL on forget batches."""

    name = "ga"
    config_class = GAConfig

    def loss(self, model: nn.Module, forget: Tensor | None, retain: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        nll = next_token_nll(model, forget)
        return -nll, {"forget_nll": float(nll.detach())}
