"""`codeunlearn stats`: count which codes fire on a corpus (forward passes only, up to the deepest bottleneck).

    codeunlearn stats --bottleneck_dir outputs/run/bottleneck --corpora ../shared/data/demo/forget_harry_potter.txt \\
        --name forget --output_file outputs/run/stats/forget.safetensors

Writes FILE.safetensors (per-layer counts) and FILE.json (summary). Statistics for selection use the train split
(the default); the held-out split is kept for `codeunlearn eval`. Use the same --split_seed everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from codeunlearn import distributed
from codeunlearn.bottleneck.loading import load_bottlenecked
from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.cli.common import check_output_file
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import bf16_is_fast, run_arguments
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics

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


def describe(stats: CodeStatistics, codes_per_layer: int) -> str:
    """One line per layer: tokens counted and how many codes fired."""
    return "\n".join(
        f"  layer {layer}: {stats.tokens[layer]:,} tokens, {int((counts > 0).sum()):,} of {codes_per_layer:,} codes fired"
        for layer, counts in sorted(stats.counts.items())
    )


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn stats` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, args, run = parse_arguments(
        (ModelArguments, DataArguments, StatsArguments, run_arguments("overwrite", "progress", "bf16")),
        argv,
        "codeunlearn stats",
        DESCRIPTION,
        defaults={"bf16": bf16_is_fast()},
    )
    output = check_output_file(args.output_file, run.overwrite)
    if output.suffix != ".safetensors":
        raise CodeunlearnError(
            f"--output_file {output} does not end in .safetensors", "name it like forget.safetensors"
        )
    corpora = read_corpora(data_args.all_corpora(), data_args)
    bmodel, tokenizer = load_bottlenecked(args.bottleneck_dir, model_args, run.progress)
    if bmodel.edits:
        # Selection scores codes of the unedited bottleneck; an `exclude` edit would change which codes fire.
        print(
            f"note: ignoring the saved edits {[e.topic for e in bmodel.edits]} (statistics describe the unedited bottleneck)"
        )
        bmodel.clear_edits()
    chunks = corpora.pack(tokenizer, args.split)
    name = args.name or corpora.name
    stats = collect_code_statistics(
        bmodel, chunks, batch_size=args.batch_size, corpus=name, progress=run.progress, bf16=run.bf16
    )
    if distributed.is_main_process():
        stats.save(output)
    print(f"{name} ({args.split} split, {len(chunks)} chunks x {chunks.shape[1]} tokens):")
    print(describe(stats, bmodel.config.codes_per_layer))
    print(f"wrote {output} and {output.with_suffix('.json')}")
    return 0
