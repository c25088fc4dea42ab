"""The training loop every gradient baseline shares, on `accelerate`.

`train_baseline(model, method, forget, retain, args)` trains `model` in place: AdamW over the method's parameters
(weight decay on matrices only, as `transformers.Trainer` does), a warm-up then linear / cosine / constant
schedule, gradient accumulation, optional gradient clipping and bf16 or fp16 autocast (fp16 with a loss scale). Every `log_every` steps a line goes to
OUTPUT/metrics.jsonl; every `checkpoint_every` steps an atomic checkpoint (trained tensors, optimizer, scheduler,
data cursors, RNG, elapsed seconds) goes to OUTPUT/checkpoints/, and `resume=True` continues from the latest one
with the weights an uninterrupted run would reach. At the end the model (and tokenizer) is written with
`save_pretrained` to a temporary directory renamed to OUTPUT/model, and OUTPUT/result.json records the method,
its config, the resolved values (e.g. RMU's layer and c) and the wall time of the optimisation loop.

Forget and retain chunks are read from two seeded endless streams (a fresh permutation each epoch). With several
processes each takes its own slice of every step's batch and DDP averages gradients (RMU, whose forwards stop early,
is meant for one process).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import (
    get_constant_schedule_with_warmup,
    get_cosine_schedule_with_warmup,
    get_linear_schedule_with_warmup,
)

from codeunlearn import distributed
from codeunlearn.baselines.base import UnlearningMethod
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.io import atomic_directory, atomic_save_tensors, atomic_write_text, load_tensors, stamp_checksums
from codeunlearn.runtime import check_precision, mixed_precision, run_arguments
from codeunlearn.train.precision import LossScaler
from codeunlearn.train.stream import ChunkStream

METRICS_NAME = "metrics.jsonl"
RESULT_NAME = "result.json"
MODEL_DIR = "model"
CHECKPOINTS_DIR = "checkpoints"
STATE_NAME = "trainer_state.json"
TRAINED_NAME = "trained.safetensors"
RNG_NAME = "rng_state.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
_SCHEDULES = {
    "linear": get_linear_schedule_with_warmup,
    "cosine": get_cosine_schedule_with_warmup,
    "constant": lambda optimizer, warmup, total: get_constant_schedule_with_warmup(optimizer, warmup),
}


@dataclass
class BaselineTrainingArguments(
    run_arguments(
        "output_dir",
        "overwrite",
        "progress",
        "bf16",
        "fp16",
        writes="metrics.jsonl, checkpoints/, model/ and result.json",
    )
):
    """How a baseline run is executed and recorded (the method's hyperparameters are its config); bf16 and fp16 are
    off unless asked."""

    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-batches per optimizer step."})
    seed: int = field(default=0, metadata={"help": "Seeds the order of forget and retain chunks and torch's RNG."})
    log_every: int = field(default=10, metadata={"help": "Write a metrics line every N steps (and at the last)."})
    checkpoint_every: int = field(
        default=0, metadata={"help": "Save a resumable checkpoint every N steps (0 = never)."}
    )
    keep_checkpoints: int = field(default=1, metadata={"help": "Older checkpoints are deleted."})
    resume: bool = field(default=False, metadata={"help": "Continue from the latest checkpoint in output_dir."})
    stop_after_steps: int | None = field(default=None, metadata={"help": "End this run after this step (staged runs)."})
    save_model: bool = field(default=True, metadata={"help": "Write the trained model to OUTPUT/model at the end."})

    def __post_init__(self) -> None:
        check_precision(self.bf16, self.fp16)
        for name in ("gradient_accumulation_steps", "log_every", "keep_checkpoints"):
            check_range(name, getattr(self, name), getattr(self, name) >= 1, ">= 1")
        check_range("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 0, ">= 0 (0 = never)")
        if self.stop_after_steps is not None:
            check_range("stop_after_steps", self.stop_after_steps, self.stop_after_steps >= 1, ">= 1, or leave it out")


@dataclass
class BaselineResult:
    """What a baseline run did and cost."""

    method: str
    config: dict[str, Any]
    steps: int
    finished: bool
    train_seconds: float  # wall time of the optimisation loop (summed over resumed runs): the cost of forgetting
    prepare_seconds: float  # reference copies, RMU's norm measurement
    save_seconds: float
    trainable_parameters: int
    tokens: dict[str, int]  # tokens trained on, per corpus
    resolved: dict[str, Any]
    metrics: list[dict[str, Any]]
    model_dir: str | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class _Run:
    """What the stages of one baseline run share: the method, the trained parameters with their optimizer and
    schedule, the chunk streams, where the run writes, and how far it is (its step, the seconds of the runs it
    resumed)."""

    method: UnlearningMethod
    args: BaselineTrainingArguments
    accelerator: Accelerator
    output_dir: Path
    params: dict[str, nn.Parameter]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    streams: dict[str, ChunkStream]
    scaler: LossScaler
    step: int = 0
    previous_seconds: float = 0.0


def _check_chunks(name: str, chunks: Tensor | None, method: UnlearningMethod) -> None:
    if chunks is None:
        raise CodeunlearnError(f"{method.name} needs {name} text and none was given", f"pass {name} chunks/corpora")
    if chunks.ndim != 2 or len(chunks) == 0:
        raise CodeunlearnError(
            f"the {name} corpus gave no chunks (shape {tuple(chunks.shape)})", "pass more text or a smaller --seq_len"
        )


def _latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((output_dir / CHECKPOINTS_DIR).glob("step-*"))
    return found[-1] if found else None


def check_output_dir(args: BaselineTrainingArguments) -> Path | None:
    """Refuse to mix runs (changes nothing on disk); return the checkpoint to resume from, if any. Call it before
    slow steps such as loading a model, so a mistake fails at once."""
    output_dir = Path(args.output_dir)
    if output_dir.exists() and not output_dir.is_dir():
        raise CodeunlearnError(f"{output_dir} exists and is not a directory", "choose another output_dir")
    if args.resume:
        latest = _latest_checkpoint(output_dir)
        if latest is None:
            raise CodeunlearnError(
                f"--resume given but {output_dir / CHECKPOINTS_DIR} holds no checkpoint", "drop --resume to start fresh"
            )
        return latest
    earlier = [name for name in (METRICS_NAME, CHECKPOINTS_DIR, MODEL_DIR, RESULT_NAME) if (output_dir / name).exists()]
    if earlier and not args.overwrite:
        raise CodeunlearnError(
            f"{output_dir} already holds a baseline run ({', '.join(earlier)})",
            "pass --resume to continue it, --overwrite to replace it, or choose a new output_dir",
        )
    return None


def _prepare_output_dir(output_dir: Path, args: BaselineTrainingArguments) -> Path | None:
    """Check the output directory and clear an overwritten run's metrics and checkpoints."""
    latest = check_output_dir(args)
    if latest is not None:
        return latest
    distributed.barrier()  # every process has checked before the main one clears
    if not distributed.is_main_process():
        return None
    for name in (METRICS_NAME, CHECKPOINTS_DIR):  # model/ and result.json are replaced atomically at the end
        path = output_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    return None


def _optimizer(params: dict[str, nn.Parameter], learning_rate: float, weight_decay: float) -> torch.optim.AdamW:
    # Matrices decay, vectors (biases, norm weights) do not: the `transformers.Trainer` rule the papers ran under.
    decay = [p for p in params.values() if p.ndim >= 2]
    no_decay = [p for p in params.values() if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=learning_rate)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint being resumed (they are logged again)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _save_checkpoint(run: _Run, seconds: float) -> None:
    if not run.accelerator.is_main_process:
        return
    method, args = run.method, run.args
    root = run.output_dir / CHECKPOINTS_DIR
    with atomic_directory(root / f"step-{run.step:07d}", overwrite=True) as tmp:
        atomic_save_tensors({name: p.detach() for name, p in run.params.items()}, tmp / TRAINED_NAME)
        atomic_save_tensors({"torch": torch.get_rng_state()}, tmp / RNG_NAME)
        torch.save(run.optimizer.state_dict(), tmp / OPTIMIZER_NAME)
        state = {
            "step": run.step,
            "cursors": {name: stream.cursor for name, stream in run.streams.items()},
            "train_seconds": seconds,
            "scheduler": run.scheduler.state_dict(),
            "method": method.name,
            "config": method.config.to_dict(),
            "seed": args.seed,
            "gradient_accumulation_steps": args.gradient_accumulation_steps,
            "loss_scaler": run.scaler.state_dict(),
        }
        atomic_write_text(tmp / STATE_NAME, json.dumps(state, indent=1) + "\n")
    for old in sorted(root.glob("step-*"))[: -args.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


def _load_checkpoint(path: Path, params, method: UnlearningMethod, args: BaselineTrainingArguments) -> dict:
    state_file = path / STATE_NAME
    if not state_file.is_file():
        raise CodeunlearnError(f"checkpoint {path} has no {STATE_NAME}", "delete the incomplete checkpoint directory")
    state = json.loads(state_file.read_text())
    same = (
        state["method"] == method.name
        and state["config"] == json.loads(json.dumps(method.config.to_dict()))
        and state["seed"] == args.seed
        and state["gradient_accumulation_steps"] == args.gradient_accumulation_steps
    )
    if not same:
        raise CodeunlearnError(
            f"checkpoint {path} was made by another method, config or seed ({state['method']})",
            "resume with the run's own arguments (OUTPUT/run_args.json) or use a new output_dir",
        )
    saved = load_tensors(path / TRAINED_NAME, "checkpoint weights")
    if set(saved) != set(params):
        raise CodeunlearnError(f"checkpoint {path} holds other parameters than this run trains", "use a new output_dir")
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(saved[name])
    torch.set_rng_state(load_tensors(path / RNG_NAME, "checkpoint RNG state")["torch"])
    return state


def train_baseline(
    model: nn.Module,
    method: UnlearningMethod,
    forget: Tensor | None,
    retain: Tensor | None,
    args: BaselineTrainingArguments,
    tokenizer: Any = None,
    accelerator: Accelerator | None = None,
) -> BaselineResult:
    """Unlearn with `method` on forget chunks (and retain chunks if it reads them), training `model` in place.

    Chunks are (num_chunks, seq_len) token ids of the *train* split. Returns the run's record; with
    `args.save_model` the model (and `tokenizer`, if given) is saved to OUTPUT/model.

    The stages run in `transformers.Trainer`'s order: setup (`_start_run`), resume, the steps (`_train_steps`: every
    step's accumulate / clip / step / log / checkpoint, what a reader checks against the methods' papers), then the
    save and the record (`_baseline_result`)."""
    if method.needs_forget:
        _check_chunks("forget", forget, method)
    if method.needs_retain:
        _check_chunks("retain", retain, method)
    accelerator = accelerator or distributed.join()
    output_dir = Path(args.output_dir)
    resume_from = _prepare_output_dir(output_dir, args)
    output_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    model.to(accelerator.device)

    started = time.perf_counter()
    resolved = method.prepare(model, forget, retain)
    prepare_seconds = time.perf_counter() - started
    run = _start_run(model, method, forget, retain, args, accelerator, output_dir)
    if resume_from is not None:
        _resume(resume_from, run)
        _truncate_metrics(output_dir / METRICS_NAME, run.step)
    prepared_model, run.optimizer = accelerator.prepare(model, run.optimizer)

    model.train()  # as under transformers.Trainer (no effect on dropout-free models such as Llama/SmolLM2)
    metrics, train_seconds = _train_steps(run, prepared_model)
    model.eval()
    model.requires_grad_(False)
    method.release()
    accelerator.wait_for_everyone()

    finished = run.step >= method.config.max_steps
    save_seconds, model_dir = 0.0, None
    if finished and args.save_model and accelerator.is_main_process:
        started = time.perf_counter()
        model_dir = _save_model(accelerator.unwrap_model(prepared_model), tokenizer, output_dir / MODEL_DIR)
        save_seconds = time.perf_counter() - started
    seconds_by_part = {"train": train_seconds, "prepare": prepare_seconds, "save": save_seconds}
    seq_len = next(chunks.shape[1] for chunks in (forget, retain) if chunks is not None)
    result = _baseline_result(run, seq_len, resolved, seconds_by_part, metrics, model_dir)
    if finished and accelerator.is_main_process:
        atomic_write_text(output_dir / RESULT_NAME, json.dumps(result.to_dict(), indent=1) + "\n")
    return result


def _start_run(
    model: nn.Module,
    method: UnlearningMethod,
    forget: Tensor | None,
    retain: Tensor | None,
    args: BaselineTrainingArguments,
    accelerator: Accelerator,
    output_dir: Path,
) -> _Run:
    """Make the method's parameters the only trained ones, with their AdamW and schedule, and open the seeded chunk
    streams it reads (forget: `seed`, retain: `seed + 1`)."""
    config = method.config
    model.requires_grad_(False)
    params = method.trainable_parameters(model)
    for param in params.values():
        param.requires_grad_(True)
    half = sorted(name for name, param in params.items() if param.dtype == torch.float16)
    if args.fp16 and half:
        # GradScaler unscales fp32 gradients only; fp16 autocast already runs the matmuls in fp16
        raise CodeunlearnError(
            f"--fp16 trains fp32 parameters, but {half[0]} (and {len(half) - 1} more) is float16",
            "load the model in float32 (--dtype float32) and keep --fp16, or drop --fp16",
        )
    optimizer = _optimizer(params, config.learning_rate, config.weight_decay)
    scheduler = _SCHEDULES[config.lr_scheduler](optimizer, config.warmup_steps, config.max_steps)
    streams: dict[str, ChunkStream] = {}
    if method.needs_forget:
        streams["forget"] = ChunkStream(forget, args.seed)
    if method.needs_retain:
        streams["retain"] = ChunkStream(retain, args.seed + 1)
    scaler = LossScaler(accelerator.device, args.fp16)
    return _Run(method, args, accelerator, output_dir, params, optimizer, scheduler, streams, scaler)


def _train_steps(run: _Run, model: nn.Module) -> tuple[list[dict[str, Any]], float]:
    """The optimizer steps up to `max_steps` (or `stop_after_steps`): each accumulates the gradients, clips them, steps
    the optimizer and schedule, logs every `log_every` steps and at the last, and checkpoints every
    `checkpoint_every`. Returns the logged records and the loop's seconds (the resumed runs' included)."""
    config, args, accelerator = run.method.config, run.args, run.accelerator
    end = config.max_steps if args.stop_after_steps is None else min(config.max_steps, args.stop_after_steps)
    show = args.progress and accelerator.is_main_process
    bar = tqdm(total=end, initial=run.step, desc=run.method.name, unit="step", disable=not show)
    metrics: list[dict[str, Any]] = []
    loop_started = time.perf_counter()

    def seconds() -> float:
        return run.previous_seconds + time.perf_counter() - loop_started

    while run.step < end:
        sums = _accumulate_gradients(run.method, model, run.streams, args, accelerator, run.scaler)
        if config.max_grad_norm > 0:
            run.scaler.unscale_(run.optimizer)  # the clipping reads the true gradient norm
            sums["grad_norm"] = float(accelerator.clip_grad_norm_(list(run.params.values()), config.max_grad_norm))
        run.scaler.step(run.optimizer, run.scheduler)  # skipped where an fp16 gradient overflowed
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        bar.update(1)
        if run.step % args.log_every == 0 or run.step == end:
            metrics.append(_log_step(run, sums, seconds()))
            bar.set_postfix({k: round(v, 4) for k, v in sums.items() if k != "grad_norm"})
        if args.checkpoint_every and (run.step % args.checkpoint_every == 0 or run.step == end):
            _save_checkpoint(run, seconds())
    train_seconds = seconds()
    bar.close()
    return metrics, train_seconds


def _log_step(run: _Run, sums: dict[str, float], seconds: float) -> dict[str, Any]:
    """The step's metrics record (step, seconds, learning rate, loss parts), appended to OUTPUT/metrics.jsonl by the
    main process."""
    record = {"step": run.step, "seconds": round(seconds, 3), "lr": run.scheduler.get_last_lr()[0], **sums}
    record |= run.scaler.record()
    if run.accelerator.is_main_process:
        with (run.output_dir / METRICS_NAME).open("a") as handle:
            handle.write(json.dumps(record) + "\n")
    return record


def _baseline_result(
    run: _Run,
    seq_len: int,
    resolved: dict[str, Any],
    seconds_by_part: dict[str, float],
    metrics: list[dict[str, Any]],
    model_dir: str | None,
) -> BaselineResult:
    """The run's record: method, config, steps, seconds per part, what it trained and on how many tokens."""
    config = run.method.config
    samples = run.step * run.args.gradient_accumulation_steps * config.batch_size * run.accelerator.num_processes
    return BaselineResult(
        method=run.method.name,
        config=config.to_dict(),
        steps=run.step,
        finished=run.step >= config.max_steps,
        **{f"{part}_seconds": round(value, 3) for part, value in seconds_by_part.items()},
        trainable_parameters=sum(p.numel() for p in run.params.values()),
        tokens={name: samples * seq_len for name in run.streams},
        resolved=resolved,
        metrics=metrics,
        model_dir=model_dir,
    )


def _accumulate_gradients(
    method: UnlearningMethod,
    model: nn.Module,
    streams: dict[str, ChunkStream],
    args: BaselineTrainingArguments,
    accelerator: Accelerator,
    scaler: LossScaler,
) -> dict[str, float]:
    """One optimizer step's backward passes (`gradient_accumulation_steps` micro-batches, this rank's share of each
    stream; the loss scaled under fp16); returns the mean loss and loss parts."""
    config, accumulation = method.config, args.gradient_accumulation_steps
    world, rank = accelerator.num_processes, accelerator.process_index
    sums: dict[str, float] = {}
    for _ in range(accumulation):
        batch = {}
        for name, stream in streams.items():
            batch[name] = stream.take(config.batch_size, skip=rank * config.batch_size).to(accelerator.device)
            stream.advance(config.batch_size * world)
        with mixed_precision(accelerator.device, args.bf16, args.fp16):
            loss, parts = method.loss(model, batch.get("forget"), batch.get("retain"))
        accelerator.backward(scaler.scale(loss / accumulation))
        for key, value in {"loss": float(loss.detach()), **parts}.items():
            sums[key] = sums.get(key, 0.0) + value / accumulation
    return sums


def _save_model(model: nn.Module, tokenizer: Any, directory: Path) -> str:
    """Save the unlearned model (and its tokenizer) atomically; returns the directory."""
    with atomic_directory(directory, overwrite=True) as tmp:
        model.save_pretrained(tmp)
        stamp_checksums(tmp)  # transformers writes no checksum; our loaders check this one
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return str(directory)


def _resume(checkpoint: Path, run: _Run) -> None:
    """Load a checkpoint into the run: its parameters, optimizer, schedule and data cursors, its step and seconds."""
    state = _load_checkpoint(checkpoint, run.params, run.method, run.args)
    run.optimizer.load_state_dict(torch.load(checkpoint / OPTIMIZER_NAME, weights_only=True))
    run.scheduler.load_state_dict(state["scheduler"])
    run.scaler.load_state_dict(state.get("loss_scaler", {}))
    for name, stream in run.streams.items():
        stream.cursor = state["cursors"][name]
    run.step, run.previous_seconds = state["step"], state["train_seconds"]
