"""`codeunlearn train`: attach a bottleneck to a frozen model and train it on the train split of general text.

    codeunlearn train --layers 15 --corpora ../shared/data/retain/openstax_us_history.jsonl \\
        ../shared/data/retain/wikitext2_raw_test.txt --output_dir outputs/run

With no other flags this is the faithful recipe (`configs/faithful_smollm2.yaml`): 8 residual stages x 8 heads x
4,096 codes whose keys are fitted by k-means on the states of 65,536 tokens. The bottleneck is trained on general
text only (`--corpora` and `--retain_corpora`), never on a topic it will be asked to forget: `--forget_corpora` is
refused here (statistics and selection read the topic later).

An SAE instead of a codebook (`--bottleneck sae`, same as `--kind sae`), saved as one sae-lens directory per layer:

    codeunlearn train --bottleneck sae --layers 15 --sae_architecture topk --sae_expansion_factor 8 --sae_k 32 \\
        --corpora ../shared/data/demo/retain_wikitext.txt --sae_steps 2000 --output_dir outputs/sae

Writes OUTPUT/bottleneck (the trained bottleneck), OUTPUT/metrics.jsonl, OUTPUT/checkpoints/ and
OUTPUT/run_args.json (every argument of this run: `codeunlearn train --config OUTPUT/run_args.json --resume`
resumes it), and last OUTPUT/training_curves.png and .svg, drawn from metrics.jsonl: the loss, FVU, (SAE) L0,
codes used in each step's batch and dead codes or features over the logged steps
(`codeunlearn.figures.training_curves_from_file` redraws them from any metrics.jsonl).

A non-empty OUTPUT is refused unless `--overwrite` (which removes an earlier train's outputs first) or `--resume`;
run_args.json holds absolute paths, so `--config OUTPUT/run_args.json --resume` works from any working directory.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codeunlearn import distributed, figures
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.cli.arguments import BottleneckArguments, parse_arguments, to_flat_dict
from codeunlearn.cli.common import check_output_dir_free
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.io import atomic_write_text
from codeunlearn.modeling import ModelArguments
from codeunlearn.train import TrainingArguments, check_enough_tokens, train_bottleneck, trainer_for
from codeunlearn.train.checkpoints import latest_checkpoint
from codeunlearn.unlearn.statistics import collect_code_statistics
from codeunlearn.unlearn.statistics_cache import save_retain_statistics

DESCRIPTION = (
    "Train a codebook (or, with --bottleneck sae, an SAE) into chosen decoder layers of a frozen causal LM "
    "(train split of every corpus)."
)


@dataclass
class RetainStatisticsArguments:
    """The retain side of every later edit, counted once when the bottleneck is trained."""

    retain_statistics_tokens: int = field(
        default=32768,
        metadata={
            "help": "Tokens per training corpus (train split) whose code firings are counted after training and kept "
            "in the bottleneck directory as its retain statistics (0: none; `forget` then needs --retain_corpora)."
        },
    )

    def __post_init__(self) -> None:
        check_range(
            "retain_statistics_tokens",
            self.retain_statistics_tokens,
            self.retain_statistics_tokens >= 0,
            ">= 0 (0: none, else a token count)",
        )


DATACLASSES = (ModelArguments, DataArguments, BottleneckArguments, TrainingArguments, RetainStatisticsArguments)


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn train` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, bottleneck_args, training_args, retain_args = parse_arguments(
        DATACLASSES, argv, "codeunlearn train", DESCRIPTION
    )
    config = bottleneck_args.to_config()  # validates the shape before anything slow
    if data_args.forget_corpora:
        raise CodeunlearnError(
            "train fits the bottleneck on general text only, but --forget_corpora was given",
            "pass general text with --corpora (or --retain_corpora); the topic is read later by stats/forget",
        )
    output_dir = check_train_output(training_args)
    # A local model's path is made absolute before loading: the bottleneck config records it (base_model) and a
    # checkpoint is resumed only onto the same config, from whatever working directory `--resume` runs in.
    model_args.model_name_or_path = absolute_path(model_args.model_name_or_path)
    corpora = read_corpora(list(dict.fromkeys([*data_args.corpora, *data_args.retain_corpora])), data_args)
    model, tokenizer = model_args.load(training_args.progress)
    chunks = corpora.pack(tokenizer, "train")
    bmodel = BottleneckedModel.attach(model, config)  # checks the layers and the shape against the model
    check_enough_tokens(chunks, training_args)
    print(f"training on {len(chunks)} chunks x {chunks.shape[1]} tokens (train split of {', '.join(corpora.sources)})")
    if distributed.world_size() > 1:
        world, size = distributed.world_size(), training_args.batch_size
        print(f"data-parallel: {world} processes x batch_size {size} = {world * size} chunks per step")
    distributed.barrier()  # every process has checked the output directory before the main one writes into it
    if training_args.overwrite and not training_args.resume:
        # Only now, once everything that can refuse the run has: a refused run leaves the earlier one intact.
        if distributed.is_main_process():
            remove_train_outputs(output_dir)
        distributed.barrier()  # no process may see the old checkpoints (refused without --resume)
    output_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process() and not training_args.resume:  # written first: what `--resume` reads back
        atomic_write_text(
            output_dir / "run_args.json",
            json.dumps(resumable_args(model_args, data_args, bottleneck_args, training_args, retain_args), indent=1)
            + "\n",
        )
    metrics = train_bottleneck(bmodel, chunks, training_args)
    if metrics:
        last = {k: v for k, v in metrics[-1].items() if not isinstance(v, dict)}
        print("final metrics: " + ", ".join(f"{k}={v}" for k, v in last.items()))
    stop = training_args.stop_after_steps
    total = trainer_for(config.kind).total_steps(training_args)
    if stop is None or stop >= total:
        print(f"wrote {output_dir / 'bottleneck'} (layers {bmodel.layers}, {bmodel.config.describe()})")
        if retain_args.retain_statistics_tokens:
            cap = min(
                retain_args.retain_statistics_tokens, data_args.max_tokens or retain_args.retain_statistics_tokens
            )
            stats_chunks = corpora.pack(tokenizer, "train", cap)
            stats = collect_code_statistics(
                bmodel,
                stats_chunks,
                training_args.batch_size,
                corpus=corpora.name,
                progress=training_args.progress,
                bf16=training_args.bf16,
            )
            if distributed.is_main_process():
                path = save_retain_statistics(stats, output_dir / "bottleneck")
                print(f"retain statistics on {stats_chunks.numel():,} tokens: {path}")
    else:
        print(f"stopped at step {stop} of {total}; continue with --resume")
    metrics_path = output_dir / "metrics.jsonl"
    if distributed.is_main_process() and metrics_path.is_file():  # after every result: a drawing error is a note
        drawn = figures.draw_or_note("training curves", figures.training_curves_from_file, metrics_path)
        if drawn is not None:
            print(f"wrote {output_dir / figures.TRAINING_CURVES_NAME}.png and .svg ({', '.join(drawn['panels'])})")
    return 0


# What a `train` run writes into its output directory (and `--overwrite` removes before it starts again).
TRAIN_OUTPUTS = (
    "bottleneck",
    "checkpoints",
    "metrics.jsonl",
    "run_args.json",
    "training_args.json",
    f"{figures.TRAINING_CURVES_NAME}.png",
    f"{figures.TRAINING_CURVES_NAME}.svg",
)
# Saved per invocation, never in run_args.json: `--config run_args.json` must not replace or resume by itself.
NOT_RESUMED = ("overwrite", "resume")


def check_train_output(args: TrainingArguments) -> Path:
    """The absolute output directory, checked before anything slow or written: a new run refuses a non-empty one
    (an earlier run's bottleneck, metrics or checkpoints would be lost) unless `--overwrite`; `--resume` needs the
    run's checkpoints there. `args.output_dir` becomes absolute, so checkpoints and run_args.json name one folder
    whatever the working directory of a later `--resume`."""
    output_dir = Path(args.output_dir).resolve()
    args.output_dir = str(output_dir)
    if args.resume:
        if latest_checkpoint(output_dir) is None:
            # Never suggest dropping --resume: a fresh start in the wrong folder silently abandons the real run.
            raise CodeunlearnError(
                f"--resume given but {output_dir / 'checkpoints'} holds no checkpoint",
                "point --output_dir at the folder of the run to continue (the one holding checkpoints/ and "
                "run_args.json); --config RUN/run_args.json names it",
            )
        return output_dir
    return check_output_dir_free(output_dir, args.overwrite)


def remove_train_outputs(output_dir: Path) -> None:
    """Remove what an earlier `train` run wrote into `output_dir` (its other files stay), so the new run's
    checkpoints, metrics and curves never mix with the old ones."""
    for name in TRAIN_OUTPUTS:
        path = output_dir / name
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()


def absolute_path(value: str) -> str:
    """`value` made absolute when it names a local file or folder (also `FOLDER:SPLIT`); a Hub dataset name or a
    model id stays as it is."""
    if Path(value).exists():
        return str(Path(value).resolve())
    folder, separator, split = value.rpartition(":")
    if separator and folder and Path(folder).is_dir():
        return f"{Path(folder).resolve()}:{split}"
    return value


def resumable_args(*objects: object) -> dict:
    """Every argument of this run for run_args.json, local paths absolute (resolved now, against this working
    directory), so `codeunlearn train --config OUT/run_args.json --resume` reads the same corpora and model and
    continues the same folder from any other working directory."""
    values = {k: v for k, v in to_flat_dict(*objects).items() if k not in NOT_RESUMED}
    for key in ("corpora", "forget_corpora", "retain_corpora"):
        values[key] = [absolute_path(value) for value in values[key]]
    for key in ("model_name_or_path", "init_from"):
        if values.get(key) is not None:
            values[key] = absolute_path(values[key])
    return values
