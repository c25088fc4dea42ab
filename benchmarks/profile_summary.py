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
    print(f"| step | samples | seconds (at {args.rate:g}/s) | share |\n|---|---:|---:|---:|")
    for label, samples in counts.items():
        print(f"| {label} | {samples:,} | {samples / args.rate:,.1f} | {samples / max(total, 1):.1%} |")
    print(f"| total | {total:,} | {total / args.rate:,.1f} | 100% |")


if __name__ == "__main__":
    main()
