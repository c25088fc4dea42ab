"""The training loop every bottleneck kind shares (`train_bottleneck`), on `accelerate`: the data stream, resume,
metrics, checkpoints and the final save; the kind's `Trainer` (`codeunlearn.train.registry`) runs the steps
(`codeunlearn.train.codebook`, `codeunlearn.train.sae`).

Checkpoints (every `checkpoint_every` steps, atomic directories) hold the bottleneck weights and buffers, the
optimizer and scheduler, the RNG states and the data cursor; `resume=True` continues from the latest one and ends
with exactly the weights an uninterrupted run would have.
"""

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
from torch import Tensor
from tqdm.auto import tqdm

from codeunlearn.bottleneck.adapters import ADAPTER_PREFIX
from codeunlearn.bottleneck.base import WEIGHTS_NAME
from codeunlearn.bottleneck.config import CONFIG_NAME
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_directory, atomic_save_tensors, atomic_write_text, load_tensors
from codeunlearn.runtime import autocast
from codeunlearn.train.arguments import TrainingArguments
from codeunlearn.train.registry import Trainer, trainer_for
from codeunlearn.train.stream import ChunkStream

STATE_NAME = "trainer_state.json"
RNG_NAME = "rng_state.safetensors"
OPTIMIZER_NAME = "optimizer.pt"


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from (they will be logged again)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((output_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def _load_checkpoint(path: Path, bmodel: BottleneckedModel) -> dict:
    state_file = path / STATE_NAME
    if not state_file.is_file():
        raise CodeunlearnError(f"checkpoint {path} has no {STATE_NAME}", "delete the incomplete checkpoint directory")
    config_path = path / "bottleneck" / CONFIG_NAME
    saved_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if saved_config and saved_config != bmodel.config.to_dict():
        raise CodeunlearnError(
            f"checkpoint {path} was made with another bottleneck config",
            "resume with the same config or use a new output_dir",
        )
    tensors = load_tensors(path / "bottleneck" / WEIGHTS_NAME, "checkpoint weights")
    for layer, bottleneck in bmodel.bottlenecks.items():
        prefix = f"{layer}."
        bottleneck.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    with torch.no_grad():
        for name, param in bmodel.adapter_parameters().items():
            param.copy_(tensors[ADAPTER_PREFIX + name])
    rng = load_tensors(path / RNG_NAME, "checkpoint RNG state")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return json.loads(state_file.read_text())


def check_enough_tokens(chunks: Tensor, args: TrainingArguments) -> None:
    """Refuse a training corpus smaller than the initialisation reads (the k-means fit would see repeats)."""
    if not args.resume and args.init_from is None and chunks.numel() < args.kmeans_init_tokens:
        raise CodeunlearnError(
            f"the training corpora give {chunks.numel():,} tokens; initialising the bottleneck reads "
            f"kmeans_init_tokens={args.kmeans_init_tokens:,}",
            "pass more general text (--corpora), raise --max_tokens, or lower --kmeans_init_tokens (a codebook "
            "fits well with 16-32 tokens per code)",
        )


@dataclass
class TrainingRun:
    """What a kind's `Trainer` gets from the shared loop: the model, data, arguments and step bounds, and the
    loop's services (metrics, checkpoints, the initialisation tokens, resuming an optimizer)."""

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

    def log(self, record: dict) -> None:
        """Append a metrics record (it names its `step`) to the returned metrics and to metrics.jsonl."""
        record = {"step": record["step"], "seconds": round(time.time() - self.started, 2), **record}
        self.metrics.append(record)
        if self.accelerator.is_main_process:
            with (self.output_dir / "metrics.jsonl").open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        self.bar.set_postfix({k: v for k, v in record.items() if k in ("fvu", "kl", "ppl_ratio", "l0")})

    def latest_checkpoint(self) -> Path | None:
        return _latest_checkpoint(self.output_dir)

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
    ) -> None:
        """Write checkpoint `step` (the trainer's bottleneck state, `extra` tensors files by name, RNG, cursor,
        optimizer) and drop all but the newest `keep_checkpoints`."""
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
            state = {"step": step, "cursor": self.stream.cursor, "args": dataclasses.asdict(self.args)}
            if optimizer is not None:
                torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
                state["scheduler"] = scheduler.state_dict()
            atomic_write_text(tmp / STATE_NAME, json.dumps(state, indent=1) + "\n")
        for old in sorted(root.glob("step-*"))[: -self.args.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)

    def init_chunks(self) -> Tensor:
        """The first `kmeans_init_tokens` tokens of the stream, in whole chunks (the cursor is not advanced)."""
        return self.stream.take(math.ceil(self.args.kmeans_init_tokens / self.stream.chunks.shape[1]))

    def states_of(self, layer: int, chunks: Tensor) -> Tensor:
        """The states the bottleneck at `layer` reads on `chunks`, (chunks, seq, hidden), in batches."""
        device = self.accelerator.device
        with torch.no_grad(), autocast(device, self.args.bf16):
            parts = chunks.split(self.args.batch_size)
            return torch.cat([self.bmodel.states_at(layer, part.to(device)) for part in parts])


def train_bottleneck(
    bmodel: BottleneckedModel, chunks: Tensor, args: TrainingArguments, accelerator: Accelerator | None = None
) -> list[dict]:
    """Train `bmodel`'s bottlenecks on `chunks` (num_chunks, seq_len) with their kind's `Trainer`; returns the
    logged metrics."""
    accelerator = accelerator or Accelerator()
    trainer = trainer_for(bmodel.config.kind)
    output_dir = Path(args.output_dir)
    check_enough_tokens(chunks, args)
    torch.manual_seed(args.seed)
    stream = ChunkStream(chunks, args.seed)
    step = 0
    resume_state: dict | None = None
    if args.resume:
        latest = _latest_checkpoint(output_dir)
        if latest is None:
            raise CodeunlearnError(
                f"--resume given but {output_dir}/checkpoints holds no checkpoint", "drop --resume to start fresh"
            )
        resume_state = _load_checkpoint(latest, bmodel)
        step, stream.cursor = resume_state["step"], resume_state["cursor"]
        _truncate_metrics(output_dir / "metrics.jsonl", step)
    elif _latest_checkpoint(output_dir) is not None:
        raise CodeunlearnError(
            f"{output_dir} already holds checkpoints", "pass --resume to continue, or choose a new output_dir"
        )
    elif args.init_from is not None:
        step = trainer.init_from(bmodel, Path(args.init_from), args)

    bmodel.to(accelerator.device)
    output_dir.mkdir(parents=True, exist_ok=True)
    total = trainer.total_steps(args)
    end = total if args.stop_after_steps is None else min(total, args.stop_after_steps)
    bar = tqdm(
        total=end, initial=step, desc="train", unit="step", disable=not (args.progress and accelerator.is_main_process)
    )
    run = TrainingRun(bmodel, stream, args, accelerator, trainer, total, end, bar, resume_state)
    step = trainer.train(run, step)
    bar.close()
    accelerator.wait_for_everyone()
    if step >= total:
        trainer.finish(bmodel)
    if step >= total and accelerator.is_main_process:
        bmodel.save_pretrained(output_dir / "bottleneck", overwrite=True)
        atomic_write_text(output_dir / "training_args.json", json.dumps(dataclasses.asdict(args), indent=1) + "\n")
    return run.metrics
