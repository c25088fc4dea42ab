"""`TrainingArguments`: how to train a bottleneck (its shape is the bottleneck config); one dataclass for every
kind, each kind's trainer reading its own fields (`sae_*` for an SAE)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from accelerate.utils import parse_choice_from_env

from codeunlearn.bottleneck.base import WEIGHTS_NAME
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.runtime import check_precision, run_arguments

OBJECTIVES = ("reconstruction", "kl", "kl+reconstruction")


def check_no_accelerate_precision(mixed_precision: str) -> None:
    """Refuse accelerate's own mixed precision (`accelerate launch --mixed_precision`, a config file's
    `mixed_precision`): it would autocast the bottleneck's training math too and, in fp16, scale the loss a second
    time. Training's precision is `--bf16` / `--fp16`, checked before anything is written."""
    if mixed_precision != "no":
        raise CodeunlearnError(
            f"accelerate was launched with mixed_precision {mixed_precision}",
            "launch with mixed_precision 'no' (as configs/accelerate/*.yaml do) and pass --bf16 or --fp16 to the "
            "command",
        )


@dataclass
class TrainingArguments(
    run_arguments(
        "output_dir",
        "overwrite",
        "progress",
        "bf16",
        "fp16",
        writes="checkpoints, metrics.jsonl and the final bottleneck",
    )
):
    """How to train a bottleneck (the bottleneck's shape is `BottleneckConfig`); bf16, fp16 and compile are off
    unless asked."""

    objective: Literal["reconstruction", "kl", "kl+reconstruction"] = field(
        default="kl+reconstruction", metadata={"help": "Loss for the value phase."}
    )
    key_steps: int = field(
        default=1,
        metadata={
            "help": "Key steps: the first fits the keys by k-means on kmeans_init_tokens cached states; "
            "each further one is an EMA update on a fresh batch."
        },
    )
    value_steps: int = field(
        default=0, metadata={"help": "Gradient steps on the output values (0: values stay the k-means centroids)."}
    )
    batch_size: int = field(default=8, metadata={"help": "Chunks per step and process."})
    gradient_accumulation_steps: int = field(
        default=1,
        metadata={
            "help": "Codebook value steps: batches of batch_size per optimizer step and process (a step reads "
            "batch_size x processes x this chunks)."
        },
    )
    kmeans_init_tokens: int = field(
        default=65536,
        metadata={
            "help": "Tokens whose states initialise the bottleneck (codebook: the k-means fit, 16 per code of the "
            "default 4,096-code heads; SAE: b_dec, input scale, typical norm)."
        },
    )
    learning_rate: float = field(default=1e-2, metadata={"help": "AdamW learning rate of the codebook values."})
    adapter_learning_rate: float = field(default=1e-3, metadata={"help": "AdamW learning rate of downstream adapters."})
    warmup_steps: int = field(default=10, metadata={"help": "Linear warm-up before the cosine decay."})
    reconstruction_weight: float = field(default=1.0, metadata={"help": "Weight of FVU in kl+reconstruction."})
    sae_steps: int = field(
        default=1000, metadata={"help": "Steps of an SAE bottleneck (kind sae): one truncated forward batch each."}
    )
    sae_learning_rate: float = field(default=5e-4, metadata={"help": "Adam learning rate of SAE weights."})
    sae_updates_per_batch: int = field(
        default=1,
        metadata={"help": "SAE: optimizer updates per forward batch, each on a share of its tokens (forwards cost)."},
    )
    dead_feature_window: int = field(
        default=200,
        metadata={
            "help": "SAE: optimizer updates without firing after which a feature counts as dead (aux-k loss); "
            "codebook: steps without use after which metrics.jsonl counts a code dead (dead_codes_in_window)."
        },
    )
    checkpoint_every: int = field(default=100, metadata={"help": "Save a resumable checkpoint every N steps."})
    keep_checkpoints: int = field(default=2, metadata={"help": "Older checkpoints are deleted."})
    log_every: int = field(default=10, metadata={"help": "Write metrics every N steps."})
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in output_dir."})
    init_from: str | None = field(
        default=None,
        metadata={
            "help": "A trained codebook bottleneck directory whose keys and values start this run; the key phase is "
            "skipped (e.g. to add downstream adapters, --adapter_rank, to a finished bottleneck)."
        },
    )
    stop_after_steps: int | None = field(
        default=None, metadata={"help": "End this run after this global step (for staged runs)."}
    )
    seed: int = field(default=0, metadata={"help": "Seeds data order and RNG."})
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile each decoder layer of the frozen model for this run (the bottlenecks stay eager): "
            "faster forwards on a GPU after a compile of a minute or so; results equal the eager run's to float "
            "rounding."
        },
    )

    def __post_init__(self) -> None:
        check_precision(self.bf16, self.fp16)
        check_no_accelerate_precision(parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no"))
        if self.objective not in OBJECTIVES:
            raise CodeunlearnError(f"unknown objective {self.objective!r}", f"use one of {OBJECTIVES}")
        # Every numeric argument in its range before anything slow: a 0 or negative value used to run and fail late
        # (a division by zero at the first log) or silently do nothing (no checkpoint, no metrics).
        at_least = {
            "key_steps": 1,  # the keys need at least the k-means initialisation step
            "value_steps": 0,
            "batch_size": 1,
            "gradient_accumulation_steps": 1,
            "kmeans_init_tokens": 1,
            "warmup_steps": 0,
            "sae_steps": 1,
            "sae_updates_per_batch": 1,
            "dead_feature_window": 1,
            "checkpoint_every": 1,
            "keep_checkpoints": 1,  # 0 would delete the checkpoint a later --resume needs
            "log_every": 1,
        }
        for name, low in at_least.items():
            check_range(name, getattr(self, name), getattr(self, name) >= low, f">= {low}")
        # learning_rate 0 is allowed: a value phase that keeps the k-means values fixed (the tests log with it).
        # Finite too: inf passes `>= 0` and turns the first step's weights into nan.
        rate = self.learning_rate
        check_range("learning_rate", rate, 0 <= rate < math.inf, ">= 0 and finite (e.g. 1e-2)")
        for name in ("adapter_learning_rate", "sae_learning_rate"):
            check_range(name, getattr(self, name), 0 < getattr(self, name) < math.inf, "> 0 and finite (e.g. 1e-3)")
        weight = self.reconstruction_weight
        check_range("reconstruction_weight", weight, 0 <= weight < math.inf, ">= 0 and finite")
        if self.stop_after_steps is not None:
            check_range("stop_after_steps", self.stop_after_steps, self.stop_after_steps >= 1, ">= 1, or leave it out")
        if self.init_from is not None and not Path(self.init_from, WEIGHTS_NAME).is_file():
            raise CodeunlearnError(
                f"init_from {self.init_from} holds no {WEIGHTS_NAME}",
                "pass the `bottleneck` directory a finished `codeunlearn train` run wrote",
            )

    @property
    def total_steps(self) -> int:
        """Steps of a codebook run (key + value steps)."""
        return self.key_steps + self.value_steps
