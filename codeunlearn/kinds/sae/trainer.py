"""Training an SAE (`kind="sae"`): one gradient phase (`sae_steps`) on the base model's states at its layers,
read by truncated forwards (no later layer).

sae-lens's own training forward pass (MSE + L1 on decoder-norm-weighted activations for `relu`, MSE + aux-k on
dead features for `topk`), Adam, gradient clipping at 1 as sae-lens does. Under `fp16` only the base model's
forwards are autocast: the SAE's own forward stays fp32, and its loss is scaled all the same
(`codeunlearn.train.precision`), so an update with an inf or nan gradient is skipped. The first `kmeans_init_tokens` tokens
set b_dec to the data mean and the input scale (average norm -> sqrt(d_in)); the scale is folded into the weights
when training ends. Logged: L0, FVU, features dead for `dead_feature_window` updates. Batches are sharded across
processes and gradients averaged. Since the forward is the expensive part, `sae_updates_per_batch` > 1 makes
several optimizer updates per forward batch, each on a share of its tokens.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformers import get_cosine_schedule_with_warmup

from codeunlearn.bottleneck.base import WEIGHTS_NAME
from codeunlearn.bottleneck.config import CONFIG_NAME
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_save_tensors, atomic_write_text, load_tensors
from codeunlearn.kinds.sae.bottleneck import SAEBottleneck
from codeunlearn.train.arguments import TrainingArguments
from codeunlearn.train.base import Trainer, TrainingRun

SAE_STATE_NAME = "sae_trainer_state.safetensors"  # steps since each SAE feature last fired


def _sae_batch_metrics(out, fired: Tensor) -> dict[str, float]:
    """L0 (features active per token) and FVU of one SAE training batch."""
    x, y = out.sae_in.float(), out.sae_out.float()
    fvu = ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12)
    return {"l0": float(fired.sum(-1).float().mean()), "fvu": float(fvu)}


class SAETrainer(Trainer):
    """One gradient phase of `sae_steps`; checkpoints hold the exact training state."""

    def total_steps(self, args: TrainingArguments) -> int:
        return args.sae_steps

    def save_bottleneck(self, bmodel: BottleneckedModel, path: Path) -> None:
        # The exact training state: a saved SAE is the inference form, with weights folded and re-normalised.
        atomic_write_text(path / CONFIG_NAME, bmodel.config.to_json_string())
        atomic_save_tensors(bmodel.bottleneck_state(), path / WEIGHTS_NAME)

    def finish(self, bmodel: BottleneckedModel) -> None:
        for layer in bmodel.layers:
            bmodel.bottleneck(layer).finish_training()  # what the saved directory holds, bit for bit

    def train(self, run: TrainingRun, step: int) -> int:
        """From `step` to `run.end`; returns the step reached.

        One step = one truncated forward of `batch_size` chunks and `sae_updates_per_batch` optimizer updates, each
        on a disjoint share of its tokens (the forward is what costs; the updates are cheap)."""
        bmodel, args = run.bmodel, run.args
        bottlenecks = {layer: bmodel.bottleneck(layer) for layer in bmodel.layers}
        for layer, bottleneck in bottlenecks.items():
            if not bottleneck.trainable:
                raise CodeunlearnError(
                    f"the SAE at layer {layer} was loaded for inference, not attached for training",
                    "attach a fresh SAE (BottleneckedModel.attach with kind sae) to train it",
                )
        if args.gradient_accumulation_steps != 1:
            raise CodeunlearnError(
                "gradient_accumulation_steps is for codebook value steps",
                "drop --gradient_accumulation_steps for an SAE run (one SAE step is one batch: lower --batch_size "
                "to fit memory)",
            )
        updates = args.sae_updates_per_batch
        since_fired = {
            layer: torch.zeros(bottleneck.num_features, dtype=torch.long) for layer, bottleneck in bottlenecks.items()
        }
        if run.resume_state is not None and step > 0:
            saved = load_tensors(run.latest_checkpoint() / SAE_STATE_NAME, "SAE trainer state")
            since_fired = {layer: saved[str(layer)] for layer in bottlenecks}
        if not all(bool(b.initialized) for b in bottlenecks.values()):
            # Each process reads its share of the first chunks; the means are over all of them.
            init_chunks = run.init_chunks()
            for layer, bottleneck in bottlenecks.items():
                bottleneck.initialize(run.states_of(layer, init_chunks))
        optimizer = _Optimizer(run, bottlenecks, since_fired)
        states: dict[int, Tensor] = {}

        def record(layer: int, layer_states: Tensor, result: None) -> None:
            states[layer] = layer_states

        try:
            while step < run.end:
                batch = run.take_batch()
                states.clear()
                with torch.no_grad(), run.autocast():
                    bmodel.run_to_deepest(batch, record, states_only=True)
                ordinary = {
                    layer: states[layer][~bottleneck.passthrough_mask(states[layer], None)].float()
                    for layer, bottleneck in bottlenecks.items()
                }
                for share in range(updates):  # strided shares: every update sees tokens from every chunk
                    loss, parts, by_layer = optimizer.update(
                        {layer: x[share::updates] for layer, x in ordinary.items()}, step
                    )
                step += 1
                run.bar.update(1)
                if step % args.log_every == 0 or step == run.total:
                    run.log(optimizer.record(step, loss, parts, by_layer))
                if step % args.checkpoint_every == 0 or step == run.total:
                    extra = {SAE_STATE_NAME: {str(layer): counts for layer, counts in since_fired.items()}}
                    run.save_checkpoint(step, optimizer.optimizer, optimizer.scheduler, extra, optimizer.scaler)
        finally:
            optimizer.close()
        return step


class _Optimizer:
    """The gradient side of an SAE run: Adam with a cosine schedule over every layer's SAE, and how many updates
    ago each feature last fired (the aux-k loss revives features dead for `dead_feature_window` updates)."""

    def __init__(self, run: TrainingRun, bottlenecks: dict[int, SAEBottleneck], since_fired: dict[int, Tensor]) -> None:
        args, updates = run.args, run.args.sae_updates_per_batch
        self.run, self.bottlenecks, self.since_fired = run, bottlenecks, since_fired
        self.params = run.bmodel.trainable_parameters()
        for p in self.params:
            p.requires_grad_(True)
        optimizer = torch.optim.Adam(self.params, lr=args.sae_learning_rate, betas=(0.9, 0.999))
        scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps * updates, max(run.total * updates, 1))
        run.resume_optimizer(optimizer, scheduler)
        self.scaler = run.loss_scaler()
        # The scheduler stays ours: accelerate's wrapper would step it once per process.
        self.optimizer, self.scheduler = run.prepare(optimizer)[1], scheduler

    def close(self) -> None:
        for p in self.params:
            p.requires_grad_(False)

    def dead(self, layer: int) -> Tensor:
        return self.since_fired[layer] > self.run.args.dead_feature_window

    def update(
        self, ordinary: dict[int, Tensor], step: int
    ) -> tuple[float, dict[str, float], dict[int, dict[str, float]]]:
        """One optimizer update on the given ordinary-token states of every layer: (loss, its parts, per-layer
        L0 and FVU)."""
        accelerator = self.run.accelerator
        loss = torch.zeros((), device=accelerator.device)
        parts: dict[str, float] = {}
        by_layer: dict[int, dict[str, float]] = {}
        for layer, bottleneck in self.bottlenecks.items():
            out = bottleneck.training_step(ordinary[layer], self.dead(layer).to(accelerator.device), step)
            loss = loss + out.loss
            with torch.no_grad():
                fired = out.feature_acts > 0
                did_fire = accelerator.reduce(fired.any(0).long(), reduction="sum").cpu() > 0
                self.since_fired[layer] += 1
                self.since_fired[layer][did_fire] = 0
                by_layer[layer] = _sae_batch_metrics(out, fired)
                for name, value in out.losses.items():
                    parts[name] = parts.get(name, 0.0) + float(value)
        accelerator.backward(self.scaler.scale(loss))
        if accelerator.num_processes > 1:
            for p in self.params:
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
        self.scaler.unscale_(self.optimizer)  # the clipping reads the true gradient norm
        accelerator.clip_grad_norm_(self.params, 1.0)  # as sae-lens's trainer does
        self.scaler.step(self.optimizer, self.scheduler)
        self.optimizer.zero_grad(set_to_none=True)
        return loss.item(), parts, by_layer

    def record(
        self, step: int, loss: float, parts: dict[str, float], by_layer: dict[int, dict[str, float]]
    ) -> dict[str, Any]:
        """The metrics record of `step`, from its last update."""
        return {
            "step": step,
            "phase": "sae",
            "loss": round(loss, 4),
            **{name: round(value, 4) for name, value in parts.items()},
            "fvu": round(sum(m["fvu"] for m in by_layer.values()) / len(by_layer), 4),
            "l0": round(sum(m["l0"] for m in by_layer.values()) / len(by_layer), 2),
            "fvu_by_layer": {layer: round(m["fvu"], 4) for layer, m in by_layer.items()},
            "l0_by_layer": {layer: round(m["l0"], 2) for layer, m in by_layer.items()},
            "dead_features": {layer: int(self.dead(layer).sum()) for layer in self.bottlenecks},
            "lr": self.scheduler.get_last_lr()[0],
            **self.scaler.record(),
        }
