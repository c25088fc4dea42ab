"""Figures of suite reports, drawn with the package's shared figure helpers (`codeunlearn.figures`: Agg backend,
atomic and deterministic files).

- `group_chart`: one PNG per report section; one panel per score, bars for this model, the base model (when a
  baseline is given) and chance (when the score has one). Scores have different scales (a loss near 3, an accuracy
  near 0.5), so every score gets its own panel and axis.
- `tradeoff_scatter`: one point per model of a combined table, labelled with its row name, as PNG and SVG:
  x = retain loss increase, y = forget loss increase (for a topic measured by probes alone, such as a fact topic:
  the forget probes' accuracy drop) against a reference row, drawn as a star at the origin; a random-codes control
  is drawn with a cross. Up and left is better (forgets more, costs less elsewhere).
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Literal

from codeunlearn.evaluate.metrics.base import MetricResult
from codeunlearn.figures import new_figure, plain, save_figure, svg_id

PANEL_COLUMNS = 4
RETAIN_LINEAR = 0.1  # nat/token: the trade-off axes stay linear within these of zero
FORGET_LINEAR = 1.0
SYMLOG_SPREAD = 20.0
COLORS = {"model": "#1f77b4", "base": "#7f7f7f", "chance": "#d62728", "reference": "#000000", "control": "#7f7f7f"}


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def group_chart(
    results: Sequence[MetricResult],
    baseline: dict[str, MetricResult] | None,
    title: str,
    path: str | Path,
) -> Path | None:
    """Bar panels for every finite score of `results` (one report section); None when there is nothing to plot."""
    panels = [(r, key) for r in results for key, value in r.scores.items() if _finite(value)]
    if not panels:
        return None
    columns = min(PANEL_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    with new_figure(figsize=(3.2 * columns, 2.6 * rows)) as fig:
        axes = fig.subplots(rows, columns, squeeze=False)
        for ax, (result, key) in zip(axes.flat, panels, strict=False):
            labels, values, colors = ["model"], [result.scores[key]], [COLORS["model"]]
            base = baseline.get(result.name) if baseline else None
            if base is not None and _finite(base.scores.get(key)):
                labels.append("base")
                values.append(base.scores[key])
                colors.append(COLORS["base"])
            if _finite(result.chance.get(key)):
                labels.append("chance")
                values.append(result.chance[key])
                colors.append(COLORS["chance"])
            bars = ax.bar(labels, values, color=colors)
            ax.bar_label(bars, fmt="%.3g", fontsize=7)
            ax.set_title(plain(f"{result.name}\n{key}"), fontsize=8)
            ax.tick_params(labelsize=7)
            ax.margins(y=0.15)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle(plain(title), fontsize=10)
        fig.tight_layout()
        (written,) = save_figure(fig, Path(path), formats=("png",))
    return written


def tradeoff_scatter(
    points: dict[str, tuple[float, float]],
    reference: str,
    path: str | Path,
    forget_axis: Literal["loss", "accuracy"] = "loss",
    controls: Collection[str] = (),
) -> list[Path] | None:
    """Scatter of (retain loss increase, forgetting) per row against `reference` to `path` (.png and .svg);
    forgetting is the forget loss increase, or with `forget_axis="accuracy"` the forget probes' accuracy drop.

    Every point is labelled with its row name; `reference` is a star at the origin (its own changes are zero by
    definition), the rows named in `controls` (random-codes controls) are crosses, every other row a coloured dot.
    Returns the paths written, or None without a finite point."""
    points = {name: xy for name, xy in points.items() if _finite(xy[0]) and _finite(xy[1])}
    if not points:
        return None
    with new_figure(figsize=(6.4, 4.8)) as fig:
        ax = fig.add_subplot()
        ax.axhline(0.0, color="#bbbbbb", linewidth=0.8)
        ax.axvline(0.0, color="#bbbbbb", linewidth=0.8)
        ax.scatter([0.0], [0.0], s=90, marker="*", color=COLORS["reference"], zorder=3, gid=svg_id("row", reference))
        ax.annotate(
            plain(f"{reference} (reference)"), (0.0, 0.0), textcoords="offset points", xytext=(5, -11), fontsize=8
        )
        for name, (x, y) in points.items():
            if name == reference:
                continue
            gid = svg_id("row", name)
            if name in controls:
                ax.scatter([x], [y], s=48, marker="X", color=COLORS["control"], zorder=3, gid=gid)
            else:
                ax.scatter([x], [y], s=36, zorder=3, gid=gid)
            ax.annotate(plain(name), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        # A method that wrecks the model (tens of nat) would squash every other point into a corner: past a spread
        # of SYMLOG_SPREAD linear ranges the axis turns symmetric-log, linear near zero where the budgets are.
        ax.margins(0.12)  # room for the outermost points' labels
        x_log = _symlog(ax.set_xscale, [x for x, _ in points.values()], RETAIN_LINEAR)
        ax.set_xlabel(plain(f"retain loss increase vs {reference} (nat/token){x_log}"))
        if forget_axis == "accuracy":
            ax.set_ylabel(plain(f"forget-probe accuracy drop vs {reference}"))
            ax.set_title("Forgetting (probe accuracy) vs side effects (held-out retain loss)", fontsize=10)
        else:
            y_log = _symlog(ax.set_yscale, [y for _, y in points.values()], FORGET_LINEAR)
            ax.set_ylabel(plain(f"forget loss increase vs {reference} (nat/token){y_log}"))
            ax.set_title("Forgetting vs side effects (held-out text loss)", fontsize=10)
        if controls:
            ax.text(0.01, 0.01, "x: random-codes control", transform=ax.transAxes, fontsize=7, color="#555555")
        fig.tight_layout()
        return save_figure(fig, Path(path))


def _symlog(set_scale, values: Sequence[float], linear: float) -> str:
    """Make an axis symmetric-log when its values reach past SYMLOG_SPREAD x `linear`; returns the label's note."""
    if max((abs(v) for v in values), default=0.0) <= SYMLOG_SPREAD * linear:
        return ""
    set_scale("symlog", linthresh=linear)
    return f", symmetric log past ±{linear:g}"
