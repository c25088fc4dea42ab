"""What each method keeps against a holder of its weights, from `codeunlearn eval --attacks` reports of the open-weight
study suite (benchmarks/results/open_weights/suite_TOPIC.yaml): per model, the held-out forget-loss rise over the base
model as released and what is left of it after each attack, each attack's level set by the base model attacked the
same way, and the baked export's goals checked.

    python benchmarks/open_weights_table.py --reference base --edit codebook_export --baked codebook_baked \\
        base=benchmarks/results/open_weights/report_harry_potter_base.json \\
        codebook_export=benchmarks/results/open_weights/report_harry_potter_codebook_export.json ...

Each `ROW=PATH` is a report.json (or its directory). Columns (nat/token, held-out text; retain = the mean of the
suite's retain losses):

- released: forget loss minus the base model's (Δ forget), and the retain change (Δ retain);
- bypass: forget loss with the switch off (a bottleneck disabled, an export's `bottleneck_enabled=False`) minus the
  base model's; a model without a switch keeps its released value;
- 8 / 4 bit: forget loss after rounding the decoder's weights minus the base model's after the same rounding (4-bit
  rounding alone moves SmolLM2-135M's losses by about half a nat, so the base model quantized is the level);
- relearned: forget loss after 50 LoRA steps on forget train text minus the base model's after the same 50 steps,
  and the same at the attacker's best step (the lowest loss along the curve, against the base model's lowest).

"kept" is each value and, in brackets, its share of the model's own released rise; Δ forget is also given as a share of
the bottleneck edit's (`--edit`). The goals of the baked export
(`--baked`): Δ forget >= 70% of the edit's at Δ retain <= +0.05, and >= 50% of the edit's rise left after the
50-step relearning.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from codeunlearn.tables import escape_pipes, markdown_table

SHARE_GOAL, RETAIN_GOAL, RELEARNED_GOAL = 0.70, 0.05, 0.50


def read_report(path: str) -> dict[str, dict[str, float]]:
    """Scores by metric name of one suite report."""
    source = Path(path)
    source = source / "report.json" if source.is_dir() else source
    data = json.loads(source.read_text())
    if data.get("kind") != "codeunlearn-suite-report":
        sys.exit(f"error: {source} is not a suite report -- fix: pass report.json of `codeunlearn eval --suite`")
    return {m["name"]: m["scores"] for m in data["metrics"]}


def forget_metric(scores: dict[str, dict[str, float]]) -> str:
    """The suite's held-out forget loss: the loss metric whose name is not a retain corpus's."""
    names = [n for n, s in scores.items() if "loss" in s and n not in ("history_loss", "wikitext_loss")]
    if len(names) != 1:
        sys.exit(f"error: cannot tell the forget loss among {names} -- fix: use the study suite's reports")
    return names[0]


ATTACKS = ("bypass", "8bit", "4bit", "relearned", "relearned_best")


def measures(scores: dict[str, dict[str, float]]) -> dict[str, float | tuple[float, float]]:
    """The released forget and retain losses of one model, and for each attack the (released, attacked) forget loss
    on the text that attack scores (its own held-out sample, which may be smaller than the forget metric's)."""
    forget = scores[forget_metric(scores)]["loss"]
    retain = sum(scores[n]["loss"] for n in ("history_loss", "wikitext_loss")) / 2
    steps = {int(k.rsplit("_", 1)[1]): v for k, v in scores["relearning"].items() if k.startswith("forget_loss_step_")}
    bypass, quantized = scores["bypass"], scores["quantization"]
    return {
        "forget": forget,
        "retain": retain,
        "bypass": (bypass["forget_loss"], bypass["forget_loss_bypassed"]),
        "8bit": (quantized["forget_loss"], quantized["forget_loss_8bit"]),
        "4bit": (quantized["forget_loss"], quantized["forget_loss_4bit"]),
        "relearned": (steps[0], steps[max(steps)]),
        "relearned_best": (steps[0], min(steps.values())),
    }


def kept(row: dict, base: dict, attack: str) -> tuple[float, float]:
    """(what is left of the rise after `attack`: the row's attacked loss minus the base model's attacked alike, the
    row's released rise on that attack's text)."""
    return row[attack][1] - base[attack][1], row[attack][0] - base[attack][0]


def table(rows: dict[str, dict], reference: str, edit: str, baked: Sequence[str]) -> str:
    base = rows[reference]
    rise = rows[edit]["forget"] - base["forget"]
    header = [
        "model",
        "Δ forget",
        "Δ retain",
        "kept after bypass",
        "kept at 8 bit",
        "kept at 4 bit",
        "kept after 50 relearning steps",
        "kept at the attacker's best step",
    ]
    cells = [row_cells(name, rows, reference, edit) for name in rows]
    lines = [markdown_table(header, cells, align="l" + "r" * (len(header) - 1)), ""]
    lines.append(
        f"Base model ({reference}): forget loss {base['forget']:.4f}; on each attack's text released -> attacked: "
        + ", ".join(f"{a} {base[a][0]:.4f} -> {base[a][1]:.4f}" for a in ATTACKS)
        + f". {edit}'s released rise: {rise:+.3f}. Brackets: share of the row's own rise on that attack's text."
    )
    for name in baked:
        row = rows[name]
        share = (row["forget"] - base["forget"]) / rise
        retain = row["retain"] - base["retain"]
        relearned = kept(row, base, "relearned")[0] / kept(rows[edit], base, "relearned")[1]
        met = (
            "met" if relearned >= RELEARNED_GOAL else f"not met, short by {RELEARNED_GOAL - relearned:.0%} of the rise"
        )
        verdict = [
            f"{share:.0%} of the edit's rise (goal >= {SHARE_GOAL:.0%}: {'met' if share >= SHARE_GOAL else 'not met'})",
            f"retain {retain:+.3f} (goal <= +{RETAIN_GOAL}: {'met' if retain <= RETAIN_GOAL else 'not met'})",
            f"{relearned:.0%} of the edit's rise left after the relearning attack (goal >= {RELEARNED_GOAL:.0%}: {met})",
        ]
        lines.append(f"- goals of {name}: " + "; ".join(verdict) + ".")
    return "\n".join(lines)


def row_cells(name: str, rows: dict[str, dict], reference: str, edit: str) -> list[str]:
    """A model's row: its rise and retain change, and what is left of its rise after each attack (row names, which
    the command line gives, with any `|` escaped)."""
    base, row = rows[reference], rows[name]
    rise = rows[edit]["forget"] - base["forget"]
    own = row["forget"] - base["forget"]
    share = f" ({own / rise:.0%} of {edit})" if name not in (reference, edit) else ""
    cells = [escape_pipes(name), escape_pipes(f"{own:+.3f}{share}"), f"{row['retain'] - base['retain']:+.3f}"]
    for attack in ATTACKS:
        left, released = kept(row, base, attack)
        cells.append(f"{left:+.3f}" + (f" ({left / released:.0%})" if abs(released) > 1e-9 else ""))
    return cells


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", metavar="ROW=PATH", help="Report of one model, in table order.")
    parser.add_argument("--reference", default="base", help="The base model's row.")
    parser.add_argument("--edit", default="codebook_export", help="The bottleneck edit whose rise is 100%%.")
    parser.add_argument("--baked", action="append", default=[], help="A row whose goals are checked (repeat).")
    args = parser.parse_args(argv)
    rows = {}
    for item in args.rows:
        name, sep, path = item.partition("=")
        if not sep:
            sys.exit(f"error: {item!r} is not ROW=PATH -- fix: name each report, e.g. base=DIR")
        rows[name] = measures(read_report(path))
    for name in [args.reference, args.edit, *args.baked]:
        if name not in rows:
            sys.exit(f"error: no row {name!r} -- fix: pass {name}=REPORT")
    print(table(rows, args.reference, args.edit, args.baked))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
