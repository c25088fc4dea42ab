"""Training a bottleneck: one loop on `accelerate`; a codebook's keys by k-means on cached states, an SAE by
gradient.

1. **Keys** (`key_steps`): step 1 reads the states at each bottleneck layer for `kmeans_init_tokens` tokens (one
   truncated forward per token, stopping at that layer; shallower bottlenecks run as trained) and fits every
   residual stage by chunked k-means on them (`codeunlearn.bottleneck.kmeans`, fp32). Steps 2.. `key_steps` are optional
   EMA updates with dead-code replacement (`vector_quantize_pytorch`) on fresh batches. No gradients. Every process
   sees the same batches, so keys stay identical across processes without a codebook all-reduce.
2. **Values** (`value_steps`, optional): the codes' output vectors are trained by gradient through the frozen
   downstream layers; the objective is `reconstruction` (FVU), `kl` (KL from the base model's next-token
   distribution to the bottlenecked model's) or `kl+reconstruction`. Batches are sharded across processes; DDP
   averages gradients.

The default (`key_steps=1`, `value_steps=0`: k-means keys, values equal to the keys) is the faithful recipe of
`configs/faithful_smollm2.yaml`; EMA steps, value training and downstream adapters are measured in
benchmarks/RESULTS.md.

An SAE bottleneck (`kind="sae"`) trains in one gradient phase (`sae_steps`) on the base model's states at its
layers, read by truncated forwards (no later layer): sae-lens's own training forward pass (MSE + L1 on
decoder-norm-weighted activations for `relu`, MSE + aux-k on dead features for `topk`), Adam, gradient clipping at
1 as sae-lens does. The first `kmeans_init_tokens` tokens set b_dec to the data mean and the input scale (average
norm -> sqrt(d_in)); the scale is folded into the weights when training ends. Logged: L0, FVU, features dead for
`dead_feature_window` updates. Batches are sharded across processes and gradients averaged. Since the forward is
the expensive part, `sae_updates_per_batch` > 1 makes several optimizer updates per forward batch, each on a share
of its tokens.

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
from typing import Literal

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import Tensor
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from codeunlearn.bottleneck.adapters import ADAPTER_PREFIX
from codeunlearn.bottleneck.codebook import QuantizeOutput
from codeunlearn.bottleneck.config import CONFIG_NAME, BottleneckConfig
from codeunlearn.bottleneck.model import WEIGHTS_NAME, BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_directory, atomic_save_tensors, atomic_write_text, load_tensors
from codeunlearn.runtime import autocast
from codeunlearn.unlearn.statistics import flat_code_ids

OBJECTIVES = ("reconstruction", "kl", "kl+reconstruction")
STATE_NAME = "trainer_state.json"
RNG_NAME = "rng_state.safetensors"
OPTIMIZER_NAME = "optimizer.pt"
SAE_STATE_NAME = "sae_trainer_state.safetensors"  # steps since each SAE feature last fired


@dataclass
class TrainingArguments:
    """How to train a bottleneck (the bottleneck's shape is `BottleneckConfig`)."""

    output_dir: str = field(metadata={"help": "Where checkpoints, metrics.jsonl and the final bottleneck go."})
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
        metadata={"help": "SAE: optimizer updates without firing after which a feature counts as dead (aux-k loss)."},
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
    bf16: bool = field(
        default=False,
        metadata={
            "help": "bf16 autocast for the frozen model (bottleneck math stays fp32); fast on GPUs and AMX CPUs only."
        },
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def __post_init__(self) -> None:
        if self.objective not in OBJECTIVES:
            raise CodeunlearnError(f"unknown objective {self.objective!r}", f"use one of {OBJECTIVES}")
        if self.key_steps < 1:
            raise CodeunlearnError("key_steps must be >= 1", "the keys need at least the k-means initialisation step")
        if self.batch_size < 1 or self.value_steps < 0:
            raise CodeunlearnError("batch_size must be >= 1 and value_steps >= 0", "fix the training arguments")
        if self.init_from is not None and not Path(self.init_from, WEIGHTS_NAME).is_file():
            raise CodeunlearnError(
                f"init_from {self.init_from} holds no {WEIGHTS_NAME}",
                "pass the `bottleneck` directory a finished `codeunlearn train` run wrote",
            )
        if min(self.sae_steps, self.dead_feature_window, self.sae_updates_per_batch) < 1:
            raise CodeunlearnError(
                "sae_steps, sae_updates_per_batch and dead_feature_window must be >= 1",
                "fix the training arguments (e.g. --sae_steps 1000)",
            )

    @property
    def total_steps(self) -> int:
        """Steps of a codebook run (key + value steps); see `steps_for`."""
        return self.key_steps + self.value_steps

    def steps_for(self, kind: str) -> int:
        """Steps of a run training a bottleneck of `kind` (`vq`: key + value steps, `sae`: SAE steps)."""
        return self.sae_steps if kind == "sae" else self.total_steps


class ChunkStream:
    """An endless, seeded stream of chunks (a fresh permutation each epoch); `cursor` is its position."""

    def __init__(self, chunks: Tensor, seed: int, cursor: int = 0) -> None:
        if len(chunks) == 0:
            raise CodeunlearnError("the training corpus gave no chunks", "pass more text or a smaller --seq_len")
        self.chunks, self.seed, self.cursor = chunks, seed, cursor

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.chunks))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return int(torch.randperm(len(self.chunks), generator=generator)[offset])

    def take(self, count: int, skip: int = 0) -> Tensor:
        """The next `count` chunks after skipping `skip`; the cursor is not advanced (call `advance`)."""
        return self.chunks[[self._index(self.cursor + skip + i) for i in range(count)]]

    def advance(self, count: int) -> None:
        self.cursor += count


def _fvu(states: Tensor, result: QuantizeOutput, mean: Tensor) -> Tensor:
    ordinary = ~result.passthrough
    x, y = states.float()[ordinary], result.output.float()[ordinary]
    return ((x - y) ** 2).sum() / ((x - mean) ** 2).sum().clamp_min(1e-12)


def _truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from (they will be logged again)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def _latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((output_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def _save_checkpoint(bmodel, optimizer, scheduler, stream, step, args, accelerator, extra=None) -> None:
    if not accelerator.is_main_process:
        return
    root = Path(args.output_dir) / "checkpoints"
    target = root / f"step-{step:07d}"
    with atomic_directory(target, overwrite=True) as tmp:
        if bmodel.config.kind == "sae":
            # The exact training state: a saved SAE is the inference form, with weights folded and re-normalised.
            atomic_write_text(tmp / "bottleneck" / CONFIG_NAME, bmodel.config.to_json_string())
            atomic_save_tensors(bmodel.bottleneck_state(), tmp / "bottleneck" / WEIGHTS_NAME)
        else:
            bmodel.save_pretrained(tmp / "bottleneck", overwrite=True, with_edits=False)
        if extra:
            atomic_save_tensors(extra, tmp / SAE_STATE_NAME)
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state()
        atomic_save_tensors(rng, tmp / RNG_NAME)
        state = {"step": step, "cursor": stream.cursor, "args": dataclasses.asdict(args)}
        if optimizer is not None:
            torch.save(optimizer.state_dict(), tmp / OPTIMIZER_NAME)
            state["scheduler"] = scheduler.state_dict()
        atomic_write_text(tmp / STATE_NAME, json.dumps(state, indent=1) + "\n")
    for old in sorted(root.glob("step-*"))[: -args.keep_checkpoints]:
        shutil.rmtree(old, ignore_errors=True)


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


def _init_from(path: Path, bmodel: BottleneckedModel) -> None:
    """Load the keys and values of the trained codebook bottleneck at `path` into `bmodel`.

    Every config field but `adapter_rank` must match: the codes would otherwise mean something else. Adapters saved
    with it are loaded too when they have the same names and shapes (same `adapter_rank`), so a run can continue
    training them; at another rank, or where it has none, the adapters start fresh."""
    if bmodel.config.kind != "vq":
        raise CodeunlearnError("init_from is for codebook bottlenecks", "drop init_from for an SAE run")
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


def check_enough_tokens(chunks: Tensor, args: TrainingArguments) -> None:
    """Refuse a training corpus smaller than the initialisation reads (the k-means fit would see repeats)."""
    if not args.resume and args.init_from is None and chunks.numel() < args.kmeans_init_tokens:
        raise CodeunlearnError(
            f"the training corpora give {chunks.numel():,} tokens; initialising the bottleneck reads "
            f"kmeans_init_tokens={args.kmeans_init_tokens:,}",
            "pass more general text (--corpora), raise --max_tokens, or lower --kmeans_init_tokens (a codebook "
            "fits well with 16-32 tokens per code)",
        )


def _init_chunks(stream: ChunkStream, args: TrainingArguments) -> Tensor:
    """The first `kmeans_init_tokens` tokens of the stream, in whole chunks (the cursor is not advanced)."""
    return stream.take(math.ceil(args.kmeans_init_tokens / stream.chunks.shape[1]))


def _states_of(
    bmodel: BottleneckedModel, layer: int, chunks: Tensor, args: TrainingArguments, device: torch.device
) -> Tensor:
    """The states the bottleneck at `layer` reads on `chunks`, (chunks, seq, hidden), in batches."""
    with torch.no_grad(), autocast(device, args.bf16):
        return torch.cat([bmodel.states_at(layer, part.to(device)) for part in chunks.split(args.batch_size)])


def _sae_batch_metrics(out, fired: Tensor) -> dict[str, float]:
    """L0 (features active per token) and FVU of one SAE training batch."""
    x, y = out.sae_in.float(), out.sae_out.float()
    fvu = ((x - y) ** 2).sum() / ((x - x.mean(0)) ** 2).sum().clamp_min(1e-12)
    return {"l0": float(fired.sum(-1).float().mean()), "fvu": float(fvu)}


def _train_sae(
    bmodel: BottleneckedModel,
    stream: ChunkStream,
    args: TrainingArguments,
    accelerator: Accelerator,
    step: int,
    end: int,
    total: int,
    log,
    bar,
    resume_state: dict | None,
) -> int:
    """The SAE phase of `train_bottleneck`, from `step` to `end`; returns the step reached.

    One step = one truncated forward of `batch_size` chunks and `sae_updates_per_batch` optimizer updates, each on
    a disjoint share of its tokens (the forward is what costs; the updates are cheap)."""
    layers = bmodel.layers
    bottlenecks = {layer: bmodel.bottleneck(layer) for layer in layers}
    for layer, bottleneck in bottlenecks.items():
        if not bottleneck.trainable:
            raise CodeunlearnError(
                f"the SAE at layer {layer} was loaded for inference, not attached for training",
                "attach a fresh SAE (BottleneckedModel.attach with kind sae) to train it",
            )
    device = accelerator.device
    updates = args.sae_updates_per_batch
    since_fired = {layer: torch.zeros(bottlenecks[layer].num_features, dtype=torch.long) for layer in layers}
    if resume_state is not None and step > 0:
        saved = load_tensors(_latest_checkpoint(Path(args.output_dir)) / SAE_STATE_NAME, "SAE trainer state")
        since_fired = {layer: saved[str(layer)] for layer in layers}
    states: dict[int, Tensor] = {}

    def record(layer: int, layer_states: Tensor, result: None) -> None:
        states[layer] = layer_states

    if not all(bool(b.initialized) for b in bottlenecks.values()):
        # Every process reads the same first chunks, so b_dec and the input scale agree across processes.
        init_chunks = _init_chunks(stream, args)
        for layer, bottleneck in bottlenecks.items():
            bottleneck.initialize(_states_of(bmodel, layer, init_chunks, args, device))

    params = bmodel.trainable_parameters()
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=args.sae_learning_rate, betas=(0.9, 0.999))
    scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps * updates, max(total * updates, 1))
    if resume_state is not None and "scheduler" in resume_state:
        ckpt = _latest_checkpoint(Path(args.output_dir))
        optimizer.load_state_dict(torch.load(ckpt / OPTIMIZER_NAME, weights_only=True))
        scheduler.load_state_dict(resume_state["scheduler"])
    optimizer, scheduler = accelerator.prepare(optimizer, scheduler)

    def update(ordinary: dict[int, Tensor]) -> tuple[float, dict[str, float], dict[int, dict[str, float]]]:
        """One optimizer update on the given ordinary-token states of every layer."""
        loss = torch.zeros((), device=device)
        parts: dict[str, float] = {}
        by_layer: dict[int, dict[str, float]] = {}
        for layer, bottleneck in bottlenecks.items():
            dead = (since_fired[layer] > args.dead_feature_window).to(device)
            out = bottleneck.training_step(ordinary[layer], dead, step)
            loss = loss + out.loss
            with torch.no_grad():
                fired = out.feature_acts > 0
                did_fire = accelerator.reduce(fired.any(0).long(), reduction="sum").cpu() > 0
                since_fired[layer] += 1
                since_fired[layer][did_fire] = 0
                by_layer[layer] = _sae_batch_metrics(out, fired)
                for name, value in out.losses.items():
                    parts[name] = parts.get(name, 0.0) + float(value)
        accelerator.backward(loss)
        if accelerator.num_processes > 1:
            for p in params:
                if p.grad is not None:
                    p.grad = accelerator.reduce(p.grad, reduction="mean")
        accelerator.clip_grad_norm_(params, 1.0)  # as sae-lens's trainer does
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.item(), parts, by_layer

    try:
        while step < end:
            world, rank = accelerator.num_processes, accelerator.process_index
            batch = stream.take(args.batch_size, skip=rank * args.batch_size).to(device)
            stream.advance(args.batch_size * world)
            states.clear()
            with torch.no_grad(), autocast(device, args.bf16):
                bmodel.run_to_deepest(batch, record, states_only=True)
            ordinary = {
                layer: states[layer][~bottleneck.passthrough_mask(states[layer], None)].float()
                for layer, bottleneck in bottlenecks.items()
            }
            for share in range(updates):  # strided shares: every update sees tokens from every chunk
                loss, parts, by_layer = update({layer: x[share::updates] for layer, x in ordinary.items()})
            step += 1
            bar.update(1)
            if step % args.log_every == 0 or step == total:
                log(
                    {
                        "step": step,
                        "phase": "sae",
                        "loss": round(loss, 4),
                        **{name: round(value, 4) for name, value in parts.items()},
                        "fvu": round(sum(m["fvu"] for m in by_layer.values()) / len(by_layer), 4),
                        "l0": round(sum(m["l0"] for m in by_layer.values()) / len(by_layer), 2),
                        "fvu_by_layer": {layer: round(m["fvu"], 4) for layer, m in by_layer.items()},
                        "l0_by_layer": {layer: round(m["l0"], 2) for layer, m in by_layer.items()},
                        "dead_features": {
                            layer: int((since_fired[layer] > args.dead_feature_window).sum()) for layer in layers
                        },
                        "lr": scheduler.get_last_lr()[0],
                    }
                )
            if step % args.checkpoint_every == 0 or step == total:
                extra = {str(layer): counts for layer, counts in since_fired.items()}
                _save_checkpoint(bmodel, optimizer, scheduler, stream, step, args, accelerator, extra)
    finally:
        for p in params:
            p.requires_grad_(False)
    return step


def train_bottleneck(
    bmodel: BottleneckedModel, chunks: Tensor, args: TrainingArguments, accelerator: Accelerator | None = None
) -> list[dict]:
    """Train `bmodel`'s bottlenecks on `chunks` (num_chunks, seq_len); returns the logged metrics."""
    accelerator = accelerator or Accelerator()
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
        _init_from(Path(args.init_from), bmodel)
        step = args.key_steps  # the keys are trained: start at the value phase

    bmodel.to(accelerator.device)
    metrics: list[dict] = []
    metrics_path = output_dir / "metrics.jsonl"
    output_dir.mkdir(parents=True, exist_ok=True)
    total = args.steps_for(bmodel.config.kind)
    end = total if args.stop_after_steps is None else min(total, args.stop_after_steps)
    bar = tqdm(
        total=end, initial=step, desc="train", unit="step", disable=not (args.progress and accelerator.is_main_process)
    )
    wrappers = bmodel.wrappers()
    means = {layer: bmodel.bottleneck(layer).mean for layer in bmodel.layers} if bmodel.config.kind == "vq" else {}
    started = time.time()

    def log(record: dict) -> None:
        record = {"step": step, "seconds": round(time.time() - started, 2), **record}  # a record may set its step
        metrics.append(record)
        if accelerator.is_main_process:
            with metrics_path.open("a") as handle:
                handle.write(json.dumps(record) + "\n")
        bar.set_postfix({k: v for k, v in record.items() if k in ("fvu", "kl", "ppl_ratio", "l0")})

    if bmodel.config.kind == "sae":  # one gradient phase; it ends at `end`, so the codebook phases below do nothing
        step = _train_sae(bmodel, stream, args, accelerator, step, end, total, log, bar, resume_state)

    # ---------------------------------------------------------------- phase 1: search keys (no gradients)
    fvus: dict[int, float] = {}
    used: dict[int, int] = {}

    def observe(layer: int, states: Tensor, result: QuantizeOutput) -> None:
        fvus[layer] = float(_fvu(states, result, means[layer]))
        ids = flat_code_ids(result.codes, bmodel.config.num_heads, bmodel.config.codebook_size)
        used[layer] = int(ids[~result.passthrough].unique().numel())

    if step == 0 and step < end and bmodel.config.kind == "vq":
        init_chunks = _init_chunks(stream, args)
        fit_fvu = {}
        for layer in sorted(bmodel.layers):  # a deeper layer is fitted on what the shallower ones pass on
            states = _states_of(bmodel, layer, init_chunks, args, accelerator.device)
            fit_fvu[layer] = round(bmodel.bottleneck(layer).initialize(states), 4)
            del states
        stream.advance(len(init_chunks))
        step = 1
        bar.update(1)
        dead = {layer: int(bmodel.bottleneck(layer).dead_codes().sum()) for layer in bmodel.layers}
        log(
            {
                "phase": "keys",
                "kmeans_tokens": init_chunks.numel(),
                "fit_fvu": round(sum(fit_fvu.values()) / len(fit_fvu), 4),
                "fit_fvu_by_layer": fit_fvu,
                "dead_codes": dead,
            }
        )
        if step % args.checkpoint_every == 0 or step == args.key_steps:
            _save_checkpoint(bmodel, None, None, stream, step, args, accelerator)

    while step < min(end, args.key_steps):
        batch = stream.take(args.batch_size).to(accelerator.device)
        stream.advance(args.batch_size)
        fvus.clear()
        used.clear()
        for wrapper in wrappers:
            wrapper.fit_keys = True
        try:
            with torch.no_grad(), autocast(accelerator.device, args.bf16):
                bmodel.run_to_deepest(batch, observe)
        finally:
            for wrapper in wrappers:
                wrapper.fit_keys = False
        step += 1
        bar.update(1)
        if step % args.log_every == 0 or step == args.key_steps:
            dead = {layer: int(bmodel.bottleneck(layer).dead_codes().sum()) for layer in bmodel.layers}
            log(
                {
                    "phase": "keys",
                    "fvu": round(sum(fvus.values()) / len(fvus), 4),
                    "fvu_by_layer": dict(fvus),
                    "codes_used_in_batch": dict(used),
                    "dead_codes": dead,
                }
            )
        if step % args.checkpoint_every == 0 or step == args.key_steps:
            _save_checkpoint(bmodel, None, None, stream, step, args, accelerator)

    # ---------------------------------------------------------------- phase 2: output values (gradients)
    if step < end:
        params = bmodel.trainable_parameters()
        for p in params:
            p.requires_grad_(True)
        values = [p for bn in bmodel.bottlenecks.values() for p in bn.values]
        groups = [{"params": values, "lr": args.learning_rate}]
        if bmodel.adapter_parameters():
            groups.append({"params": list(bmodel.adapter_parameters().values()), "lr": args.adapter_learning_rate})
        optimizer = torch.optim.AdamW(groups, weight_decay=0.0)
        scheduler = get_cosine_schedule_with_warmup(optimizer, args.warmup_steps, max(args.value_steps, 1))
        if resume_state is not None and "scheduler" in resume_state:
            ckpt = _latest_checkpoint(output_dir)
            optimizer.load_state_dict(torch.load(ckpt / OPTIMIZER_NAME, weights_only=True))
            scheduler.load_state_dict(resume_state["scheduler"])
        model, optimizer, scheduler = accelerator.prepare(bmodel, optimizer, scheduler)
        recorded: dict[int, tuple[Tensor, QuantizeOutput]] = {}

        def record(layer: int, states: Tensor, result: QuantizeOutput) -> None:
            recorded[layer] = (states, result)

        while step < end:
            world, rank = accelerator.num_processes, accelerator.process_index
            batch = stream.take(args.batch_size, skip=rank * args.batch_size).to(accelerator.device)
            stream.advance(args.batch_size * world)
            recorded.clear()
            with torch.no_grad(), bmodel.disabled(), autocast(accelerator.device, args.bf16):
                base_logits = bmodel.model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            with bmodel.observing(record), autocast(accelerator.device, args.bf16):
                logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            base_logp = F.log_softmax(base_logits, -1)
            logp = F.log_softmax(logits, -1)
            kl = F.kl_div(logp, base_logp, log_target=True, reduction="none").sum(-1).mean()
            fvu = torch.stack([_fvu(s, r, means[layer]) for layer, (s, r) in recorded.items()]).mean()
            if args.objective == "kl":
                loss = kl
            elif args.objective == "reconstruction":
                loss = fvu
            else:
                loss = kl + args.reconstruction_weight * fvu
            accelerator.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if step % args.log_every == 0 or step == total:
                with torch.no_grad():
                    targets = batch[:, 1:]
                    ce = float(F.cross_entropy(logits.transpose(1, 2), targets))
                    ce_base = float(F.cross_entropy(base_logits.transpose(1, 2), targets))
                log(
                    {
                        "phase": "values",
                        "loss": round(loss.item(), 4),
                        "kl": round(kl.item(), 4),
                        "fvu": round(fvu.item(), 4),
                        "ce": round(ce, 4),
                        "ce_base": round(ce_base, 4),
                        "ppl_ratio": round(math.exp(ce - ce_base), 4),
                        "lr": scheduler.get_last_lr()[0],
                    }
                )
            if step % args.checkpoint_every == 0 or step == total:
                _save_checkpoint(bmodel, optimizer, scheduler, stream, step, args, accelerator)
        for p in params:
            p.requires_grad_(False)
    bar.close()
    accelerator.wait_for_everyone()
    if step >= total and bmodel.config.kind == "sae":
        for layer in bmodel.layers:
            bmodel.bottleneck(layer).finish_training()  # what the saved directory holds, bit for bit
    if step >= total and accelerator.is_main_process:
        bmodel.save_pretrained(output_dir / "bottleneck", overwrite=True)
        atomic_write_text(output_dir / "training_args.json", json.dumps(dataclasses.asdict(args), indent=1) + "\n")
    return metrics
