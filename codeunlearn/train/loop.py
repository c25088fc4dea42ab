"""The training loop every bottleneck kind shares (`train_bottleneck`), on `accelerate`: the data stream, resume,
metrics, checkpoints and the final save; the kind's `Trainer` (`codeunlearn.bottleneck.registry`) runs the steps
(`codeunlearn.kinds.codebook.trainer`, `codeunlearn.kinds.sae.trainer`).

Checkpoints (every `checkpoint_every` steps, atomic directories) hold the bottleneck weights and buffers, the
optimizer and scheduler, the RNG states and the data cursor; `resume=True` continues from the latest one and ends
with exactly the weights an uninterrupted run would have.

Data-parallel (`accelerate launch` / `torchrun`, `codeunlearn.distributed`): every process holds the whole
bottleneck and reads its share of each step's chunks; the processes must agree on the config, the arguments and
the chunks (checked), and only the main process writes files.

Precision is the run's own (`bf16`, `fp16`: autocast of the frozen model, `codeunlearn.train.precision` for fp16's
loss scale), not accelerate's `mixed_precision`, which is refused (`check_no_accelerate_precision`). `compile`
compiles the frozen decoder layers for the run (`codeunlearn.train.compiled`).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import torch
from accelerate import Accelerator
from torch import Tensor
from tqdm.auto import tqdm

from codeunlearn import distributed
from codeunlearn.bottleneck import sharding
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.bottleneck.registry import trainer_for
from codeunlearn.data import corpus_fingerprint
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_write_text
from codeunlearn.train.arguments import TrainingArguments, check_no_accelerate_precision
from codeunlearn.train.base import TrainingRun
from codeunlearn.train.checkpoints import latest_checkpoint, load_checkpoint, truncate_metrics
from codeunlearn.train.compiled import compiled_layers
from codeunlearn.train.stream import ChunkStream


def check_enough_tokens(chunks: Tensor, args: TrainingArguments) -> None:
    """Refuse a training corpus smaller than the initialisation reads (the k-means fit would see repeats)."""
    if not args.resume and args.init_from is None and chunks.numel() < args.kmeans_init_tokens:
        raise CodeunlearnError(
            f"the training corpora give {chunks.numel():,} tokens; initialising the bottleneck reads "
            f"kmeans_init_tokens={args.kmeans_init_tokens:,}",
            "pass more general text (--corpora), raise --max_tokens, or lower --kmeans_init_tokens (a codebook "
            "fits well with 16-32 tokens per code)",
        )


def check_effective_batch(state: dict, args: TrainingArguments, world_size: int, checkpoint: Path) -> None:
    """A run resumes on any number of processes that reads the same chunks per step (processes x batch_size, and x
    gradient_accumulation_steps in the codebook's value phase): the data cursor counts chunks over all processes, so
    the continued run reads what the interrupted one would have."""
    saved = state.get("args", {})
    in_values = int(state.get("step", 0)) >= args.key_steps  # (an SAE never accumulates)
    saved_world = int(state.get("world_size", 1))
    saved_batch = int(saved.get("batch_size", args.batch_size))
    saved_accumulation = int(saved.get("gradient_accumulation_steps", 1)) if in_values else 1
    accumulation = args.gradient_accumulation_steps if in_values else 1
    before = saved_world * saved_batch * saved_accumulation
    now = world_size * args.batch_size * accumulation
    if before != now:
        raise CodeunlearnError(
            f"checkpoint {checkpoint.name} was trained at {saved_world} process(es) x batch_size {saved_batch}"
            + (f" x {saved_accumulation} accumulated" if saved_accumulation > 1 else "")
            + f" = {before} chunks per step; this run reads {now}",
            f"resume with processes x batch_size{' x gradient_accumulation_steps' if in_values else ''} = {before} "
            f"(e.g. --batch_size {before // (world_size * accumulation)} on {world_size} process(es), if it divides)",
        )


def train_bottleneck(
    bmodel: BottleneckedModel, chunks: Tensor, args: TrainingArguments, accelerator: Accelerator | None = None
) -> list[dict]:
    """Train `bmodel`'s bottlenecks on `chunks` (num_chunks, seq_len) with their kind's `Trainer`; returns the
    logged metrics."""
    accelerator = accelerator or distributed.join()
    check_no_accelerate_precision(accelerator.mixed_precision)
    trainer = trainer_for(bmodel.config.kind)
    output_dir = Path(args.output_dir)
    check_enough_tokens(chunks, args)
    distributed.check_same_everywhere(
        "the bottleneck config, the training arguments or the training chunks",
        bmodel.config.to_json_string() + json.dumps(dataclasses.asdict(args)) + corpus_fingerprint(chunks),
        "launch every process with the same command line and the same corpus files",
    )
    torch.manual_seed(args.seed)
    stream = ChunkStream(chunks, args.seed)
    step = 0
    resume_state: dict | None = None
    if args.resume:
        latest = latest_checkpoint(output_dir)
        if latest is None:
            # The fix never says "drop --resume": starting fresh in the wrong folder would abandon the real run.
            raise CodeunlearnError(
                f"--resume given but {(output_dir / 'checkpoints').resolve()} holds no checkpoint",
                "point --output_dir at the folder of the run to continue (the one holding checkpoints/)",
            )
        resume_state = load_checkpoint(latest, bmodel)
        check_effective_batch(resume_state, args, accelerator.num_processes, latest)
        step, stream.cursor = resume_state["step"], resume_state["cursor"]
        truncate_metrics(output_dir / "metrics.jsonl", step)
    elif latest_checkpoint(output_dir) is not None:
        raise CodeunlearnError(
            f"{output_dir} already holds checkpoints", "pass --resume to continue, or choose a new output_dir"
        )
    elif not args.overwrite and any((output_dir / "bottleneck").glob("*")):
        # A finished run keeps no checkpoint but its bottleneck: a new run would replace it at its final save.
        raise CodeunlearnError(
            f"{output_dir / 'bottleneck'} already holds a trained bottleneck",
            "choose a new output_dir, or pass overwrite=True (--overwrite) to replace it",
        )
    elif args.init_from is not None:
        step = trainer.init_from(bmodel, Path(args.init_from), args)

    if sharding.requested() and accelerator.num_processes > 1:
        held, total = sharding.shard_frozen_base(bmodel, accelerator.device)
        if accelerator.is_main_process:
            print(
                f"FSDP: the frozen base model is sharded over {accelerator.num_processes} processes "
                f"({held:,} of its {total:,} parameters on each); the bottleneck is whole on every process",
                flush=True,
            )
    bmodel.to(accelerator.device)
    output_dir.mkdir(parents=True, exist_ok=True)
    total = trainer.total_steps(args)
    end = total if args.stop_after_steps is None else min(total, args.stop_after_steps)
    bar = tqdm(
        total=end, initial=step, desc="train", unit="step", disable=not (args.progress and accelerator.is_main_process)
    )
    run = TrainingRun(bmodel, stream, args, accelerator, trainer, total, end, bar, resume_state)
    with compiled_layers(bmodel, args.compile):
        step = trainer.train(run, step)
    bar.close()
    accelerator.wait_for_everyone()
    if step >= total:
        trainer.finish(bmodel)
    if step >= total and accelerator.is_main_process:
        bmodel.save_pretrained(output_dir / "bottleneck", overwrite=True)
        atomic_write_text(output_dir / "training_args.json", json.dumps(dataclasses.asdict(args), indent=1) + "\n")
    return run.metrics
