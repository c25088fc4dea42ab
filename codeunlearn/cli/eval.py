"""`codeunlearn eval`: held-out forget and retain loss of the base model, the unedited bottleneck and each edit; or,
with --suite, a whole evaluation suite on any model; or, with --combine, one table of several suite reports.

Loss table (the default, `codeunlearn.cli.eval_losses`):

    codeunlearn eval --bottleneck_dir outputs/run/bottleneck \\
        --forget_corpora ../shared/data/demo/forget_harry_potter.txt \\
        --retain_corpora ../shared/data/demo/retain_wikitext.txt \\
        --edits outputs/run/edits/edit.json outputs/run/edits/random_control.json --output_dir outputs/run/eval

Evaluation suite (`codeunlearn.cli.eval_suite`):

    codeunlearn eval --suite harry_potter --model outputs/demo/edited --data_dir ../shared/data \\
        --with_base --output_dir outputs/eval/hp_edited [--fast] [--attacks] [--max_items 50] [--seed 0]

Combined table of suite reports, one row per model (`codeunlearn.cli.eval_combine`):

    codeunlearn eval --combine base=outputs/eval/hp_edited/base codebook=outputs/eval/hp_edited \\
        npo=outputs/eval/hp_npo --output_dir outputs/eval/hp_table [--columns hp_loss hp_trivia_hard:acc]

The three take their arguments from one parser, so a config file may pick the behaviour (`suite: harry_potter`).
The loss table and the suite run under `accelerate launch` / `torchrun` (docs/multi-gpu.md); --combine, which only
reads reports, runs in one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codeunlearn import distributed
from codeunlearn.cli import eval_combine, eval_losses, eval_suite
from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.cli.common import check_output_file
from codeunlearn.data import DataArguments
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import bf16_is_fast, run_arguments

DESCRIPTION = (
    "Held-out forget/retain loss (nat/token) of base, unedited bottleneck and edits, plus bottleneck FVU; "
    "--suite NAME runs an evaluation suite on any model; --combine tabulates suite reports."
)

EvalRunArguments = run_arguments(
    "output_dir",
    "overwrite",
    "progress",
    "bf16",
    writes="report.json, report.md and token_loss_increase.json/.md/.png/.svg (with --combine: table.md, table.json "
    "and tradeoff.png/.svg)",
)


@dataclass
class EvalArguments:
    """The model under test, for the loss table and the suite."""

    bottleneck_dir: str | None = field(
        default=None,
        metadata={
            "help": "Bottleneck directory (or an edited one from `codeunlearn apply`); required without --suite."
        },
    )
    batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass."})

    def __post_init__(self) -> None:
        check_range("batch_size", self.batch_size, self.batch_size >= 1, ">= 1")


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn eval` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, run, args, losses, suite, combine = parse_arguments(
        (
            ModelArguments,
            DataArguments,
            EvalRunArguments,
            EvalArguments,
            eval_losses.LossTableArguments,
            eval_suite.SuiteArguments,
            eval_combine.CombineArguments,
        ),
        argv,
        "codeunlearn eval",
        DESCRIPTION,
        defaults={"bf16": bf16_is_fast()},
    )
    if distributed.world_size() > 1 and combine.combine:  # it reads a few report files: nothing to share
        raise CodeunlearnError(
            "`eval --combine` runs in one process (it only reads reports)",
            "run it without accelerate launch / torchrun",
        )
    # Refused before any slow step: an earlier report in --output_dir would be replaced without a word.
    for name in ("table.json", "table.md") if combine.combine else ("report.json", "report.md"):
        check_output_file(Path(run.output_dir) / name, run.overwrite)
    if combine.combine:
        return eval_combine.run(combine, run.output_dir)
    if suite.suite is not None:
        return eval_suite.run(suite, model_args, data_args, run, args.bottleneck_dir, args.batch_size)
    given = [name for name in eval_suite.SUITE_ONLY if getattr(suite, name)]
    if given:
        raise CodeunlearnError(f"--{given[0]} is a suite option", "pass --suite NAME (or drop the option)")
    return eval_losses.run(losses, model_args, data_args, run, args.bottleneck_dir, args.batch_size)
