"""What every gradient unlearning baseline shares: the optimiser settings of its paper and the method interface.

A method is one module holding a config dataclass (a subclass of `MethodConfig`, whose defaults are that paper's
hyperparameters scaled to SmolLM2-135M) and an `UnlearningMethod` subclass that turns a forget batch and a retain
batch into a loss. The loop that runs it (`codeunlearn.baselines.trainer.train_baseline`) is shared.

Learning rates are scaled from the papers' 7B models (hidden size 4096) to SmolLM2-135M (hidden size 576) by the
muP rule for Adam on hidden matrices, lr ∝ 1/width: a factor 4096 / 576 ≈ 7.1 (`WIDTH_SCALE`).
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

import torch.nn.functional as F
from torch import Tensor, nn

from codeunlearn.errors import CodeunlearnError, check_range

SCHEDULERS = ("linear", "cosine", "constant")
PAPER_HIDDEN_SIZE = 4096  # Llama-2-7B (TOFU, NPO) and Zephyr-7B / Mistral-7B (RMU)
TARGET_HIDDEN_SIZE = 576  # SmolLM2-135M
WIDTH_SCALE = PAPER_HIDDEN_SIZE / TARGET_HIDDEN_SIZE


@dataclass
class MethodConfig:
    """Optimiser settings every method has; each method's subclass sets its paper's values as defaults.

    The defaults here are TOFU's forgetting recipe (Maini et al. 2024), under which its GA and GradDiff baselines run
    and on which NPO's TOFU experiments build: AdamW, lr 1e-5 on Llama-2-7B (scaled: 7e-5), weight decay 0.01, linear
    warm-up over the first of five epochs (ratio 0.2) then linear decay, gradient clipping at 1.0 (the
    `transformers.Trainer` default), an effective batch of 32 question-answer pairs (here 8 chunks of 256 tokens, a
    similar token count). As in `transformers`, the warm-up starts at lr 0, so a one-step warm-up wastes a step.
    """

    learning_rate: float = field(default=7e-5, metadata={"help": "AdamW peak learning rate."})
    weight_decay: float = field(
        default=0.01, metadata={"help": "AdamW weight decay (matrices only; biases and norm weights get none)."}
    )
    warmup_ratio: float = field(default=0.2, metadata={"help": "Fraction of max_steps spent in linear warm-up."})
    lr_scheduler: Literal[SCHEDULERS] = field(default="linear", metadata={"help": "Decay after the warm-up."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Clip the gradient norm to this (0 = no clipping)."})
    max_steps: int = field(default=60, metadata={"help": "Optimizer steps."})
    batch_size: int = field(
        default=8, metadata={"help": "Chunks per micro-batch and process, from each corpus the method reads."}
    )

    def __post_init__(self) -> None:
        # nan fails every comparison below; inf passes `> 0`, so the rates and weights also ask for finite values
        # (an infinite learning rate or decay turns the first step into nan weights).
        check_range(
            "learning_rate", self.learning_rate, math.isfinite(self.learning_rate) and self.learning_rate > 0, "> 0"
        )
        check_range(
            "weight_decay", self.weight_decay, math.isfinite(self.weight_decay) and self.weight_decay >= 0, ">= 0"
        )
        check_range("warmup_ratio", self.warmup_ratio, 0 <= self.warmup_ratio < 1, "in [0, 1)")
        if self.lr_scheduler not in SCHEDULERS:
            raise CodeunlearnError(f"unknown lr_scheduler {self.lr_scheduler!r}", f"use one of {SCHEDULERS}")
        check_range(
            "max_grad_norm",
            self.max_grad_norm,
            math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
            ">= 0 (0 = no clipping)",
        )
        check_range("max_steps", self.max_steps, self.max_steps >= 1, ">= 1")
        check_range("batch_size", self.batch_size, self.batch_size >= 1, ">= 1")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @property
    def warmup_steps(self) -> int:
        return round(self.warmup_ratio * self.max_steps)


class UnlearningMethod(ABC):
    """One unlearning objective. Subclasses set `name` and `config_class` and implement `loss`."""

    name: ClassVar[str]
    config_class: ClassVar[type[MethodConfig]]

    def __init__(self, config: MethodConfig | None = None) -> None:
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise CodeunlearnError(
                f"{self.name} needs a {self.config_class.__name__}, got {type(config).__name__}",
                f"pass {self.config_class.__name__}(...)",
            )
        self.config = config

    @property
    def needs_forget(self) -> bool:
        """Whether the loss reads forget batches (False only for degenerate weightings)."""
        return True

    @property
    def needs_retain(self) -> bool:
        """Whether the loss reads retain batches."""
        return False

    def trainable_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The parameters the method updates (full fine-tuning unless a method says otherwise)."""
        return dict(model.named_parameters())

    def prepare(self, model: nn.Module, forget: Tensor, retain: Tensor | None) -> dict[str, Any]:
        """Called once on the starting weights, before any step (and before a resumed checkpoint is loaded):
        build references, resolve scaled hyperparameters. Returns the resolved values to record."""
        return {}

    @abstractmethod
    def loss(self, model: nn.Module, forget: Tensor | None, retain: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        """The loss to minimise on one micro-batch, and its parts as floats for logging."""

    def release(self) -> None:
        """Drop what `prepare` built (reference models), once training has ended."""
        return None


def sequence_logprob(model: nn.Module, chunks: Tensor) -> Tensor:
    """Summed log-probability of every chunk's tokens 1..T-1 given the tokens before them, shape (batch,)."""
    logits = model(input_ids=chunks, use_cache=False).logits[:, :-1].float()
    return -F.cross_entropy(logits.transpose(1, 2), chunks[:, 1:], reduction="none").sum(-1)
