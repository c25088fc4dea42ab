"""The relearning attack: fine-tune an unlearned model on a little forget text and watch the forget loss come back.

    curve = relearn(model, relearn_chunks, heldout_forget_chunks, RelearnConfig(steps=50, eval_steps=[0, 10, 50]))

`model` is any causal LM, including a `codeunlearn.bottleneck.model.BottleneckedModel` (edited or not). The attacker
trains either all base weights (`mode="full"`) or fresh LoRA adapters (`mode="lora"`, via `peft`) on the decoder
layers' linear modules, with next-token loss on `relearn_chunks`, and the held-out forget loss
(`codeunlearn.evaluate.evaluation.mean_loss`) is measured at each step count of `eval_steps` (optionally the retain loss too).
For a bottlenecked model the bottleneck itself is never trained: its codebook, its own downstream adapters and its
edit masks stay as they were, so the curve measures what an attacker recovers *around* the edit. Gradients still
reach the layers before a bottleneck through its straight-through path.

The relearning text must be disjoint from the evaluation text (different documents of the forget corpus: take it
from the train split); chunks that appear in both are refused. The model is copied first unless `in_place=True`.
The model stays in eval mode while it is fine-tuned (dropout off), so curves are deterministic for a seed.

Defaults: a 7B-model fine-tuning learning rate of 1e-5 scaled to SmolLM2-135M's width like the baselines (x 4096/576:
7e-5) for full weights; 10x that for LoRA adapters (rank 8, alpha 16), whose updates start from zero; constant
rate, AdamW without weight decay, clipping at 1.0, batches of 4 chunks.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers.pytorch_utils import Conv1D

from codeunlearn.bottleneck.architectures import decoder_layers, decoder_layers_path
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.evaluation import mean_loss, next_token_nll
from codeunlearn.runtime import autocast, run_arguments
from codeunlearn.tables import markdown_table
from codeunlearn.train.stream import ChunkStream

RELEARN_ADAPTER = "relearn"
MODES = ("full", "lora")


@dataclass
class RelearnConfig(run_arguments("progress", "bf16")):
    """How the attacker fine-tunes, and when the forget loss is measured; bf16 is off unless asked."""

    steps: int = field(default=50, metadata={"help": "Fine-tuning steps on the relearning text."})
    eval_steps: list[int] = field(
        default_factory=lambda: [0, 5, 10, 25, 50],
        metadata={"help": "Step counts at which held-out losses are measured (0 = before any step)."},
    )
    mode: Literal["full", "lora"] = field(default="full", metadata={"help": "Train all base weights or LoRA adapters."})
    learning_rate: float = field(default=7e-5, metadata={"help": "AdamW learning rate in full mode (constant)."})
    lora_learning_rate: float = field(default=7e-4, metadata={"help": "AdamW learning rate in lora mode (constant)."})
    lora_rank: int = field(default=8, metadata={"help": "Rank of the LoRA adapters."})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling alpha."})
    batch_size: int = field(default=4, metadata={"help": "Relearning chunks per step."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping (0 = none)."})
    seed: int = field(default=0, metadata={"help": "Seeds the order of relearning chunks."})
    eval_batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass when measuring."})
    skip_positions: int = field(default=0, metadata={"help": "Ignore the first N targets of every chunk."})

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CodeunlearnError(f"unknown relearning mode {self.mode!r}", f"use one of {MODES}")
        for name in ("steps", "lora_rank", "batch_size", "eval_batch_size"):
            check_range(name, getattr(self, name), getattr(self, name) >= 1, ">= 1")
        # inf passes `> 0` but turns the first step into nan weights: rates and scales must be finite too
        for name in ("learning_rate", "lora_learning_rate", "lora_alpha"):
            value = getattr(self, name)
            check_range(name, value, math.isfinite(value) and value > 0, "> 0")
        check_range(
            "max_grad_norm",
            self.max_grad_norm,
            math.isfinite(self.max_grad_norm) and self.max_grad_norm >= 0,
            ">= 0 (0 = no clipping)",
        )
        check_range("skip_positions", self.skip_positions, self.skip_positions >= 0, ">= 0")
        if not self.eval_steps:
            raise CodeunlearnError("no eval_steps given", "pass --eval_steps 0 10 ...")
        bad = [s for s in self.eval_steps if not 0 <= s <= self.steps]
        if bad:
            raise CodeunlearnError(
                f"eval_steps {bad} outside [0, steps={self.steps}]",
                f"pass --eval_steps with counts in [0, {self.steps}]",
            )
        self.eval_steps = sorted(set(self.eval_steps))


@dataclass
class RelearnCurve:
    """Held-out losses against relearning steps."""

    mode: str
    steps: list[int]
    forget_loss: list[float]
    retain_loss: list[float] | None
    train_seconds: float  # fine-tuning only, measurements excluded
    trainable_parameters: int
    relearn_tokens: int  # tokens fine-tuned on (steps x batch x seq_len; chunks repeat once the slice is used up)
    slice_tokens: int  # size of the relearning slice
    config: dict[str, Any]
    probe_scores: list[dict[str, float]] | None = None  # `probe(model)` at each measured step, when one was given

    @property
    def recovery(self) -> list[float]:
        """Forget-loss drop since step 0 at each measured step (positive = knowledge coming back)."""
        return [self.forget_loss[0] - loss for loss in self.forget_loss]

    def to_dict(self) -> dict[str, Any]:
        return {**dataclasses.asdict(self), "recovery": self.recovery}

    def markdown(self) -> str:
        retain = ["-"] * len(self.steps) if self.retain_loss is None else [f"{loss:.4f}" for loss in self.retain_loss]
        return markdown_table(
            ["step", "forget loss", "recovered", "retain loss"],
            (
                [step, f"{self.forget_loss[i]:.4f}", f"{self.recovery[i]:+.4f}", retain[i]]
                for i, step in enumerate(self.steps)
            ),
            align="rrrr",
        )


def check_disjoint(train: Tensor, heldout: Tensor) -> None:
    """Refuse relearning text that shares a chunk with the evaluation text."""
    seen = {tuple(row) for row in train.tolist()}
    shared = sum(tuple(row) in seen for row in heldout.tolist())
    if shared:
        raise CodeunlearnError(
            f"{shared} evaluation chunk(s) also occur in the relearning text",
            "relearn on the forget corpus's train split and evaluate on its held-out split",
        )


def _inner(model: nn.Module) -> nn.Module:
    return model.model if isinstance(model, BottleneckedModel) else model


def _protected(model: nn.Module) -> set[int]:
    """Ids of parameters the attacker must not touch: a bottleneck's own tensors and its downstream adapters."""
    if isinstance(model, BottleneckedModel):
        ids = {id(p) for p in model.bottlenecks.parameters()}
        return ids | {id(p) for p in model.adapter_parameters().values()}
    exported = [getattr(model, name, None) for name in ("bottlenecks", "adapters")]  # `codeunlearn export` output
    return {id(p) for module in exported if isinstance(module, nn.Module) for p in module.parameters()}


def lora_targets(model: nn.Module, protected_modules: set[int]) -> list[str]:
    """Names of the linear modules inside decoder layers (a module already wrapped by peft counts once; modules
    inside a bottleneck are skipped)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    path = decoder_layers_path(model)
    names: list[str] = []
    for index, layer in enumerate(decoder_layers(model)):
        inside: set[int] = set()
        for name, module in layer.named_modules():
            if id(module) in inside or id(module) in protected_modules:
                inside.update(id(m) for m in module.modules())
                continue
            if isinstance(module, BaseTunerLayer):
                names.append(f"{path}.{index}.{name}")
                inside.update(id(m) for m in module.modules())
            elif isinstance(module, (nn.Linear, Conv1D)):
                names.append(f"{path}.{index}.{name}")
    return names


def _add_lora(model: nn.Module, config: RelearnConfig) -> dict[str, nn.Parameter]:
    """Inject a `relearn` LoRA adapter next to any existing ones (which stay active and frozen)."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.tuners.tuners_utils import BaseTunerLayer

    inner = _inner(model)
    bottlenecks = getattr(model, "bottlenecks", None)  # BottleneckedModel or an exported model
    protected = {id(m) for m in bottlenecks.modules()} if isinstance(bottlenecks, nn.Module) else set()
    before = {id(m): list(m.active_adapters) for m in inner.modules() if isinstance(m, BaseTunerLayer)}
    lora = LoraConfig(
        r=config.lora_rank,
        lora_alpha=config.lora_alpha,
        lora_dropout=0.0,
        target_modules=lora_targets(inner, protected),
        bias="none",
    )
    with warnings.catch_warnings():  # peft warns that a second adapter joins the bottleneck's: intended here
        warnings.filterwarnings("ignore", message="Already found a `peft_config`", category=UserWarning)
        inject_adapter_in_model(lora, inner, adapter_name=RELEARN_ADAPTER)
    for module in inner.modules():
        if isinstance(module, BaseTunerLayer) and RELEARN_ADAPTER in module.lora_A:
            module.set_adapter([*before.get(id(module), []), RELEARN_ADAPTER])  # keep the bottleneck's adapters on
    return {n: p for n, p in inner.named_parameters() if f".{RELEARN_ADAPTER}." in f".{n}."}


def trainable_for_relearning(model: nn.Module, config: RelearnConfig) -> dict[str, nn.Parameter]:
    """Mark and return what the attacker trains (after adding LoRA adapters in lora mode)."""
    if config.mode == "lora":
        params = _add_lora(model, config)
    else:
        protected = _protected(model)
        params = {n: p for n, p in _inner(model).named_parameters() if id(p) not in protected}
    model.requires_grad_(False)
    for param in params.values():
        param.requires_grad_(True)
    if not params:
        raise CodeunlearnError(f"no parameter to relearn in {config.mode} mode", "check the model and --mode")
    return params


def relearn(
    model: nn.Module,
    relearn_chunks: Tensor,
    eval_chunks: Tensor,
    config: RelearnConfig,
    retain_chunks: Tensor | None = None,
    in_place: bool = False,
    accelerator: Accelerator | None = None,
    probe: Callable[[nn.Module], dict[str, float]] | None = None,
) -> RelearnCurve:
    """Fine-tune `model` (a copy unless `in_place`) on `relearn_chunks`; held-out forget loss on `eval_chunks` (and
    retain loss on `retain_chunks`, and the scores `probe` returns for the model being fine-tuned, e.g. held-out
    fact accuracy) at every step count of `config.eval_steps`."""
    for name, chunks in (("relearning", relearn_chunks), ("evaluation", eval_chunks)):
        if chunks.ndim != 2 or len(chunks) == 0:
            raise CodeunlearnError(f"the {name} text gave no chunks", "pass more text or a smaller --seq_len")
    check_disjoint(relearn_chunks, eval_chunks)
    accelerator = accelerator or Accelerator()
    work = model if in_place else copy.deepcopy(model)
    work.to(accelerator.device)
    work.eval()  # dropout off; bottleneck modules never see training mode
    params = trainable_for_relearning(work, config)
    lr = config.lora_learning_rate if config.mode == "lora" else config.learning_rate
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, weight_decay=0.0)
    stream = ChunkStream(relearn_chunks, config.seed)
    steps: list[int] = []
    forget: list[float] = []
    retain: list[float] | None = None if retain_chunks is None else []
    probed: list[dict[str, float]] | None = None if probe is None else []

    def measure(step: int) -> None:
        steps.append(step)
        forget.append(mean_loss(work, eval_chunks, config.eval_batch_size, config.skip_positions, bf16=config.bf16))
        if retain is not None:
            retain.append(
                mean_loss(work, retain_chunks, config.eval_batch_size, config.skip_positions, bf16=config.bf16)
            )
        if probed is not None:
            probed.append(probe(work))

    if 0 in config.eval_steps:
        measure(0)
    seconds = 0.0
    for step in tqdm(range(1, config.steps + 1), desc=f"relearn ({config.mode})", disable=not config.progress):
        started = time.perf_counter()
        batch = stream.take(config.batch_size).to(accelerator.device)
        stream.advance(config.batch_size)
        with autocast(accelerator.device, config.bf16):
            loss = next_token_nll(work, batch)
        accelerator.backward(loss)
        if config.max_grad_norm > 0:
            torch.nn.utils.clip_grad_norm_(list(params.values()), config.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - started
        if step in config.eval_steps:
            measure(step)
    work.requires_grad_(False)
    return RelearnCurve(
        mode=config.mode,
        steps=steps,
        forget_loss=forget,
        retain_loss=retain,
        train_seconds=round(seconds, 3),
        trainable_parameters=sum(p.numel() for p in params.values()),
        relearn_tokens=config.steps * config.batch_size * relearn_chunks.shape[1],
        slice_tokens=relearn_chunks.numel(),
        config=dataclasses.asdict(config),
        probe_scores=probed,
    )
