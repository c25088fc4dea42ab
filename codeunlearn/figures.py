"""Figures the commands write beside the numbers they illustrate (matplotlib, Agg backend: no display needed), each
as PNG and SVG.

- `training_curves` (`codeunlearn train`, `training_curves.{png,svg}` next to `metrics.jsonl`; redrawn from any
  `metrics.jsonl` by `training_curves_from_file`): the loss, FVU, SAE L0, codes used in each step's batch and dead
  codes (SAE: dead features) over the logged steps.
- `firing_frequency` (`codeunlearn forget`, `firing_frequency.{png,svg}`): every code's (SAE: feature's) firing
  frequency on forget vs retain text, one panel per layer, the selected codes and the random control marked, and
  the histogram of their log frequency ratios.
- `token_loss_increase` (`codeunlearn eval`, the loss table, `token_loss_increase.{png,svg}`): the mean held-out
  forget loss increase by token position, the first held-out forget passage drawn word by word in the colour of
  its loss increase, and the passage's 15 tokens whose loss rose most.

The helpers every figure of the package shares (`pyplot`, `new_figure`, `save_figure`, `draw_or_note`) are here
too; `codeunlearn.evaluate.suite.plots` (a suite report's bar charts, the combined table's trade-off) draws with
them.

A figure takes plain numbers (lists, dicts, NumPy arrays, the dataclasses here), so any layer may call it, and
returns what it drew, so a test can check the data behind a picture. Output is deterministic: SVG ids are salted
with a fixed string and no date is written, so the same numbers give the same bytes. A figure illustrates numbers
a command has already written, so a command draws it through `draw_or_note`: an error while drawing is one `note:`
line, never a failed command.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from codeunlearn.io import atomic_write_bytes

T = TypeVar("T")

DPI = 110
FORMATS = ("png", "svg")
# Matplotlib names SVG elements by hashing with a random salt unless one is set: a fixed salt makes the same figure
# the same bytes.
SVG_SALT = "codeunlearn"
METADATA = {"png": {"Software": None}, "svg": {"Date": None}}

TRAINING_CURVES_NAME = "training_curves"
FIRING_FREQUENCY_NAME = "firing_frequency"
TOKEN_LOSS_NAME = "token_loss_increase"

# Panels of the training curves: a title and the metrics.jsonl keys drawn in it. A key holding a number is one
# series; a key holding {layer: number} is one series per layer.
TRAINING_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("loss", ("loss", "kl")),
    ("FVU (fraction of variance unexplained)", ("fvu", "fit_fvu")),
    ("L0 (SAE features firing per token)", ("l0_by_layer",)),
    ("codes used in the step's batch", ("codes_used_in_batch",)),
    ("dead codes / features", ("dead_codes", "dead_codes_in_window", "dead_features")),
)
FIRING_PANELS = 4  # layers drawn by `firing_frequency` (the first ones, in layer order)
TEXT_FONT_SIZE = 8.0
MONOSPACE_ADVANCE = 0.602  # DejaVu Sans Mono: a character's advance in em
TEXT_AXES_INCHES = 8.6  # width of the passage's text panel
COLORS = {
    "selected": "#d62728",
    "control": "#1f77b4",
    "other": "#9e9e9e",
    "reference": "#000000",
}


# ------------------------------------------------------------------------------------------------ shared helpers


def pyplot() -> Any:
    """`matplotlib.pyplot` on the Agg backend (files only; never needs a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


@contextlib.contextmanager
def new_figure(*args: Any, **kwargs: Any) -> Iterator[Any]:
    """A figure (`pyplot.figure(*args, **kwargs)`), closed when the block ends whatever happens in it; a missing
    glyph (a CJK token, an emoji) draws as a box without a warning per character."""
    plt = pyplot()
    fig = plt.figure(*args, **kwargs)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font")
            yield fig
    finally:
        plt.close(fig)


def save_figure(fig: Any, path: str | Path, formats: Sequence[str] = FORMATS) -> list[Path]:
    """Write `fig` as `path` with its suffix replaced by each of `formats` (PNG and SVG by default), each file
    atomically and deterministically (fixed SVG salt, no date); returns the paths."""
    plt = pyplot()
    written = []
    with plt.rc_context({"svg.hashsalt": SVG_SALT}):
        for fmt in formats:
            target = Path(path).with_suffix(f".{fmt}")
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=DPI, bbox_inches="tight", metadata=METADATA.get(fmt))
            atomic_write_bytes(target, buffer.getvalue())
            written.append(target)
    return written


def draw_or_note(what: str, draw: Callable[..., T], *args: Any, **kwargs: Any) -> T | None:
    """`draw(*args, **kwargs)`, or None and one `note:` line when it raises: a figure only illustrates numbers a
    command has already written, so it is never the reason the command fails."""
    try:
        return draw(*args, **kwargs)
    except Exception as err:  # any error: matplotlib missing, a font, a full disk, odd numbers
        reason = " ".join(f"{type(err).__name__}: {err}".split())
        print(f"note: the {what} figure was not drawn ({reason}); the results are written")
        return None


def plain(text: str) -> str:
    """`text` as matplotlib draws it literally: a `$` would start mathtext."""
    return text.replace("$", r"\$")


def svg_id(*parts: object) -> str:
    """An SVG element id (`gid`) from `parts`: letters, digits, `_`, `.` and `-` only."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", "-".join(str(p) for p in parts)).strip("-")


# ------------------------------------------------------------------------------------------------ training curves


def training_series(records: Sequence[Mapping[str, Any]]) -> dict[str, dict[str, dict[str, list[float]]]]:
    """The series `training_curves` draws from metrics.jsonl records: panel title -> series label -> `steps` and
    `values` (one point per record that logs the key; panels and series without points are left out)."""
    panels: dict[str, dict[str, dict[str, list[float]]]] = {}
    for title, keys in TRAINING_PANELS:
        series: dict[str, dict[str, list[float]]] = {}
        for record in records:
            for key in keys:
                value = record.get(key)
                items = value.items() if isinstance(value, Mapping) else [(None, value)]
                for layer, number in items:
                    if not _finite(number):
                        continue
                    label = key if layer is None else f"{key} (layer {layer})"
                    points = series.setdefault(label, {"steps": [], "values": []})
                    points["steps"].append(float(record["step"]))
                    points["values"].append(float(number))
        if series:
            panels[title] = series
    return panels


def training_curves(records: Sequence[Mapping[str, Any]], path: str | Path) -> dict[str, Any] | None:
    """Draw the training curves of metrics.jsonl `records` (one panel per quantity logged: loss, FVU, L0, codes
    used, dead codes) to `path` (.png and .svg). Returns `{"panels": training_series(records), "gids": {panel:
    {label: svg id}}, "paths": [...]}`, or None when no record logs anything drawable."""
    panels = training_series(records)
    if not panels:
        return None
    columns = min(3, len(panels))
    rows = math.ceil(len(panels) / columns)
    gids: dict[str, dict[str, str]] = {}
    with new_figure(figsize=(4.4 * columns, 3.0 * rows)) as fig:
        axes = fig.subplots(rows, columns, squeeze=False)
        for ax, (title, series) in zip(axes.flat, panels.items(), strict=False):
            gids[title] = {}
            for label, points in series.items():
                gid = svg_id("series", title, label)
                gids[title][label] = gid
                # markers: a lone point (the k-means fit's FVU at step 1) shows too
                ax.plot(points["steps"], points["values"], marker="o", markersize=3, label=plain(label), gid=gid)
            ax.set_title(plain(title), fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
            if len(series) > 1:
                ax.legend(fontsize=6)
        for ax in list(axes.flat)[len(panels) :]:
            ax.axis("off")
        fig.suptitle("Training (metrics.jsonl)", fontsize=10)
        fig.tight_layout()
        written = save_figure(fig, path)
    return {"panels": panels, "gids": gids, "paths": [str(p) for p in written]}


def read_metrics(metrics_path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (one JSON object a line; blank lines skipped)."""
    lines = Path(metrics_path).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def training_curves_from_file(metrics_path: str | Path, path: str | Path | None = None) -> dict[str, Any] | None:
    """Redraw the training curves of a run from its metrics.jsonl, by default to `training_curves.{png,svg}` beside
    it; returns what `training_curves` returns."""
    metrics_path = Path(metrics_path)
    target = metrics_path.parent / TRAINING_CURVES_NAME if path is None else Path(path)
    return training_curves(read_metrics(metrics_path), target)


# ------------------------------------------------------------------------------------------------ firing frequency


@dataclass
class LayerFiring:
    """What `firing_frequency` draws for one bottleneck layer.

    Attributes:
        layer: the decoder layer.
        forget: every code's (feature's) firing frequency on the forget text (fraction of counted tokens).
        retain: the same on the retain text.
        forget_tokens: tokens the forget frequencies were counted on.
        retain_tokens: tokens the retain frequencies were counted on.
        selected: the edit's codes at this layer.
        control: the random control's codes at this layer (empty: none).
    """

    layer: int
    forget: Any
    retain: Any
    forget_tokens: int
    retain_tokens: int
    selected: list[int]
    control: list[int] = field(default_factory=list)


def firing_frequency(
    layers: Sequence[LayerFiring], path: str | Path, unit: str = "codes", max_panels: int = FIRING_PANELS
) -> dict[str, Any] | None:
    """Forget vs retain firing frequency of every code, one column per layer (the first `max_panels` layers, in
    layer order; the title says which), to `path` (.png and .svg).

    Top row: a log-log scatter, x = retain frequency, y = forget frequency, every code that fires on either text
    in grey, the edit's codes in red and the random control's with crosses; a code that never fires on one side is
    drawn at half a token's frequency on that side. Bottom row: histograms of the log frequency ratio
    ln((f_forget + a) / (f_retain + a)), a = 1 / retain tokens (the selection's `frequency_ratio` score before its
    eligibility rules), of the same three groups.

    Returns `{"layers_drawn": [...], "layers": {layer: {"selected": codes, "control": codes, "codes_drawn": n,
    "gids": {...}}}, "paths": [...]}`, or None without layers."""
    ordered = sorted(layers, key=lambda item: item.layer)
    drawn = ordered[:max_panels]
    if not drawn:
        return None
    result: dict[str, Any] = {"layers_drawn": [item.layer for item in drawn], "layers": {}}
    with new_figure(figsize=(4.4 * len(drawn), 7.4)) as fig:
        axes = fig.subplots(2, len(drawn), squeeze=False)
        for column, item in enumerate(drawn):
            result["layers"][item.layer] = _firing_panels(axes[0][column], axes[1][column], item, unit)
        shown = ", ".join(str(item.layer) for item in drawn)
        which = f"layer {shown}" if len(ordered) == 1 else f"layers {shown}"
        if len(ordered) > len(drawn):
            which += f" (the first {len(drawn)} of {len(ordered)} layers)"
        fig.suptitle(f"Firing frequency of {unit} on forget vs retain text, {which}", fontsize=10)
        fig.tight_layout()
        result["paths"] = [str(p) for p in save_figure(fig, path)]
    return result


def _firing_panels(scatter_ax: Any, histogram_ax: Any, item: LayerFiring, unit: str) -> dict[str, Any]:
    """One layer's scatter and histogram; returns what was marked."""
    forget = np.asarray(item.forget, dtype=np.float64)
    retain = np.asarray(item.retain, dtype=np.float64)
    selected = np.asarray(sorted(set(item.selected)), dtype=np.int64)
    control = np.asarray(sorted(set(item.control)), dtype=np.int64)
    live = (forget > 0) | (retain > 0)
    other = live.copy()
    other[selected] = False
    other[control] = False
    # Log axes cannot show 0: a side on which a code never fired is drawn at half a token's frequency.
    floor_forget, floor_retain = 0.5 / max(item.forget_tokens, 1), 0.5 / max(item.retain_tokens, 1)
    x, y = np.maximum(retain, floor_retain), np.maximum(forget, floor_forget)
    gids = {name: svg_id(name, "layer", item.layer) for name in ("other", "selected", "control")}
    # Hundreds of thousands of grey points would make a huge SVG: they are embedded as an image.
    crowded = int(other.sum()) > 5000  # a codebook's hundreds of thousands of codes; an SAE's few thousand features
    scatter_ax.scatter(
        x[other],
        y[other],
        s=2 if crowded else 6,
        color=COLORS["other"],
        alpha=0.4 if crowded else 0.7,
        linewidths=0,
        rasterized=True,
        gid=gids["other"],
    )
    if len(control):
        scatter_ax.scatter(
            x[control],
            y[control],
            s=16,
            marker="x",
            color=COLORS["control"],
            label=f"random control ({len(control)})",
            gid=gids["control"],
        )
    scatter_ax.scatter(
        x[selected],
        y[selected],
        s=10,
        color=COLORS["selected"],
        label=f"selected ({len(selected)})",
        gid=gids["selected"],
    )
    low = min(floor_forget, floor_retain)
    high = max(float(x[live].max(initial=low)), float(y[live].max(initial=low)))
    scatter_ax.plot([low, high], [low, high], color="#555555", linewidth=0.8, linestyle="--", label="equal frequency")
    scatter_ax.set_xscale("log")
    scatter_ax.set_yscale("log")
    scatter_ax.set_xlabel("firing frequency on retain text", fontsize=8)
    scatter_ax.set_ylabel("firing frequency on forget text", fontsize=8)
    scatter_ax.set_title(f"layer {item.layer}: {int(live.sum()):,} {unit} fire ({int(other.sum()):,} grey)", fontsize=9)
    scatter_ax.tick_params(labelsize=7)
    scatter_ax.legend(fontsize=6, loc="lower right")

    pseudo = 1.0 / max(item.retain_tokens, 1)
    ratio = np.log((forget + pseudo) / (retain + pseudo))
    finite = ratio[live]
    bins = np.linspace(float(finite.min()), float(finite.max()) + 1e-9, 41) if finite.size else 40
    histogram_ax.hist(ratio[live], bins=bins, color=COLORS["other"], label=f"every {unit[:-1]} that fires")
    if len(control):
        histogram_ax.hist(ratio[control], bins=bins, histtype="step", color=COLORS["control"], label="random control")
    histogram_ax.hist(
        ratio[selected], bins=bins, histtype="step", linewidth=1.5, color=COLORS["selected"], label="selected"
    )
    histogram_ax.set_yscale("log")
    histogram_ax.set_xlabel("ln((f_forget + a) / (f_retain + a)), a = 1 / retain tokens", fontsize=8)
    histogram_ax.set_ylabel(unit, fontsize=8)
    histogram_ax.tick_params(labelsize=7)
    histogram_ax.legend(fontsize=6)
    return {
        "selected": selected.tolist(),
        "control": control.tolist(),
        "codes_drawn": int(live.sum()),
        "gids": gids,
    }


# ------------------------------------------------------------------------------------------------ token losses


def token_loss_increase(data: Mapping[str, Any], path: str | Path) -> list[Path]:
    """Draw the held-out forget loss increase of `data` (what `codeunlearn.evaluate.loss_table.token_loss_increase`
    returns) to `path` (.png and .svg): (a) the mean increase by token position, one line per edited row; (b) the
    first held-out forget passage, each token in the colour of its increase; (c) the passage's tokens whose loss
    rose most. Returns the paths written."""
    reference, passage = data["reference"], data["passage"]
    tokens = passage["tokens"]
    layout, lines = _text_layout([t["token"] for t in tokens])
    text_height = 0.26 * max(lines, 1) + 0.5
    top = data["top"]
    bar_height = 0.17 * max(len(top), 1) + 0.5
    line_height = 2.4
    gap = 0.9
    height = line_height + text_height + bar_height + 3 * gap
    width = TEXT_AXES_INCHES + 1.4
    with new_figure(figsize=(width, height)) as fig:

        def axes(bottom: float, box: float) -> Any:  # inches from the bottom -> figure fractions
            return fig.add_axes((1.0 / width, bottom / height, TEXT_AXES_INCHES / width, box / height))

        line_ax = axes(2 * gap + bar_height + text_height + 0.3, line_height)
        text_ax = axes(gap + bar_height + 0.55, text_height)
        bar_ax = axes(0.3, bar_height)
        for row, values in data["by_position"].items():
            label = plain(f"{row} (mean {data['mean_increase'][row]:+.4f})")
            line_ax.plot(data["positions"], values, linewidth=1.0, label=label, gid=svg_id("by-position", row))
        line_ax.axhline(0.0, color="#bbbbbb", linewidth=0.8)
        line_ax.set_xlabel("position of the predicted token in the chunk", fontsize=8)
        line_ax.set_ylabel("loss increase (nat)", fontsize=8)
        line_ax.set_title(
            plain(f"(a) Mean held-out forget loss increase by position, against the {reference!r} row"), fontsize=9
        )
        line_ax.tick_params(labelsize=7)
        line_ax.legend(fontsize=6)
        norm, cmap = _increase_colors([t["increase"] for t in tokens])
        _draw_passage(text_ax, tokens, layout, lines, norm, cmap)
        text_ax.set_title(
            plain(
                f"(b) Held-out forget passage (chunk {passage['chunk']}, positions {tokens[0]['position']}-"
                f"{tokens[-1]['position']}): {passage['row']} vs {reference}; red = harder"
            ),
            fontsize=9,
        )
        colorbar_ax = fig.add_axes((1.0 / width, (gap + bar_height + 0.3) / height, 3.0 / width, 0.1 / height))
        fig.colorbar(_mappable(norm, cmap), cax=colorbar_ax, orientation="horizontal")
        colorbar_ax.set_xlabel("loss increase (nat)", fontsize=7)
        colorbar_ax.tick_params(labelsize=6)
        labels = [plain(f"{t['token'].strip()!r} @{t['position']}") for t in top]
        bar_ax.barh(range(len(top)), [t["increase"] for t in top], color=[cmap(norm(t["increase"])) for t in top])
        bar_ax.set_yticks(range(len(top)), labels, fontsize=7, fontfamily="monospace")
        bar_ax.invert_yaxis()
        bar_ax.axvline(0.0, color="#bbbbbb", linewidth=0.8)
        bar_ax.set_xlabel("loss increase (nat)", fontsize=8)
        bar_ax.set_title(f"(c) The passage's {len(top)} tokens whose loss rose most", fontsize=9)
        bar_ax.tick_params(axis="x", labelsize=7)
        return save_figure(fig, path)


def _shown(piece: str) -> tuple[int, str]:
    """(leading spaces, visible text) of a token's text piece: line breaks and tabs as arrows, a space-only token
    as an open box."""
    stripped = piece.lstrip(" ")
    text = stripped.replace("\r", "").replace("\n", "\u21b5").replace("\t", "\u2192")
    return len(piece) - len(stripped), text or "\u2423"


def _text_layout(pieces: Sequence[str]) -> tuple[list[tuple[int, int, str]], int]:
    """(line, column, text) of every token in a monospace block as wide as the text panel, wrapping between tokens;
    and the number of lines."""
    width = int(TEXT_AXES_INCHES * 72 / (TEXT_FONT_SIZE * MONOSPACE_ADVANCE)) - 2
    layout, line, column = [], 0, 0
    for piece in pieces:
        lead, text = _shown(piece)
        if column > 0 and column + lead + len(text) > width:
            line, column, lead = line + 1, 0, 0
        layout.append((line, column + lead, text))
        column += lead + len(text)  # a word split into several tokens reads as one word in several colours
    return layout, line + 1


def _increase_colors(increases: Sequence[float]) -> tuple[Any, Any]:
    """A colour scale centred on 0 (white: unchanged, red: harder, blue: easier), symmetric about it."""
    import matplotlib

    bound = max((abs(v) for v in increases if math.isfinite(v)), default=0.0) or 1e-6
    return matplotlib.colors.Normalize(-bound, bound), matplotlib.colormaps["RdBu_r"]


def _mappable(norm: Any, cmap: Any) -> Any:
    import matplotlib

    return matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap)


def _draw_passage(ax: Any, tokens: Sequence[Mapping[str, Any]], layout, lines: int, norm: Any, cmap: Any) -> None:
    """Each token at its (line, column), on a box in the colour of its loss increase."""
    columns = int(TEXT_AXES_INCHES * 72 / (TEXT_FONT_SIZE * MONOSPACE_ADVANCE))
    ax.set_xlim(0, columns)
    ax.set_ylim(lines - 0.4, -0.6)
    ax.axis("off")
    for token, (line, column, text) in zip(tokens, layout, strict=True):
        shade = float(norm(token["increase"]))
        ax.text(
            column,
            line,
            plain(text),
            fontsize=TEXT_FONT_SIZE,
            fontfamily="monospace",
            va="center",
            ha="left",
            color="white" if abs(shade - 0.5) > 0.35 else "black",  # readable on the darkest boxes
            bbox={"boxstyle": "square,pad=0.12", "facecolor": cmap(shade), "edgecolor": "none"},
        )


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
