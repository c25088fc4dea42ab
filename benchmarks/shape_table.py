"""The codebook-shape table: what each shape costs in fidelity, buys in forgetting and costs in speed.

Reads the files the shape study writes into one folder (default `benchmarks/results/shapes/`):

  fidelity.jsonl                    `benchmarks/fidelity_sweep.py` rows, one per shape (named `sS_cC`);
  demo_sS_cC_report.md              the report of `codeunlearn demo` on that shape (Harry Potter, N by the rule);
  inference_speed_sS_cC.json        `benchmarks/inference_speed.py` on that demo's edited model.

and prints one Markdown row per shape found in all three, in the order of fidelity.jsonl:

    python benchmarks/shape_table.py --results_dir benchmarks/results/shapes

With --edit_stages DEMO_DIR it prints instead how many of the codes that demo's edit removed sit in each stage.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from codeunlearn.tables import markdown_table

HEADER = [
    "shape (stages x codes per head)",
    "bits/token",
    "keys searched per token and head",
    "train s",
    "ΔCE history",
    "ΔCE WikiText",
    "ΔCE microbiology / cyber / HP",
    "demo: N by the rule",
    "demo: Δforget / Δretain",
    "random codes",
    "edited / base: prefill, decode",
]


def _percent(row: dict, corpus: str) -> str:
    return f"+{row['delta_ce'][corpus]:.3f} ({100 * row['relative_delta_ce'][corpus]:.1f}%)"


def demo_numbers(report: str) -> dict[str, str]:
    """N, the edit's and the random control's held-out deltas from a demo report's Markdown."""
    rows = {}
    for line in report.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 7 and cells[0] in ("edited (harry_potter codes)", "random-codes control"):
            rows[cells[0]] = cells
    edited, control = rows["edited (harry_potter codes)"], rows["random-codes control"]
    return {
        "n": _rule_choice(report, int(edited[1])),
        "edit": f"{edited[4]} / {edited[5]}",
        "control": f"{control[4]} / {control[5]}",
    }


def _rule_choice(report: str, chosen: int) -> str:
    """N with its validation retain cost and that of the next N on the grid, which broke the budget."""
    walk = re.search(r"\(budget [0-9.]+\): ([^)]*)\)", report)
    if not walk:
        return f"{chosen:,}"
    costs = [entry.split(": ") for entry in walk.group(1).split(", ")]
    picked = next(i for i, (n, _) in enumerate(costs) if n.endswith("*"))
    text = f"{chosen:,} ({costs[picked][1]}"
    if picked + 1 < len(costs):
        text += f"; {int(costs[picked + 1][0]):,}: {costs[picked + 1][1]}"
    return text + ")"


def shape_rows(results_dir: Path) -> list[list[str]]:
    rows = []
    for line in (results_dir / "fidelity.jsonl").read_text().splitlines():
        fidelity = json.loads(line)
        name = fidelity["name"]
        report, speed = results_dir / f"demo_{name}_report.md", results_dir / f"inference_speed_{name}.json"
        if not (report.is_file() and speed.is_file()):
            continue
        stages, codes = (int(part[1:]) for part in name.split("_"))
        demo = demo_numbers(report.read_text())
        timing = json.loads(speed.read_text())
        rows.append(
            [
                f"{stages} x {codes:,}",
                f"{fidelity['bits_per_token']:,.0f}",
                f"{stages * codes:,}",
                f"{fidelity['train_seconds']:.0f}",
                _percent(fidelity, "history"),
                _percent(fidelity, "wiki"),
                " / ".join(f"+{fidelity['delta_ce'][c]:.3f}" for c in ("micro", "cyber", "hp")),
                demo["n"],
                demo["edit"],
                demo["control"],
                f"{timing['prefill_ratio']:.2f}x, {timing['decode_ratio']:.2f}x",
            ]
        )
    return rows


def stage_counts(demo_dir: Path) -> list[list[str]]:
    """Rows (layer, stage, codes removed) of a demo's edit, from its flat code ids ((stage * H + head) * C + code)."""
    config = json.loads((demo_dir / "bottleneck" / "bottleneck_config.json").read_text())
    edit = json.loads((demo_dir / "edit.json").read_text())
    per_stage = config["num_heads"] * config["codebook_size"]
    rows = []
    for layer, codes in edit["layers"].items():
        counts = [0] * config["num_stages"]
        for code in codes["codes"]:
            counts[code // per_stage] += 1
        rows += [[layer, str(stage + 1), f"{count:,}"] for stage, count in enumerate(counts)]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--results_dir", default="benchmarks/results/shapes")
    parser.add_argument("--edit_stages", metavar="DEMO_DIR", help="a `codeunlearn demo` output directory")
    args = parser.parse_args()
    if args.edit_stages:
        demo = Path(args.edit_stages)
        if not ((demo / "edit.json").is_file() and (demo / "bottleneck" / "bottleneck_config.json").is_file()):
            parser.exit(
                2, f"error: {demo} holds no edit.json and bottleneck/ -- fix: pass a `codeunlearn demo` output\n"
            )
        print(markdown_table(["layer", "stage", "codes removed"], stage_counts(Path(args.edit_stages)), "rrr"))
    else:
        if not (Path(args.results_dir) / "fidelity.jsonl").is_file():
            parser.exit(
                2, f"error: no fidelity.jsonl in {args.results_dir} -- fix: run the shape study's scripts first\n"
            )
        print(markdown_table(HEADER, shape_rows(Path(args.results_dir))))


if __name__ == "__main__":
    main()
