"""Summarise a py-spy profile (`py-spy record --format raw`): the share of samples under each named step.

A raw profile holds one line per distinct stack, `frame;frame;...;frame COUNT`, outermost frame first. A sample
counts for the first rule (in the order given) whose text occurs in any of its frames, so list specific steps before
the general ones; samples no rule matches count as "other".

    python benchmarks/profile_summary.py benchmarks/results/faithful/train_profile.txt \\
        --rule "k-means search=nearest (codeunlearn/kinds/codebook/kmeans.py" --rule "forward=states_at"
"""

from __future__ import annotations

import argparse
from pathlib import Path

from codeunlearn.tables import escape_pipes, markdown_table


def summarise(path: Path, rules: list[tuple[str, str]]) -> tuple[dict[str, int], int]:
    """Samples per rule label (plus "other") and the total."""
    counts = {label: 0 for label, _ in rules}
    counts["other"] = 0
    total = 0
    for line in path.read_text().splitlines():
        stack, _, number = line.rpartition(" ")
        if not stack or not number.isdigit():
            continue
        samples = int(number)
        total += samples
        label = next((label for label, text in rules if text in stack), "other")
        counts[label] += samples
    return counts, total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("profile", type=Path)
    parser.add_argument(
        "--rule", action="append", default=[], help="LABEL=TEXT: samples whose stack contains TEXT count for LABEL"
    )
    parser.add_argument("--rate", type=float, default=10.0, help="samples per second the profile was taken at")
    args = parser.parse_args()
    rules = [tuple(rule.split("=", 1)) for rule in args.rule]
    if any(len(rule) != 2 for rule in rules):
        parser.error("a --rule is LABEL=TEXT")
    counts, total = summarise(args.profile, rules)
    rows = [
        [escape_pipes(label), f"{samples:,}", f"{samples / args.rate:,.1f}", f"{samples / max(total, 1):.1%}"]
        for label, samples in counts.items()
    ]
    rows.append(["total", f"{total:,}", f"{total / args.rate:,.1f}", "100%"])
    print(markdown_table(["step", "samples", f"seconds (at {args.rate:g}/s)", "share"], rows, align="lrrr"))


if __name__ == "__main__":
    main()
