"""Training a codebook (`kind="vq"`): keys by k-means on cached states, then optional EMA key steps and value
training by gradient.

1. **Keys** (`key_steps`): step 1 reads the states at each bottleneck layer for `kmeans_init_tokens` tokens (one
   truncated forward per token, stopping at that layer; shallower bottlenecks run as trained) and fits every
   residual stage by chunked k-means on them (`codeunlearn.kinds.codebook.kmeans`, fp32). Steps 2.. `key_steps` are
   optional EMA updates with dead-code replacement (`vector_quantize_pytorch`) on fresh batches. No gradients.
   Data-parallel, each process reads its share of the k-means tokens and of every batch; the k-means sums and
   counts and the EMA sums are summed over the processes, so every process holds the same keys.
2. **Values** (`value_steps`, optional): the codes' output vectors are trained by gradient through the frozen
   downstream layers; the objective is `reconstruction` (FVU), `kl` (KL from the base model's next-token
   distribution to the bottlenecked model's) or `kl+reconstruction`. Batches are sharded across processes; DDP
   averages gradients. Under `fp16` the values and adapters stay fp32 and their loss is scaled
   (`codeunlearn.train.precision`).

Every logged EMA and value step records `codes_used_in_batch` (distinct codes of the step's batches) and
`dead_codes_in_window` (codes no batch used in the last `dead_feature_window` steps), per layer, over every process;
key steps also record `dead_codes`, the codes whose EMA usage fell below the dead-code threshold.

The default (`key_steps=1`, `value_steps=0`: k-means keys, values equal to the keys) is the faithful recipe of
`configs/faithful_smollm2.yaml`; EMA steps, value training and downstream adapters are measured in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import get_cosine_schedule_with_warmup

from codeunlearn import distributed
from codeunlearn.bottleneck import sharding
from codeunlearn.bottleneck.adapters import ADAPTER_PREFIX
from codeunlearn.bottleneck.base import WEIGHTS_NAME
from codeunlearn.bottleneck.config import CONFIG_NAME, BottleneckConfig
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import load_tensors
from codeunlearn.kinds.codebook.bottleneck import QuantizeOutput, flat_code_ids
from codeunlearn.train.arguments import TrainingArguments
from codeunlearn.train.base import Trainer, TrainingRun


def _fvu(
    states: Tensor, result: QuantizeOutput, mean: Tensor, reduce: Callable[[Tensor], Tensor] | None = None
) -> Tensor:
    """Fraction of variance unexplained on the ordinary tokens. `reduce` (the processes' mean) makes the
    denominator the whole step's: per-process ratios averaged by DDP would not be the ratio of the sums."""
    ordinary = ~result.passthrough
    x, y = states.float()[ordinary], result.output.float()[ordinary]
    variance = ((x - mean) ** 2).sum()
    if reduce is not None:
        variance = reduce(variance.detach())
    return ((x - y) ** 2).sum() / variance.clamp_min(1e-12)


USAGE_NAME = "codebook_usage.safetensors"  # the step at which each code was last used, in a checkpoint


class _CodeUsage:
    """Which codes the steps' batches use, for metrics.jsonl: `codes_used_in_batch` (distinct codes of the step's
    batches, every process's) and `dead_codes_in_window` (codes no batch used in the last `dead_feature_window`
    steps, or never since this tracking began).

    Each process keeps the last step at which it saw each code (-1: never) and the processes' maxima are taken when
    a record or a checkpoint is written, so two processes count what one process reading both shares counts; the
    assignments are the ones the step computes anyway. A checkpoint keeps the steps, so a resumed run logs what an
    uninterrupted one logs."""

    def __init__(self, run: TrainingRun) -> None:
        bmodel, device = run.bmodel, run.accelerator.device
        self.window = run.args.dead_feature_window
        self.num_heads, self.codebook_size = bmodel.config.num_heads, bmodel.config.codebook_size
        self.last_used = {
            layer: torch.full((bmodel.num_features(layer),), -1, dtype=torch.long, device=device)
            for layer in bmodel.layers
        }
        self.in_step = {layer: torch.zeros_like(last, dtype=torch.bool) for layer, last in self.last_used.items()}
        latest = run.latest_checkpoint() if run.resume_state is not None else None
        if latest is not None and (latest / USAGE_NAME).is_file():  # a checkpoint of an earlier version has none
            saved = load_tensors(latest / USAGE_NAME, "codebook usage")
            for layer, last in self.last_used.items():
                last.copy_(saved[str(layer)])

    def observe(self, layer: int, result: QuantizeOutput) -> None:
        """Mark the codes of a batch at `layer` (ordinary tokens only: passthrough tokens use no code)."""
        ids = flat_code_ids(result.codes, self.num_heads, self.codebook_size)[~result.passthrough]
        self.in_step[layer][ids[ids >= 0]] = True

    def end_step(self, step: int) -> None:
        """Close `step`: the codes its batches used were last used at it."""
        for layer, used in self.in_step.items():
            self.last_used[layer][used] = step
            used.zero_()

    def _everyone(self) -> dict[int, Tensor]:
        """Every process's last steps combined (a collective: every process calls it at the same step)."""
        return {layer: distributed.all_max_(last.clone()) for layer, last in self.last_used.items()}

    def record(self, step: int) -> dict[str, dict[int, int]]:
        """The usage fields of the metrics record of `step` (call after `end_step(step)`)."""
        last = self._everyone()
        return {
            "codes_used_in_batch": {layer: int((steps == step).sum()) for layer, steps in last.items()},
            "dead_codes_in_window": {
                layer: int(((steps < 0) | (step - steps >= self.window)).sum()) for layer, steps in last.items()
            },
        }

    def state(self) -> dict[str, dict[str, Tensor]]:
        """The checkpoint's extra tensors file."""
        return {USAGE_NAME: {str(layer): steps.cpu() for layer, steps in self._everyone().items()}}


def _log_keys(run: TrainingRun, step: int, record: dict) -> None:
    """Log a key step's `record`, with every layer's dead codes."""
    dead = {layer: int(run.bmodel.bottleneck(layer).dead_codes().sum()) for layer in run.bmodel.layers}
    run.log({"step": step, "phase": "keys", **record, "dead_codes": dead})


def _value_record(step: int, measured: Tensor, lr: float, effective_batch: int) -> dict[str, Any]:
    """A value step's metrics record from its (loss, kl, fvu, ce, ce_base), averaged over the step's batches."""
    loss, kl, fvu, ce, ce_base = measured.tolist()
    return {
        "step": step,
        "phase": "values",
        "loss": round(loss, 4),
        "kl": round(kl, 4),
        "fvu": round(fvu, 4),
        "ce": round(ce, 4),
        "ce_base": round(ce_base, 4),
        "ppl_ratio": round(math.exp(ce - ce_base), 4),
        "lr": lr,
        "effective_batch": effective_batch,
    }


class CodebookTrainer(Trainer):
    """Key steps (k-means fit, then EMA), then value steps."""

    def total_steps(self, args: TrainingArguments) -> int:
        return args.total_steps

    def init_from(self, bmodel: BottleneckedModel, path: Path, args: TrainingArguments) -> int:
        """Load the keys and values of the trained codebook bottleneck at `path` into `bmodel`; the run continues
        at the value phase.

        Every config field but `adapter_rank` must match: the codes would otherwise mean something else. Adapters
        saved with it are loaded too when they have the same names and shapes (same `adapter_rank`), so a run can
        continue training them; at another rank, or where it has none, the adapters start fresh."""
        # Through the config class, so fields added since that run read as their defaults; where the base model
        # was loaded from is not part of the shape.
        saved = BottleneckConfig.from_json_file(path / CONFIG_NAME).to_dict()
        ours = bmodel.config.to_dict()
        free = {"adapter_rank", "base_model"}
        differing = sorted(k for k in set(saved) | set(ours) if k not in free and saved.get(k) != ours.get(k))
        if differing:
            raise CodeunlearnError(
                f"init_from {path} has another bottleneck config ({', '.join(differing)} differ)",
                "train with the same bottleneck arguments as that run (only adapter_rank may change)",
            )
        tensors = load_tensors(path / WEIGHTS_NAME, "init_from weights")
        for layer, bottleneck in bmodel.bottlenecks.items():
            prefix = f"{layer}."
            bottleneck.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
        saved_adapters = {k[len(ADAPTER_PREFIX) :]: v for k, v in tensors.items() if k.startswith(ADAPTER_PREFIX)}
        adapters = bmodel.adapter_parameters()
        same_shapes = set(saved_adapters) == set(adapters) and all(
            saved_adapters[name].shape == param.shape for name, param in adapters.items()
        )
        if saved_adapters and same_shapes:
            with torch.no_grad():
                for name, param in adapters.items():
                    param.copy_(saved_adapters[name])
        return args.key_steps  # the keys are trained: start at the value phase

    def train(self, run: TrainingRun, step: int) -> int:
        means = {layer: run.bmodel.bottleneck(layer).mean for layer in run.bmodel.layers}
        usage = _CodeUsage(run)
        if step == 0 and step < run.end:
            step = self._fit_keys(run, usage)
        step = self._ema_steps(run, step, means, usage)
        if step < run.end:
            step = self._value_steps(run, step, means, usage)
        return step

    @staticmethod
    def _fit_keys(run: TrainingRun, usage: _CodeUsage) -> int:
        """Step 1: k-means keys of every layer, shallowest first, on the states of the first `kmeans_init_tokens`."""
        bmodel, args = run.bmodel, run.args
        init_chunks = run.init_chunks()
        fit_fvu = {}
        for layer in sorted(bmodel.layers):  # a deeper layer is fitted on what the shallower ones pass on
            states = run.states_of(layer, init_chunks)
            fit_fvu[layer] = round(bmodel.bottleneck(layer).initialize(states), 4)
            del states
        run.stream.advance(len(init_chunks))
        step = 1
        run.bar.update(1)
        fit = {"fit_fvu": round(sum(fit_fvu.values()) / len(fit_fvu), 4), "fit_fvu_by_layer": fit_fvu}
        _log_keys(run, step, {"kmeans_tokens": init_chunks.numel(), **fit})
        if step % args.checkpoint_every == 0 or step == args.key_steps:
            run.save_checkpoint(step, extra=usage.state())
        return step

    @staticmethod
    def _ema_steps(run: TrainingRun, step: int, means: dict[int, Tensor], usage: _CodeUsage) -> int:
        """Key steps 2.. `key_steps`: EMA updates with dead-code replacement on fresh batches (no gradients)."""
        bmodel, args = run.bmodel, run.args
        fvus: dict[int, float] = {}

        def observe(layer: int, states: Tensor, result: QuantizeOutput) -> None:
            fvus[layer] = float(_fvu(states, result, means[layer]))
            usage.observe(layer, result)

        wrappers = bmodel.wrappers()
        while step < min(run.end, args.key_steps):
            batch = run.take_batch()
            fvus.clear()
            for wrapper in wrappers:
                wrapper.fit_keys = True
            try:
                with torch.no_grad(), run.autocast():
                    bmodel.run_to_deepest(batch, observe)
            finally:
                for wrapper in wrappers:
                    wrapper.fit_keys = False
            step += 1
            usage.end_step(step)
            run.bar.update(1)
            if step % args.log_every == 0 or step == args.key_steps:
                fvu = {"fvu": round(sum(fvus.values()) / len(fvus), 4), "fvu_by_layer": dict(fvus)}
                _log_keys(run, step, {**fvu, **usage.record(step)})
            if step % args.checkpoint_every == 0 or step == args.key_steps:
                run.save_checkpoint(step, extra=usage.state())
        return step

    @staticmethod
    def _value_steps(run: TrainingRun, step: int, means: dict[int, Tensor], usage: _CodeUsage) -> int:
        """The value phase: output values (and adapters) by gradient on `objective`, to `run.end`."""
        bmodel, args, accelerator = run.bmodel, run.args, run.accelerator
        params = bmodel.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        values = [p for bn in bmodel.bottlenecks.values() for p in bn.trainable_parameters()]
        groups = [{"params": values, "lr": args.learning_rate}]
        if bmodel.adapter_parameters():
            groups.append({"params": list(bmodel.adapter_parameters().values()), "lr": args.adapter_learning_rate})
        optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, max(args.value_steps, 1))
        run.resume_optimizer(optimizer, scheduler)
        scaler = run.loss_scaler()
        # The scheduler is not handed to accelerate, whose wrapper steps it once per process: the schedule counts
        # optimizer steps.
        model, optimizer = run.prepare(optimizer, bmodel)
        sharded = sharding.is_sharded(bmodel)
        recorded: dict[int, tuple[Tensor, QuantizeOutput]] = {}

        def reduce(value: Tensor) -> Tensor:
            return accelerator.reduce(value, "mean")

        def record(layer: int, states: Tensor, result: QuantizeOutput) -> None:
            recorded[layer] = (states, result)
            usage.observe(layer, result)

        def micro_step(batch: Tensor, scale: float) -> Tensor:
            """Forward and backward of one batch (the loss scaled by `scale`); returns its detached
            (loss, kl, fvu, ce, ce_base)."""
            recorded.clear()
            with torch.no_grad(), bmodel.disabled(), run.autocast():
                base_logits = bmodel.model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            with bmodel.observing(record), run.autocast():
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            base_logp = F.log_softmax(base_logits, -1)
            logp = F.log_softmax(logits, -1)
            kl = F.kl_div(logp, base_logp, log_target=True, reduction="none").sum(-1).mean()
            fvu = torch.stack([_fvu(s, r, means[layer], reduce) for layer, (s, r) in recorded.items()]).mean()
            if args.objective == "kl":
                loss = kl
            elif args.objective == "reconstruction":
                loss = fvu
            else:
                loss = kl + args.reconstruction_weight * fvu
            accelerator.backward(scaler.scale(loss * scale))
            with torch.no_grad():
                targets = batch[:, 1:]
                ce = F.cross_entropy(logits.transpose(1, 2), targets)
                ce_base = F.cross_entropy(base_logits.transpose(1, 2), targets)
            return torch.stack([loss, kl, fvu, ce, ce_base]).detach()

        accumulation = args.gradient_accumulation_steps
        while step < run.end:
            measured = torch.zeros(5, device=accelerator.device)
            for micro in range(accumulation):
                # DDP reduces the gradients once, on the step's last batch
                sync = contextlib.nullcontext() if micro == accumulation - 1 else accelerator.no_sync(model)
                with sync:
                    measured += micro_step(run.take_batch(), 1 / accumulation)
            if sharded:  # (scaled gradients: an overflow on any process reaches every process)
                sharding.average_gradients(params)
            scaler.step(optimizer, scheduler)  # skipped where an fp16 gradient overflowed
            optimizer.zero_grad(set_to_none=True)
            step += 1
            usage.end_step(step)
            run.bar.update(1)
            if step % args.log_every == 0 or step == run.total:
                # the whole step's batches, not this process's share of them
                measured = accelerator.reduce(measured / accumulation, "mean")
                batch = args.batch_size * run.world_size * accumulation
                logged = _value_record(step, measured, scheduler.get_last_lr()[0], batch)
                run.log(logged | usage.record(step) | scaler.record())
            if step % args.checkpoint_every == 0 or step == run.total:
                run.save_checkpoint(step, optimizer, scheduler, usage.state(), scaler)
        for p in params:
            p.requires_grad_(False)
        return step
