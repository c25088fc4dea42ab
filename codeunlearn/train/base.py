"""`Trainer`, what each bottleneck kind implements to be trained, and `TrainingRun`, what the shared loop
(`codeunlearn.train.loop`) hands it: the model, data, arguments and step bounds, and the loop's services."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn

from codeunlearn import distributed
from codeunlearn.bottleneck import sharding
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_directory, atomic_save_tensors, atomic_write_text
from codeunlearn.runtime import mixed_precision
from codeunlearn.train.arguments import TrainingArguments
from codeunlearn.train.checkpoints import OPTIMIZER_NAME, RNG_NAME, STATE_NAME, latest_checkpoint
from codeunlearn.train.precision import LossScaler
from codeunlearn.train.stream import ChunkStream


class Trainer:
    """One kind's training: its step count, its steps, how a checkpoint holds it and how it ends."""

    def total_steps(self, args: TrainingArguments) -> int:
        """Steps of a whole run."""
        raise NotImplementedError

    def init_from(self, bmodel: BottleneckedModel, path: Path, args: TrainingArguments) -> int:
        """Start from the trained bottleneck at `path` (`--init_from`); returns the step the run continues at."""
        raise CodeunlearnError("init_from is for codebook bottlenecks", "drop init_from for an SAE run")

    def train(self, run: TrainingRun, step: int) -> int:
        """Train from `step` to `run.end`, logging and checkpointing through `run`; returns the step reached."""
        raise NotImplementedError

    def save_bottleneck(self, bmodel: BottleneckedModel, path: Path) -> None:
        """Write the exact training state of the bottleneck into a checkpoint's directory `path` (config and
        `bottleneck_state` tensors, which `TrainingRun` loads back on resume)."""
        bmodel.save_pretrained(path, overwrite=True, with_edits=False)

    def finish(self, bmodel: BottleneckedModel) -> None:
        """Turn the trained bottleneck into what its saved directory holds (after the last step)."""


@dataclass
class TrainingRun:
    """What a kind's `Trainer` gets from the shared loop: the model, data, arguments and step bounds, and the
    loop's services (metrics, checkpoints, the initialisation tokens, precision, resuming an optimizer)."""

    bmodel: BottleneckedModel
    stream: ChunkStream
    args: TrainingArguments
    accelerator: Accelerator
    trainer: Trainer
    total: int  # steps of the whole run
    end: int  # this run stops here (`stop_after_steps`)
    bar: Any  # the progress bar
    resume_state: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.time)

    @property
    def output_dir(self) -> Path:
        return Path(self.args.output_dir)

    @property
    def world_size(self) -> int:
        return self.accelerator.num_processes

    def take_batch(self) -> Tensor:
        """This process's chunks of the next step, on its device: process r of W reads the r-th `batch_size` of
        the step's `W * batch_size` chunks, so W processes read what one process reads at W times the batch."""
        size, rank = self.args.batch_size, self.accelerator.process_index
        batch = self.stream.take(size, skip=rank * size)
        self.stream.advance(size * self.world_size)
        return batch.to(self.accelerator.device)

    def log(self, record: dict) -> None:
        """Append a metrics record (it names its `step`) to the returned metrics and to metrics.jsonl, with the
        effective batch (chunks a step reads over every process: batch_size x processes, unless the record says)."""
        record = {
            "step": record["step"],
            "seconds": round(time.time() - self.started, 2),
            "effective_batch": self.args.batch_size * self.world_size,
            **record,
        }
        self.metrics.append(record)
        if self.accelerator.is_main_process:
            with (self.output_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.bar.set_postfix({k: v for k, v in record.items() if k in ("fvu", "kl", "ppl_ratio", "l0")})

    def latest_checkpoint(self) -> Path | None:
        return latest_checkpoint(self.output_dir)

    def autocast(self) -> Any:
        """The autocast of the frozen model's forward passes (`bf16`, `fp16` or none), on this process's device."""
        return mixed_precision(self.accelerator.device, self.args.bf16, self.args.fp16)

    def loss_scaler(self) -> LossScaler:
        """The loss scaler of a gradient phase (a pass-through unless `fp16`), as the checkpoint being resumed left
        it (a checkpoint without one, e.g. of a run in another precision, starts a fresh scale)."""
        scaler = LossScaler(self.accelerator.device, self.args.fp16)
        if self.resume_state is not None and "loss_scaler" in self.resume_state:
            scaler.load_state_dict(self.resume_state["loss_scaler"])
        return scaler

    def resume_optimizer(self, optimizer: torch.optim.Optimizer, scheduler: Any) -> None:
        """Load the optimizer and scheduler states of the checkpoint being resumed, if it holds them."""
        if self.resume_state is not None and "scheduler" in self.resume_state:
            optimizer.load_state_dict(torch.load(self.latest_checkpoint() / OPTIMIZER_NAME, weights_only=True))
            scheduler.load_state_dict(self.resume_state["scheduler"])

    def save_checkpoint(
        self,
        step: int,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        extra: dict[str, dict[str, Tensor]] | None = None,
        scaler: LossScaler | None = None,
    ) -> None:
        """Write checkpoint `step` (the trainer's bottleneck state, `extra` tensors files by name, RNG, cursor,
        optimizer, loss scaler) and drop all but the newest `keep_checkpoints`."""
        if not self.accelerator.is_main_process:
            return
        root = self.output_dir / "checkpoints"
        with atomic_directory(root / f"step-{step:07d}", overwrite=True) as tmp:
            self.trainer.save_bottleneck(self.bmodel, tmp / "bottleneck")
            for name, tensors in (extra or {}).items():
                atomic_save_tensors(tensors, tmp / name)
            rng = {"torch": torch.get_rng_state()}
            if torch.cuda.is_available():
                rng["cuda"] = torch.cuda.get_rng_state()
            atomic_save_tensors(rng, tmp / RNG_NAME)
            state = {
                "step": step,
                "cursor": self.stream.cursor,
                "world_size": self.world_size,
                "args": dataclasses.asdict(self.args),
            }
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
                state["scheduler"] = scheduler.state_dict()
            if scaler is not None and scaler.enabled:
                state["loss_scaler"] = scaler.state_dict()
            atomic_write_text(tmp / STATE_NAME, json.dumps(state, indent=1) + "\n")
        for old in sorted(root.glob("step-*"))[: -self.args.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def init_chunks(self) -> Tensor:
        """The first `kmeans_init_tokens` tokens of the stream, in whole chunks (the cursor is not advanced)."""
        return self.stream.take(math.ceil(self.args.kmeans_init_tokens / self.stream.chunks.shape[1]))

    def states_of(self, layer: int, chunks: Tensor) -> Tensor:
        """The states the bottleneck at `layer` reads on this process's share of `chunks` (`distributed.share`),
        (chunks, seq, hidden), in batches."""
        device = self.accelerator.device
        parts = distributed.share(chunks).split(self.args.batch_size)
        states = []
        with torch.no_grad(), self.autocast():
            for part, real in sharding.lockstep(self.bmodel, parts, len(parts), chunks.shape[1]):
                got = self.bmodel.states_at(layer, part.to(device))
                if real:
                    states.append(got)
        return torch.cat(states)

    def prepare(self, optimizer: torch.optim.Optimizer, model: nn.Module | None = None) -> tuple[Any, Any]:
        """(model, optimizer) ready for data-parallel steps: through accelerate (DDP around `model` when given),
        or, when the base model is sharded, as they are: the caller averages the bottleneck's gradients with
        `sharding.average_gradients` (DDP cannot wrap a sharded model, nor accelerate's FSDP prepare leave the
        bottleneck whole)."""
        if sharding.is_sharded(self.bmodel):
            return model, optimizer
        if model is None:
            return None, self.accelerator.prepare(optimizer)
        return self.accelerator.prepare(model, optimizer)
