"""`codeunlearn eval --combine`: one table of several suite reports, one row per model (the first row is the
reference of the loss changes):

    codeunlearn eval --combine base=outputs/eval/hp_edited/base codebook=outputs/eval/hp_edited \\
        npo=outputs/eval/hp_npo --output_dir outputs/eval/hp_table [--columns hp_loss hp_trivia_hard:acc]

writes OUTPUT/table.md, OUTPUT/table.json and then OUTPUT/tradeoff.png and .svg (forget vs retain loss increase,
every point labelled with its row name, the reference row at the origin, random-codes controls as crosses). A row may
come from a table written earlier, `rmu=benchmarks/results/eval_fast/micro/table.json#rmu_configured`, when that
model's suite settings are unchanged: it is refused unless that table's reference row has this one's losses.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.suite.report import TRADEOFF_NAME, combine_reports


@dataclass
class CombineArguments:
    """The suite reports to tabulate, and the columns."""

    combine: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Tabulate suite reports, one row each: ROW=path/to/report.json (or its directory), or "
            "ROW=path/to/table.json#ROW for a row of an earlier combined table ..."
        },
    )
    columns: list[str] = field(
        default_factory=list,
        metadata={"help": "With --combine: the columns, `metric` or `metric:score` (default: every headline score)."},
    )


def run(args: CombineArguments, output_dir: str) -> int:
    """One row per model, one column per metric: write OUTPUT/table.md, table.json and tradeoff.{png,svg}, print
    it."""
    reports: dict[str, str] = {}
    for entry in args.combine:
        row, sep, path = entry.partition("=")
        if not sep:  # a bare path: the row is named after the report's directory
            path = entry
            row = Path(entry).parent.name if entry.endswith(".json") else Path(entry).name
        if not row or not path:
            raise CodeunlearnError(
                f"--combine entry {entry!r} is not ROW=PATH", "write e.g. base=outputs/base/report.json"
            )
        if row in reports:
            raise CodeunlearnError(f"--combine names row {row!r} twice", "give every report its own ROW= name")
        reports[row] = path
    markdown = combine_reports(reports, output_dir, columns=args.columns or None)
    print(markdown)
    drawn = (Path(output_dir) / TRADEOFF_NAME).with_suffix(".svg").is_file()  # not after a drawing error
    print(f"wrote {Path(output_dir) / 'table.md'}, table.json" + (" and tradeoff.png / .svg" if drawn else ""))
    return 0
