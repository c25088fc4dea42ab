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


def measures(scores: dict[str, dict[str, float]]) -> dict[str, float]:
    """The released and attacked forget losses and the retain loss of one model."""
    forget = scores[forget_metric(scores)]["loss"]
    retain = sum(scores[n]["loss"] for n in ("history_loss", "wikitext_loss")) / 2
    curve = [v for k, v in scores["relearning"].items() if k.startswith("forget_loss_step_")]
    last = max(int(k.rsplit("_", 1)[1]) for k in scores["relearning"] if k.startswith("forget_loss_step_"))
    return {
        "forget": forget,
        "retain": retain,
        "bypass": scores["bypass"]["forget_loss_bypassed"],
        "8bit": scores["quantization"]["forget_loss_8bit"],
        "4bit": scores["quantization"]["forget_loss_4bit"],
        "relearned": scores["relearning"][f"forget_loss_step_{last}"],
        "relearned_best": min(curve),
    }


def table(rows: dict[str, dict[str, float]], reference: str, edit: str, baked: Sequence[str]) -> str:
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
    lines = ["| " + " | ".join(header) + " |", "|---|" + "---:|" * (len(header) - 1)]
    for name, row in rows.items():
        left = {k: row[k] - base[k] for k in ("bypass", "8bit", "4bit", "relearned", "relearned_best")}
        own = row["forget"] - base["forget"]

        def cell(value: float, own: float = own) -> str:
            return f"{value:+.3f} ({value / own:.0%})" if abs(own) > 1e-9 else f"{value:+.3f}"

        cells = [
            name,
            f"{own:+.3f}" + (f" ({own / rise:.0%} of {edit})" if name not in (reference, edit) else ""),
            f"{row['retain'] - base['retain']:+.3f}",
            *(cell(left[k]) for k in ("bypass", "8bit", "4bit", "relearned", "relearned_best")),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(
        f"Base model ({reference}): forget loss {base['forget']:.4f} released, {base['bypass']:.4f} switched off, "
        f"{base['8bit']:.4f} / {base['4bit']:.4f} at 8 / 4 bit, {base['relearned']:.4f} after the last relearning "
        f"step, {base['relearned_best']:.4f} at its best step. {edit}'s released rise: {rise:+.3f}."
    )
    for name in baked:
        row = rows[name]
        share = (row["forget"] - base["forget"]) / rise
        retain = row["retain"] - base["retain"]
        relearned = (row["relearned"] - base["relearned"]) / rise
        verdict = [
            f"{share:.0%} of the edit's rise (goal >= {SHARE_GOAL:.0%}: {'met' if share >= SHARE_GOAL else 'not met'})",
            f"retain {retain:+.3f} (goal <= +{RETAIN_GOAL}: {'met' if retain <= RETAIN_GOAL else 'not met'})",
            f"{relearned:.0%} left after the relearning attack (goal >= {RELEARNED_GOAL:.0%}: "
            f"{'met' if relearned >= RELEARNED_GOAL else f'not met, short by {RELEARNED_GOAL - relearned:.0%} of the rise'})",
        ]
        lines.append(f"- goals of {name}: " + "; ".join(verdict) + ".")
    return "\n".join(lines)


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
