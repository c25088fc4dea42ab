"""`codeunlearn stats`: count which codes fire on a corpus (forward passes only, up to the deepest bottleneck).

    codeunlearn stats --bottleneck_dir outputs/run/bottleneck --corpora ../shared/data/demo/forget_harry_potter.txt \\
        --name forget --output_file outputs/run/stats/forget.safetensors

Writes FILE.safetensors (per-layer counts) and FILE.json (summary). Statistics for selection use the train split
(the default); the held-out split is kept for `codeunlearn eval`. Use the same --split_seed everywhere.

Resumable: every --checkpoint_every batches the running sums are saved atomically to FILE.partial/ (one file per
data-parallel process); a killed count continues with the same command plus `--resume` and ends with exactly the
statistics an uninterrupted count gives. The partial state is removed once FILE is written. A partial state left
beside FILE is refused without `--resume` (continue) or `--overwrite` (discard it and start over); `--resume` may
write FILE even if it exists, since the count it continues was already allowed to.

With `--streaming` the corpora are read through `datasets` streaming and the chunks are packed batch by batch during
the count (a first pass counts the documents, a second the chunks): neither the text nor its token ids are ever held
whole, and the statistics are exactly those of the same count without `--streaming`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from codeunlearn import distributed
from codeunlearn.bottleneck.loading import load_bottlenecked
from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.cli.common import check_output_file
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import bf16_is_fast, run_arguments
from codeunlearn.unlearn.statistics import (
    DEFAULT_CHECKPOINT_EVERY,
    CodeStatistics,
    StatisticsCheckpoint,
    collect_code_statistics,
    partial_statistics_path,
)

DESCRIPTION = "Count code firings of a bottleneck on the chosen split of corpora (every --corpora/--forget_corpora/--retain_corpora given)."


@dataclass
class StatsArguments:
    """Where the bottleneck is, which split to count on, where the statistics go."""

    bottleneck_dir: str = field(
        metadata={"help": "Bottleneck directory (or the output directory of `codeunlearn train`)."}
    )
    output_file: str = field(
        metadata={"help": "Statistics file to write (.safetensors; a .json summary goes beside it)."}
    )
    name: str | None = field(
        default=None, metadata={"help": "Corpus name recorded in the statistics (default: the file names)."}
    )
    split: Literal["train", "heldout", "all"] = field(
        default="train", metadata={"help": "Which documents to count on."}
    )
    batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass."})
    checkpoint_every: int = field(
        default=DEFAULT_CHECKPOINT_EVERY,
        metadata={"help": "Save the running counts to OUTPUT.partial/ every N batches (what --resume continues)."},
    )

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, self.batch_size >= 1, ">= 1")
        check_range("checkpoint_every", self.checkpoint_every, self.checkpoint_every >= 1, ">= 1")


def describe(stats: CodeStatistics, codes_per_layer: int) -> str:
    """One line per layer: tokens counted and how many codes fired."""
    return "\n".join(
        f"  layer {layer}: {stats.tokens[layer]:,} tokens, {int((counts > 0).sum()):,} of {codes_per_layer:,} codes fired"
        for layer, counts in sorted(stats.counts.items())
    )


def check_checkpoint(output: Path, every: int, resume: bool, overwrite: bool) -> StatisticsCheckpoint:
    """The partial state of a count writing `output`, checked before anything slow: a partial state left by an
    interrupted count is refused unless `--resume` (continue it) or `--overwrite` (start over); `--resume` needs
    one. Without `--resume`, an existing `output` is refused unless `--overwrite`."""
    checkpoint = StatisticsCheckpoint(partial_statistics_path(output), every, resume)
    if resume and overwrite:
        raise CodeunlearnError(
            "--resume continues the partial state that --overwrite would discard",
            "pass --resume to continue the interrupted count, or --overwrite alone to start over",
        )
    if resume:
        if not checkpoint.exists():
            # Never suggest dropping --resume: a fresh count beside the wrong file abandons the interrupted one.
            raise CodeunlearnError(
                f"--resume given but {checkpoint.directory} holds no partial statistics",
                "pass the --output_file of the interrupted count (its partial state sits beside it as NAME.partial/)",
            )
        if output.is_dir():
            raise CodeunlearnError(f"{output} is a directory", "pass a file path")
        return checkpoint
    if checkpoint.exists() and not overwrite:  # checked before the output: its fix would discard the partial state
        raise CodeunlearnError(
            f"{checkpoint.directory} holds the partial state of an interrupted count ({checkpoint.progress()})",
            "pass --resume to continue it, or --overwrite to start over",
        )
    check_output_file(output, overwrite)
    return checkpoint


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn stats` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, args, run = parse_arguments(
        (ModelArguments, DataArguments, StatsArguments, run_arguments("overwrite", "progress", "bf16", "resume")),
        argv,
        "codeunlearn stats",
        DESCRIPTION,
        defaults={"bf16": bf16_is_fast()},
    )
    output = Path(args.output_file)
    if output.suffix != ".safetensors":
        raise CodeunlearnError(
            f"--output_file {output} does not end in .safetensors", "name it like forget.safetensors"
        )
    checkpoint = check_checkpoint(output, args.checkpoint_every, run.resume, run.overwrite)
    corpora = read_corpora(data_args.all_corpora(), data_args)
    bmodel, tokenizer = load_bottlenecked(args.bottleneck_dir, model_args, run.progress, distributed.device())
    if bmodel.edits:
        # Selection scores codes of the unedited bottleneck; an `exclude` edit would change which codes fire.
        print(
            f"note: ignoring the saved edits {[e.topic for e in bmodel.edits]} (statistics describe the unedited bottleneck)"
        )
        bmodel.clear_edits()
    chunks = corpora.chunk_stream(tokenizer, args.split) if data_args.streaming else corpora.pack(tokenizer, args.split)
    name = args.name or corpora.name
    if run.overwrite and not run.resume:
        # Only now, once everything that can refuse the run has: a refused run leaves the interrupted count intact.
        if distributed.is_main_process():
            checkpoint.discard()
        distributed.barrier()  # no process may find the discarded state (refused without --resume)
    stats = collect_code_statistics(
        bmodel,
        chunks,
        batch_size=args.batch_size,
        corpus=name,
        progress=run.progress,
        bf16=run.bf16,
        checkpoint=checkpoint,
    )
    if distributed.is_main_process():
        stats.save(output)
        checkpoint.discard()  # after the result is saved: a kill before leaves the count resumable
    count = chunks.num_chunks if data_args.streaming else len(chunks)
    print(f"{name} ({args.split} split, {count} chunks x {data_args.seq_len} tokens):")
    print(describe(stats, bmodel.config.codes_per_layer))
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return 0
