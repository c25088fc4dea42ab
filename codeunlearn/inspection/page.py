"""Rendering an `InspectionReport`: one self-contained HTML page, a Markdown page and a plain terminal table.

The HTML page loads nothing (no network, no CDN): its CSS, its SVG histograms and a few lines of JavaScript (a units
table that sorts when a column header is clicked and filters as one types) are inline. Every token and every name
is escaped, since corpus text is untrusted (a token may well be `<script>`); whitespace a reader could not see is
drawn with markers (newline ↵, tab ⇥, a space-only token ␣).
"""

from __future__ import annotations

import html
import math

from codeunlearn.inspection.contexts import Context
from codeunlearn.inspection.histogram import Histogram, aligned
from codeunlearn.inspection.logit_lens import TokenEffect
from codeunlearn.inspection.report import GROUPS, CorpusFiring, InspectionReport, UnitReport
from codeunlearn.tables import markdown_table

MARKERS = {"\n": "↵", "\t": "⇥", "\r": "␍"}
SPACE_MARKER = "␣"
EMPTY_MARKER = "∅"
LENS_TOKENS_IN_TABLE = 3


# ---------------------------------------------------------------------------------------------------------- tokens
def _pieces(token: str) -> list[tuple[str, bool]]:
    """A token as (text, is_marker) pieces: invisible characters replaced by markers."""
    if token == "":
        return [(EMPTY_MARKER, True)]
    if token.strip(" ") == "":
        return [(SPACE_MARKER * len(token), True)]
    pieces: list[tuple[str, bool]] = []
    for char in token:
        if char in MARKERS:
            pieces.append((MARKERS[char], True))
        elif ord(char) < 32 or ord(char) == 127:
            pieces.append((f"\\x{ord(char):02x}", True))
        elif pieces and not pieces[-1][1]:
            pieces[-1] = (pieces[-1][0] + char, False)
        else:
            pieces.append((char, False))
    return pieces


def plain_token(token: str) -> str:
    """A token as plain text with its invisible characters shown as markers (terminal and Markdown)."""
    return "".join(text for text, _ in _pieces(token))


def token_html(token: str) -> str:
    """A token as escaped HTML, markers in a `ws` span."""
    return "".join(
        f'<span class="ws">{html.escape(text)}</span>' if marker else html.escape(text)
        for text, marker in _pieces(token)
    )


def markdown_text(text: str) -> str:
    """Text safe inside Markdown (a table cell included): HTML escaped, Markdown's marks backslash-escaped."""
    escaped = html.escape(text, quote=False)
    return "".join(f"\\{c}" if c in "\\`*_[]|#~<>!" else c for c in escaped)


# ---------------------------------------------------------------------------------------------------------- numbers
def _count(number: int, unit_name: str) -> str:
    """`3 codes`, `1 code`."""
    return f"{number:,} {unit_name if number != 1 else unit_name.rstrip('s')}"


def _percent(value: float) -> str:
    return f"{100 * value:.3g}%"


def _number(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if math.isinf(value):
        return "∞"
    return f"{value:.{digits}g}"


def _data_value(value: float | None) -> str:
    """A sortable number for a table cell (JavaScript's parseFloat reads 'Infinity'; missing sorts first)."""
    if value is None or math.isnan(value):
        return "-Infinity"
    return "Infinity" if math.isinf(value) else repr(float(value))


def _group_means(report: InspectionReport, group: str) -> tuple[float, float] | None:
    units = report.group(group)
    if not units:
        return None
    return (
        sum(u.forget.frequency for u in units) / len(units),
        sum(u.retain.frequency for u in units) / len(units),
    )


# ---------------------------------------------------------------------------------------------------------- HTML
CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5rem auto; max-width: 72rem;
  padding: 0 1rem; color: #1d1d1f; background: #fff; }
h1 { font-size: 1.5rem; margin-bottom: .3rem; } h2 { margin-top: 2rem; } h3 { margin: 0 0 .4rem; font-size: 1.05rem; }
h4 { margin: .7rem 0 .3rem; font-size: .9rem; color: #444; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: .15rem 1rem; margin: .5rem 0 1rem; }
dl.meta dt { font-weight: 600; color: #555; } dl.meta dd { margin: 0; overflow-wrap: anywhere; }
.note { color: #6b4e00; background: #fff7e0; padding: .3rem .6rem; border-radius: 4px; display: inline-block; }
#filter { width: 24rem; max-width: 100%; padding: .35rem .5rem; margin: .3rem 0 .6rem; font: inherit; }
#shown { color: #666; margin-left: .6rem; }
table { border-collapse: collapse; }
#units { width: 100%; font-size: 13px; }
#units th { cursor: pointer; user-select: none; background: #f2f2f4; position: sticky; top: 0; text-align: left; }
#units th[data-dir="asc"]::after { content: " ▲"; } #units th[data-dir="desc"]::after { content: " ▼"; }
#units td, #units th { border-bottom: 1px solid #e4e4e8; padding: .25rem .45rem; vertical-align: top; }
#units td.num { text-align: right; font-variant-numeric: tabular-nums; }
#units tr.control td:first-child { color: #777; }
.unit { border: 1px solid #e0e0e6; border-radius: 6px; padding: .8rem 1rem; margin: 1rem 0; }
.unit .stats { color: #333; margin: .2rem 0 .4rem; }
.card-body { display: grid; grid-template-columns: minmax(15rem, 19rem) minmax(0, 1fr); gap: .5rem 2rem; }
@media (max-width: 50rem) { .card-body { grid-template-columns: minmax(0, 1fr); } }
.ctx { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 12.5px; white-space: pre-wrap;
  word-break: break-word; }
ol.contexts { padding-left: 1.6rem; margin: .2rem 0; } ol.contexts li { margin: .15rem 0; }
mark.fire { background: #ffcf4d; color: #000; border-radius: 2px; padding: 0 1px; font-weight: 600; }
.ws { color: #999; }
.strength { color: #777; font-size: 11.5px; margin-left: .5rem; font-family: ui-monospace, monospace; }
.none { color: #8a1c1c; font-style: italic; }
table.lens td { padding: .05rem .5rem .05rem 0; font-size: 12.5px; }
table.lens td.logit { color: #777; text-align: right; font-variant-numeric: tabular-nums; }
table.lens th { text-align: left; font-size: 12px; color: #555; padding-right: .8rem; }
.pos { color: #0b6b2b; } .neg { color: #9b1c1c; }
svg.hist { display: block; } svg.hist text { font: 10px system-ui, sans-serif; fill: #555; }
"""

SCRIPT = """
(function () {
  var table = document.getElementById('units');
  var body = table.tBodies[0];
  var headers = Array.prototype.slice.call(table.tHead.rows[0].cells);
  headers.forEach(function (th, column) {
    th.addEventListener('click', function () {
      var dir = th.dataset.dir === 'asc' ? 'desc' : 'asc';
      headers.forEach(function (h) { delete h.dataset.dir; h.removeAttribute('aria-sort'); });
      th.dataset.dir = dir;
      th.setAttribute('aria-sort', dir === 'asc' ? 'ascending' : 'descending');
      var numeric = th.dataset.type === 'number';
      var key = function (row) {
        var cell = row.cells[column];
        var text = cell.dataset.value !== undefined ? cell.dataset.value : cell.textContent;
        return numeric ? parseFloat(text) : text.toLowerCase();
      };
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = key(a), y = key(b);
        var order = x < y ? -1 : (x > y ? 1 : 0);
        return dir === 'asc' ? order : -order;
      });
      rows.forEach(function (row) { body.appendChild(row); });
    });
  });
  var filter = document.getElementById('filter');
  var shown = document.getElementById('shown');
  var update = function () {
    var query = filter.value.trim().toLowerCase();
    var count = 0;
    Array.prototype.forEach.call(body.rows, function (row) {
      var keep = query === '' || row.textContent.toLowerCase().indexOf(query) !== -1;
      row.hidden = !keep;
      if (keep) { count += 1; }
    });
    shown.textContent = count + ' of ' + body.rows.length + ' rows';
  };
  filter.addEventListener('input', update);
  update();
})();
"""


def context_html(context: Context) -> str:
    """A context window as HTML, the firing token in a `mark.fire` element."""
    parts = []
    for index, token in enumerate(context.tokens):
        if index == context.firing:
            title = html.escape(
                f"fires here: {context.strength:.4g} (chunk {context.chunk}, position {context.position})"
            )
            parts.append(f'<mark class="fire" title="{title}">{token_html(token)}</mark>')
        else:
            parts.append(token_html(token))
    return f'<span class="ctx">{"".join(parts)}</span>'


def histogram_svg(histogram: Histogram, caption: str, width: int = 280, height: int = 110) -> str:
    """An activation histogram as an inline SVG bar chart (log-spaced bins, linear counts)."""
    left, right, top, bottom = 30, 6, 14, 18
    plot_w, plot_h = width - left - right, height - top - bottom
    tallest = max(histogram.counts) or 1
    bar_w = plot_w / len(histogram.counts)
    bars = []
    for index, count in enumerate(histogram.counts):
        bar_h = plot_h * count / tallest
        low, high = histogram.edges[index], histogram.edges[index + 1]
        bars.append(
            f'<rect x="{left + index * bar_w:.1f}" y="{top + plot_h - bar_h:.1f}" width="{max(bar_w - 1, 1):.1f}" '
            f'height="{bar_h:.1f}" fill="#4a78c2"><title>[{low:.3g}, {high:.3g}): {count}</title></rect>'
        )
    axis = (
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#999"/>'
        f'<text x="{left}" y="{height - 4}">{histogram.edges[0]:.3g}</text>'
        f'<text x="{left + plot_w}" y="{height - 4}" text-anchor="end">{histogram.edges[-1]:.3g}</text>'
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">activation (log bins)</text>'
        f'<text x="{left - 4}" y="{top + 4}" text-anchor="end">{tallest}</text>'
        f'<text x="{left - 4}" y="{top + plot_h}" text-anchor="end">0</text>'
        f'<text x="{left}" y="{top - 4}">{html.escape(caption)}</text>'
    )
    return (
        f'<svg class="hist" width="{width}" height="{height}" role="img" '
        f'aria-label="{html.escape(caption)}">{"".join(bars)}{axis}</svg>'
    )


def _firing_html(firing: CorpusFiring, side: str) -> str:
    head = f"<h4>top contexts in {side} text ({html.escape(firing.corpus)})</h4>"
    if not firing.contexts:
        return f'{head}<p class="none">no firing in {firing.tokens:,} tokens</p>'
    items = "".join(
        f'<li>{context_html(c)}<span class="strength">{c.strength:.4g}</span></li>' for c in firing.contexts
    )
    return f'{head}<ol class="contexts">{items}</ol>'


def _lens_html(unit: UnitReport, label: str) -> str:
    def column(effects: list[TokenEffect], css: str) -> list[str]:
        return [f'<td class="{css}">{token_html(e.token)}</td><td class="logit">{e.logit:+.3g}</td>' for e in effects]

    promoted, suppressed = column(unit.logits.promoted, "pos"), column(unit.logits.suppressed, "neg")
    rows = "".join(f"<tr>{p}{s}</tr>" for p, s in zip(promoted, suppressed, strict=True))
    return (
        f"<h4>{html.escape(label)}</h4><table class='lens'><tr><th colspan='2'>promoted</th>"
        f"<th colspan='2'>suppressed</th></tr>{rows}</table>"
    )


def _unit_card(report: InspectionReport, unit: UnitReport) -> str:
    singular = report.unit_name.rstrip("s")
    score = f"score {_number(unit.score, 4)} · " if unit.score is not None else "score — (random control) · "
    stats = (
        f"{score}forget {_percent(unit.forget.frequency)} ({unit.forget.count:,} of {unit.forget.tokens:,} tokens) · "
        f"retain {_percent(unit.retain.frequency)} ({unit.retain.count:,} of {unit.retain.tokens:,} tokens) · "
        f"ratio {_number(unit.ratio)}"
    )
    histograms = ""
    drawn = [(side, f) for side, f in (("forget", unit.forget), ("retain", unit.retain)) if f.histogram is not None]
    if drawn:  # one activation axis for both corpora, so their shapes compare
        shared = aligned([f.histogram for _, f in drawn])
        figures = "".join(
            histogram_svg(h, f"{side}: {f.count:,} firings") for (side, f), h in zip(drawn, shared, strict=True)
        )
        histograms = f"<h4>activation histogram</h4>{figures}"
    contexts = "".join(_firing_html(f, side) for side, f in (("forget", unit.forget), ("retain", unit.retain)))
    # The feature-dashboard layout: histogram and logit effects on the left, top contexts on the right.
    return (
        f'<article class="unit" id="{unit.anchor}"><h3>{unit.group} · layer {unit.layer} · {singular} '
        f"{html.escape(unit.label)}</h3><p class='stats'>{stats}</p><div class='card-body'>"
        f"<div>{histograms}{_lens_html(unit, report.logit_lens_label)}</div><div>{contexts}</div></div></article>"
    )


def _table_row(unit: UnitReport) -> str:
    lens = " ".join(token_html(e.token) for e in unit.logits.promoted[:LENS_TOKENS_IN_TABLE])
    top = context_html(unit.forget.contexts[0]) if unit.forget.contexts else '<span class="none">no firing</span>'
    cells = [
        f'<td><a href="#{unit.anchor}">{unit.group}</a></td>',
        f'<td class="num" data-value="{unit.layer}">{unit.layer}</td>',
        f'<td class="num" data-value="{unit.unit}">{unit.unit}</td>',
        f'<td class="num" data-value="{_data_value(unit.score)}">{_number(unit.score, 4)}</td>',
        f'<td class="num" data-value="{_data_value(unit.forget.frequency)}">{_percent(unit.forget.frequency)}</td>',
        f'<td class="num" data-value="{_data_value(unit.retain.frequency)}">{_percent(unit.retain.frequency)}</td>',
        f'<td class="num" data-value="{_data_value(unit.ratio)}">{_number(unit.ratio)}</td>',
        f'<td class="ctx">{lens}</td>',
        f"<td>{top}</td>",
    ]
    return f'<tr class="{unit.group}">{"".join(cells)}</tr>'


def _meta_html(report: InspectionReport) -> str:
    options = report.options
    control = (
        f"{html.escape(report.control.path or report.control.topic)} ({_count(report.control.num_codes, report.unit_name)})"
        if report.control
        else f'<span class="note">{html.escape(report.control_note or "no control was given")}</span>'
    )
    rows = [
        (
            "bottleneck",
            f"{html.escape(report.bottleneck)} ({html.escape(report.kind)}, fingerprint {report.fingerprint})",
        ),
        ("model", html.escape(report.model)),
        (
            "edit",
            f"{html.escape(report.edit.path or report.edit.topic)}: topic {html.escape(report.edit.topic)}, "
            f"{_count(report.edit.num_codes, report.unit_name)}, intervention {html.escape(report.edit.intervention)}",
        ),
        ("control", control),
        ("forget text", f"{html.escape(report.forget_corpus)} ({html.escape(report.split)} split)"),
        ("retain text", f"{html.escape(report.retain_corpus)} ({html.escape(report.split)} split)"),
        (
            "top contexts",
            f"at most {options.contexts} per unit and corpus, {options.left} tokens left / {options.right} right of "
            f"the firing token, ranked by {html.escape(report.strength_meaning)}",
        ),
        (
            "logit lens",
            f"{html.escape(report.logit_lens_label)}: final norm and LM head applied to the unit's output vector",
        ),
    ]
    for group in GROUPS:
        means = _group_means(report, group)
        if means:
            rows.append(
                (f"mean frequency, {group}", f"forget {_percent(means[0])} · retain {_percent(means[1])} per unit")
            )
    return '<dl class="meta">' + "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in rows) + "</dl>"


def render_html(report: InspectionReport) -> str:
    """The whole page: a header, the sortable and filterable units table, then one card per unit."""
    layers = sorted({u.layer for u in report.group("edit")})
    title = f"codeunlearn inspect: {report.edit.topic}"
    headers = [
        ("set", "text"),
        ("layer", "number"),
        (report.unit_name.rstrip("s"), "number"),
        ("score", "number"),
        ("forget freq", "number"),
        ("retain freq", "number"),
        ("forget/retain", "number"),
        ("logit lens top tokens", "text"),
        ("top forget context", "text"),
    ]
    head = "".join(f'<th data-type="{kind}">{html.escape(name)}</th>' for name, kind in headers)
    rows = "".join(_table_row(u) for u in report.units)
    cards = "".join(_unit_card(report, u) for u in report.units)
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        f"<h1>Topic {html.escape(report.edit.topic)}: {_count(report.edit.num_codes, report.unit_name)} at layer"
        f"{'s' if len(layers) != 1 else ''} {', '.join(map(str, layers))}</h1>"
        f"{_meta_html(report)}"
        f"<h2>{report.unit_name.capitalize()}</h2>"
        '<input id="filter" type="search" placeholder="filter rows: any text in a row (a token, edit, control ...)" '
        'aria-label="filter rows"><span id="shown"></span>'
        f'<table id="units"><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>'
        f"<h2>Each {report.unit_name.rstrip('s')}</h2>{cards}"
        f"<script>{SCRIPT}</script></body></html>\n"
    )


# ---------------------------------------------------------------------------------------------------------- Markdown
def context_markdown(context: Context) -> str:
    """A context window in Markdown, the firing token bold between ⟦ ⟧ (an inline `<b>`: Markdown's `**` does not
    open before punctuation that follows a letter, as in the middle of a word)."""
    return "".join(
        f"<b>⟦{markdown_text(plain_token(t))}⟧</b>" if i == context.firing else markdown_text(plain_token(t))
        for i, t in enumerate(context.tokens)
    )


def _lens_markdown(effects: list[TokenEffect]) -> str:
    return ", ".join(f"{markdown_text(plain_token(e.token))} ({e.logit:+.3g})" for e in effects)


def render_markdown(report: InspectionReport) -> str:
    """The page in Markdown: the same header and table (unsorted) and one section per unit."""
    options = report.options
    singular = report.unit_name.rstrip("s")
    control = (
        f"{markdown_text(report.control.path or report.control.topic)} ({_count(report.control.num_codes, report.unit_name)})"
        if report.control
        else markdown_text(report.control_note or "no control was given")
    )
    lines = [
        f"# codeunlearn inspect: {markdown_text(report.edit.topic)}",
        "",
        f"- bottleneck: {markdown_text(report.bottleneck)} ({report.kind}, fingerprint {report.fingerprint})",
        f"- model: {markdown_text(report.model)}",
        f"- edit: {markdown_text(report.edit.path or report.edit.topic)} ({_count(report.edit.num_codes, report.unit_name)}, "
        f"intervention {markdown_text(report.edit.intervention)})",
        f"- control: {control}",
        f"- forget text: {markdown_text(report.forget_corpus)}; retain text: {markdown_text(report.retain_corpus)} "
        f"({report.split} split)",
        f"- top contexts: at most {options.contexts} per {singular} and corpus, {options.left} tokens left / "
        f"{options.right} right, ranked by {markdown_text(report.strength_meaning)}; the firing token is <b>⟦bold⟧</b>",
        f"- {report.logit_lens_label}: final norm and LM head applied to the {singular}'s output vector",
        "",
        markdown_table(
            ["set", "layer", singular, "score", "forget freq", "retain freq", "forget/retain", "logit lens top tokens"],
            (
                [
                    unit.group,
                    unit.layer,
                    unit.unit,
                    _number(unit.score, 4),
                    _percent(unit.forget.frequency),
                    _percent(unit.retain.frequency),
                    _number(unit.ratio),
                    _lens_markdown(unit.logits.promoted[:LENS_TOKENS_IN_TABLE]),
                ]
                for unit in report.units
            ),
            align="lrrrrrrl",
        ),
    ]
    for unit in report.units:
        lines += [
            "",
            f"## {unit.group} · layer {unit.layer} · {singular} {markdown_text(unit.label)}",
            "",
            f"score {_number(unit.score, 4)}; forget {_percent(unit.forget.frequency)} ({unit.forget.count:,} of "
            f"{unit.forget.tokens:,} tokens), retain {_percent(unit.retain.frequency)} ({unit.retain.count:,} of "
            f"{unit.retain.tokens:,} tokens)",
            "",
            f"{report.logit_lens_label}: promoted {_lens_markdown(unit.logits.promoted)}; suppressed "
            f"{_lens_markdown(unit.logits.suppressed)}",
        ]
        for side, firing in (("forget", unit.forget), ("retain", unit.retain)):
            lines += ["", f"Top contexts in {side} text ({markdown_text(firing.corpus)}):", ""]
            if not firing.contexts:
                lines.append(f"no firing in {firing.tokens:,} tokens")
            lines += [f"{i}. {context_markdown(c)} ({c.strength:.4g})" for i, c in enumerate(firing.contexts, 1)]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------------------- terminal
def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def context_plain(context: Context, width: int | None = None) -> str:
    """A context window as one plain line, the firing token between [[ ]]; cut to `width` characters around it
    (the left side loses its start, the right side its end)."""
    left = "".join(plain_token(t) for t in context.tokens[: context.firing])
    right = "".join(plain_token(t) for t in context.tokens[context.firing + 1 :])
    firing = f"[[{plain_token(context.token)}]]"
    if width is None or len(left) + len(firing) + len(right) <= width:
        return left + firing + right
    room = max(width - len(firing), 2)
    keep_left = min(len(left), max(room // 2, room - len(right)))
    left = left if keep_left >= len(left) else "…" + left[len(left) - keep_left + 1 :]
    return left + firing + _clip(right, max(room - len(left), 1)) if right else left + firing


def render_terminal(report: InspectionReport, top: int = 20) -> str:
    """The `top` edit units by selection score (edit order where there are no scores) as a plain table."""
    units = sorted(report.group("edit"), key=lambda u: -math.inf if u.score is None else u.score, reverse=True)[:top]
    header = [
        "layer",
        report.unit_name.rstrip("s"),
        "score",
        "forget",
        "retain",
        "ratio",
        "logit lens",
        "top forget context",
    ]
    rows = [
        [
            str(u.layer),
            str(u.unit),
            _number(u.score, 4),
            _percent(u.forget.frequency),
            _percent(u.retain.frequency),
            _number(u.ratio),
            _clip(" ".join(repr(plain_token(e.token))[1:-1] for e in u.logits.promoted[:LENS_TOKENS_IN_TABLE]), 30),
            context_plain(u.forget.contexts[0], 60)
            if u.forget.contexts
            else f"no firing in {u.forget.tokens:,} tokens",
        ]
        for u in units
    ]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    numeric = {1, 2, 3, 4, 5}

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in numeric or i == 0 else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    total = len(report.group("edit"))
    title = f"top {len(units)} of {total} {report.unit_name} of {report.edit.topic!r} by selection score"
    return "\n".join([title, line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)])
