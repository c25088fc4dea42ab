"""PNG figures of suite reports (matplotlib, Agg backend: no display needed), each written atomically.

- `group_chart`: one figure per report section; one panel per score, bars for this model, the base model (when a
  baseline is given) and chance (when the score has one). Scores have different scales (a loss near 3, an accuracy
  near 0.5), so every score gets its own panel and axis.
- `tradeoff_scatter`: one point per model of a combined table: x = retain loss increase, y = forget loss increase
  (for a topic measured by probes alone, such as a fact topic: the forget probes' accuracy drop) against a reference
  row. Up and left is better (forgets more, costs less elsewhere).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from codeunlearn.evaluate.metrics.base import MetricResult
from codeunlearn.io import atomic_write_bytes

PANEL_COLUMNS = 4
RETAIN_LINEAR = 0.1  # nat/token: the trade-off axes stay linear within these of zero
FORGET_LINEAR = 1.0
SYMLOG_SPREAD = 20.0
COLORS = {"model": "#1f77b4", "base": "#7f7f7f", "chance": "#d62728"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buffer.getvalue())
    return path


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
    plt = _pyplot()
    columns = min(PANEL_COLUMNS, len(panels))
    rows = math.ceil(len(panels) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.6 * rows), squeeze=False)
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
        ax.set_title(f"{result.name}\n{key}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.margins(y=0.15)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def tradeoff_scatter(
    points: dict[str, tuple[float, float]],
    reference: str,
    path: str | Path,
    forget_axis: Literal["loss", "accuracy"] = "loss",
) -> Path | None:
    """Scatter of (retain loss increase, forgetting) per row against `reference`; forgetting is the forget loss
    increase, or with `forget_axis="accuracy"` the forget probes' accuracy drop. None without points."""
    points = {name: xy for name, xy in points.items() if _finite(xy[0]) and _finite(xy[1])}
    if not points:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.0, 4.5))
    for name, (x, y) in points.items():
        ax.scatter([x], [y], s=36)
        ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.axhline(0.0, color="#bbbbbb", linewidth=0.8)
    ax.axvline(0.0, color="#bbbbbb", linewidth=0.8)
    # A method that wrecks the model (tens of nat) would squash every other point into a corner: past a spread of
    # SYMLOG_SPREAD linear ranges the axis turns symmetric-log, linear near zero where the budgets are.
    ax.margins(0.12)  # room for the outermost points' labels
    x_log = _symlog(ax.set_xscale, [x for x, _ in points.values()], RETAIN_LINEAR)
    ax.set_xlabel(f"retain loss increase vs {reference} (nat/token){x_log}")
    if forget_axis == "accuracy":
        ax.set_ylabel(f"forget-probe accuracy drop vs {reference}")
        ax.set_title("Forgetting (probe accuracy) vs side effects (held-out retain loss)", fontsize=10)
    else:
        y_log = _symlog(ax.set_yscale, [y for _, y in points.values()], FORGET_LINEAR)
        ax.set_ylabel(f"forget loss increase vs {reference} (nat/token){y_log}")
        ax.set_title("Forgetting vs side effects (held-out text loss)", fontsize=10)
    fig.tight_layout()
    try:
        return _save(fig, Path(path))
    finally:
        plt.close(fig)


def _symlog(set_scale, values: Sequence[float], linear: float) -> str:
    """Make an axis symmetric-log when its values reach past SYMLOG_SPREAD x `linear`; returns the label's note."""
    if max((abs(v) for v in values), default=0.0) <= SYMLOG_SPREAD * linear:
        return ""
    set_scale("symlog", linthresh=linear)
    return f", symmetric log past ±{linear:g}"
