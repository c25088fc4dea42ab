"""The relearning column of the comparison tables, from `codeunlearn eval --attacks` reports: per model, the held-out
forget loss along the relearning curve and the lowest loss an attacker reaches, against the base model's.

    python benchmarks/relearning_table.py --reference base \\
        base=outputs/relearn50b/base bottleneck=outputs/relearn50b/bottleneck \\
        codebook_removal=outputs/eval_full/micro/edited30 codebook_removal=outputs/relearn50b/codebook_removal_lr2e-4

Each `ROW=DIR` is a report directory (or report.json) holding a `relearning_attack` result; a row named twice is one
model attacked at several settings (e.g. learning rates), and its "best attack" is the lowest loss over all of them.
Why the lowest loss and not the last step: LoRA fine-tuning through a quantizer can overshoot (the loss falls, then
climbs above where it started), and an attacker keeps the best checkpoint. "Above the base model" is that lowest loss
minus the reference row's lowest: how much of the forgetting survives the attack (0 = fully relearned; the base
model fine-tuned the same way is the level a model that forgot nothing reaches).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codeunlearn.tables import escape_pipes, markdown_table


@dataclass
class Curve:
    """One relearning run: the held-out forget loss at each measured step count."""

    row: str
    source: str
    attack: str  # mode and learning rate, from the curve's saved config
    steps: list[int]
    losses: list[float]

    @property
    def lowest(self) -> float:
        return min(self.losses)


def load_curve(row: str, path: str) -> Curve:
    """The relearning curve in the suite report at `path` (a directory with report.json, or the file)."""
    file = Path(path) / "report.json" if Path(path).is_dir() else Path(path)
    if not file.is_file():
        raise SystemExit(f"error: {row}={path}: no report.json there (fix: pass an `eval --attacks` output directory)")
    report = json.loads(file.read_text(encoding="utf-8"))
    runs = [m for m in report["metrics"] if m.get("group") == "attack" and "recovery" in m["scores"]]
    runs = [m for m in runs if any(k.startswith("forget_loss_step_") for k in m["scores"])]
    if len(runs) != 1:
        raise SystemExit(f"error: {file} holds {len(runs)} relearning results (fix: pass a report with exactly one)")
    scores = runs[0]["scores"]
    steps = sorted(int(key.rsplit("_", 1)[1]) for key in scores if key.startswith("forget_loss_step_"))
    return Curve(
        row=row,
        source=str(file.parent),
        attack=_attack(file.parent / runs[0].get("details_file", "")),
        steps=steps,
        losses=[scores[f"forget_loss_step_{step}"] for step in steps],
    )


def _attack(details: Path) -> str:
    """`lora 0.0007`: the mode and rate the run's curve was fine-tuned with (`?` when its details are missing)."""
    if not details.is_file():
        return "?"
    config = json.loads(details.read_text(encoding="utf-8").splitlines()[0])["config"]
    rate = config["lora_learning_rate"] if config["mode"] == "lora" else config["learning_rate"]
    return f"{config['mode']} {rate:g}"


def table(curves: Sequence[Curve], reference: str) -> str:
    """Markdown: one line per run, then one line per row with its best attack against the reference row."""
    ref = [c for c in curves if c.row == reference]
    if not ref:
        raise SystemExit(f"error: no row named {reference!r} (fix: pass {reference}=DIR or another --reference)")
    ref_lowest = min(c.lowest for c in ref)
    step_heads = sorted({step for c in curves for step in c.steps})
    head = ["model", "attack", *(f"step {s}" for s in step_heads), "recovery at last step", "max recovery"]
    per_run = markdown_table(head, [run_cells(c, step_heads) for c in curves], align="ll" + "r" * (len(head) - 2))
    lowest_head = [
        "model",
        "runs",
        "lowest forget loss reached",
        f"above `{escape_pipes(reference)}`'s lowest ({ref_lowest:.4f})",
    ]
    per_row = []
    for row in dict.fromkeys(c.row for c in curves):
        runs = [c for c in curves if c.row == row]
        lowest = min(c.lowest for c in runs)
        per_row.append([escape_pipes(row), len(runs), f"{lowest:.4f}", f"{lowest - ref_lowest:+.4f}"])
    return per_run + "\n\n" + markdown_table(lowest_head, per_row, align="lrrr")


def run_cells(c: Curve, step_heads: list[int]) -> list[str]:
    """One run's row: its forget loss at each step of any run (`-` where it has none) and its recoveries."""
    losses = dict(zip(c.steps, c.losses, strict=True))
    cells = [f"{losses[s]:.4f}" if s in c.steps else "-" for s in step_heads]
    return [
        escape_pipes(c.row),
        c.attack,
        *cells,
        f"{c.losses[0] - c.losses[-1]:+.4f}",
        f"{c.losses[0] - c.lowest:+.4f}",
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("rows", nargs="+", metavar="ROW=DIR", help="A report directory per run; rows may repeat.")
    parser.add_argument("--reference", default="base", help="The row the lowest losses are compared with.")
    parser.add_argument("--out", help="Also write the table to this markdown file.")
    args = parser.parse_args(argv)
    curves = []
    for entry in args.rows:
        row, sep, path = entry.partition("=")
        if not sep or not row or not path:
            raise SystemExit(f"error: {entry!r} is not ROW=DIR (fix: e.g. base=outputs/relearn50b/base)")
        curves.append(load_curve(row, path))
    markdown = table(curves, args.reference)
    print(markdown)
    if args.out:
        from codeunlearn.io import atomic_write_text

        atomic_write_text(Path(args.out), markdown + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
