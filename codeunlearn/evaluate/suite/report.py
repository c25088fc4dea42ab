"""Suite reports on disk: `report.json`, `report.md`, `details/<metric>.jsonl`, `plots/<group>.png`, and the
one-row-per-model table of several reports.

`report.json` holds everything about the run (model, config, seed, per-metric scores, chance levels, item counts,
parameters and wall times, and the base model's scores when a baseline is given) except the per-item records, which
go to `details/<metric>.jsonl` (one JSON object a line), named in the report. Every file is written atomically, and
`report.json` last, so its presence means the report is complete.

`report.md` has one table per section (forget, retain, general, fluency, attack) with the columns metric, score,
this model, base model and its difference (when a baseline is given), chance, items and seconds.

`combine_reports({row: report.json, ...}, out)` writes `table.md`, `table.json` and `tradeoff.{png,svg}`: one row per
model (base, bottleneck, codebook removal, SAE, GA, NPO, ...), one column per metric (its headline score), the
held-out forget and retain loss changes against a reference row, and the chance row. A row may also be taken from a
table written earlier (`path/table.json#row`, a `RecordedRow`): a model whose suite settings have not changed need not
be evaluated again, provided the earlier table's reference row agrees with this one's on every loss column.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import MetricResult
from codeunlearn.evaluate.suite.plots import group_chart, tradeoff_scatter
from codeunlearn.evaluate.suite.registry import GROUPS
from codeunlearn.evaluate.suite.runner import SuiteReport, json_safe
from codeunlearn.figures import draw_or_note
from codeunlearn.io import atomic_write_text
from codeunlearn.tables import escape_pipes, markdown_table

REPORT_NAME = "report.json"
MARKDOWN_NAME = "report.md"
DETAILS_DIR = "details"
PLOTS_DIR = "plots"
TABLE_NAME = "table.md"
TABLE_JSON_NAME = "table.json"
TRADEOFF_NAME = "tradeoff.png"  # and tradeoff.svg
RANDOM_CONTROL = "/random-control"  # the topic suffix of a random-codes control edit (`unlearn.selection`)
LOSS_KEY = "loss"
RECORDED_SEPARATOR = "#"
# How far a recorded table's reference row may sit from this one's: losses must agree to the printed digit (the
# recorded rows' loss changes were measured from it); other scores are flagged in the table when they differ by more
# than arithmetic on another CPU moves them (a perplexity in its fifth digit).
LOSS_TOLERANCE = 1e-3
SCORE_RELATIVE_TOLERANCE = 1e-3
GROUP_TITLES = {
    "forget": "Forget (lower accuracy / higher loss = more forgotten)",
    "retain": "Retain and side effects (should not move)",
    "general": "General capability (should not move)",
    "fluency": "Fluency",
    "attack": "Robustness attacks",
}


# ------------------------------------------------------------------------------------------------ one report


def write_report(
    report: SuiteReport,
    output_dir: str | Path,
    baseline: SuiteReport | None = None,
    baseline_source: str | None = None,
    plots: bool = True,
) -> dict[str, Path]:
    """Write the report files into `output_dir`; returns their paths by kind (`json`, `markdown`, `details`,
    `plots`). `baseline` (the base model's report on the same suite) fills the base-model column."""
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Any] = {"details": [], "plots": []}
    data = report.to_dict(with_details=False)
    for record, result in zip(data["metrics"], report.results, strict=True):
        relative = f"{DETAILS_DIR}/{result.name}.jsonl"
        lines = [json.dumps(json_safe(d), ensure_ascii=False) for d in result.details]
        atomic_write_text(out / relative, "".join(line + "\n" for line in lines))
        record["details_file"] = relative
        written["details"].append(out / relative)
    base_by_name = _by_name(baseline)
    if plots:
        for group in GROUPS:
            members = [r for r in report.results if r.group == group]
            path = group_chart(members, base_by_name, f"{report.config}: {group}", out / PLOTS_DIR / f"{group}.png")
            if path is not None:
                written["plots"].append(path)
    data["plots"] = [str(p.relative_to(out)) for p in written["plots"]]
    data["baseline"] = None if baseline is None else _baseline_record(baseline, baseline_source)
    atomic_write_text(out / MARKDOWN_NAME, markdown_report(report, baseline, data["plots"]) + "\n")
    written["markdown"] = out / MARKDOWN_NAME
    atomic_write_text(out / REPORT_NAME, json.dumps(json_safe(data), indent=1, ensure_ascii=False) + "\n")
    written["json"] = out / REPORT_NAME
    return written


def load_report(path: str | Path) -> SuiteReport:
    """Read a suite `report.json` (or the directory holding one); per-item details are not loaded."""
    fix = "pass a report.json written by `codeunlearn eval --suite`"
    path, data = _read_json(path, REPORT_NAME, "suite report", fix)
    if not isinstance(data, dict) or not isinstance(data.get("metrics"), list):
        raise CodeunlearnError(f"{path} is not a suite report (no `metrics` list)", fix)
    try:
        return SuiteReport.from_dict(data)
    except (KeyError, TypeError) as err:
        raise CodeunlearnError(f"{path} is not a suite report (missing {err})", fix) from None


def _read_json(path: str | Path, name_in_directory: str, what: str, fix: str) -> tuple[Path, Any]:
    """(the file, its parsed JSON) for a path to the file or to the directory holding `name_in_directory`."""
    path = Path(path)
    if path.is_dir():
        path = path / name_in_directory
    if not path.is_file():
        raise CodeunlearnError(f"{what} not found: {path}", fix)
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as err:
        raise CodeunlearnError(f"{what} {path} does not parse ({' '.join(str(err).split())})", fix) from None


def markdown_report(report: SuiteReport, baseline: SuiteReport | None = None, plots: Sequence[str] = ()) -> str:
    """The report as Markdown: a header, one table per section, the figures."""
    total = sum(report.seconds.values())
    lines = [
        f"# codeunlearn eval: suite `{report.config}` (topic {report.topic})",
        "",
        f"- Model: {report.model}",
        f"- Base model: {baseline.model if baseline else 'not evaluated (pass --with_base or --baseline_report)'}",
        f"- Seed {report.seed}; fast: {'yes' if report.fast else 'no'}; attacks: {'yes' if report.attacks else 'no'}; "
        f"item cap: {report.max_items if report.max_items is not None else 'per config'}; "
        f"total time {total / 60:.1f} min.",
    ]
    base = _by_name(baseline)
    for group in GROUPS:
        members = [r for r in report.results if r.group == group]
        if members:
            lines += ["", f"## {GROUP_TITLES[group]}", "", _group_table(report, members, base)]
    if report.failures:
        lines += ["", "## Failed metrics", "", *(f"- {name}: {error}" for name, error in report.failures.items())]
    if plots:
        lines += ["", "## Figures", "", *(f"![{Path(p).stem}]({p})" for p in plots)]
    lines += [
        "",
        "Losses are nat/token on held-out documents (chance: uniform over the vocabulary); accuracies are fractions "
        "(chance: 1 / number of choices). Per-item records are in `details/`.",
    ]
    return "\n".join(lines)


def _group_table(report: SuiteReport, members: list[MetricResult], base: dict[str, MetricResult] | None) -> str:
    head = ["metric", "score", "this model"]
    if base is not None:
        head += ["base model", "Δ vs base"]
    head += ["chance", "n", "seconds"]
    rows = []
    for result in members:
        for i, (key, value) in enumerate(result.scores.items()):
            cells = [result.name if i == 0 else "", key, _fmt(value)]
            if base is not None:
                other = base.get(result.name)
                base_value = None if other is None else other.scores.get(key)
                cells += [_fmt(base_value), _fmt(_difference(value, base_value), signed=True)]
            seconds = report.seconds.get(result.name)
            cells += [
                _fmt(result.chance.get(key)),
                str(result.n) if i == 0 else "",
                f"{seconds:.1f}" if i == 0 and seconds is not None else "",
            ]
            rows.append(cells)
    return markdown_table(head, rows, align="ll" + "r" * (len(head) - 2))


def _baseline_record(baseline: SuiteReport, source: str | None) -> dict[str, Any]:
    data = baseline.to_dict(with_details=False)
    return {
        "model": baseline.model,
        "config": baseline.config,
        "source": source,
        "metrics": [{k: m[k] for k in ("name", "group", "scores", "chance", "n")} for m in data["metrics"]],
    }


def _by_name(report: SuiteReport | None) -> dict[str, MetricResult] | None:
    return None if report is None else {r.name: r for r in report.results}


# ------------------------------------------------------------------------------------------------ many reports


def loss_levels(report: SuiteReport) -> tuple[float | None, float | None]:
    """(forget loss, retain loss): the mean `loss` score of the forget and of the retain section (None: no loss)."""

    def level(group: str) -> float | None:
        values = [r.scores[LOSS_KEY] for r in report.results if r.group == group and _number(r.scores.get(LOSS_KEY))]
        return sum(values) / len(values) if values else None

    return level("forget"), level("retain")


def forget_accuracy(report: SuiteReport) -> float | None:
    """Mean headline score of the forget section's scored metrics that are not losses (probe accuracies; None:
    none). The trade-off plot's forget axis for topics measured by probes alone, such as a fact topic."""
    values = []
    for result in report.results:
        key = report.headline_key(result)
        if result.group == "forget" and key and key != LOSS_KEY and _number(result.scores.get(key)):
            values.append(result.scores[key])
    return sum(values) / len(values) if values else None


@dataclass(frozen=True)
class RecordedRow:
    """One row of a combined table written earlier, reused beside new reports.

    Attributes:
        source: `path/table.json#row`, as given.
        row: the recorded row (`values`, `delta_forget_loss`, `delta_retain_loss`, ...).
        reference: the recorded table's reference row, which its loss changes were measured from.
    """

    source: str
    row: dict[str, Any]
    reference: dict[str, Any]


def is_recorded(spec: Any) -> bool:
    """Whether a combine entry names a row of an earlier table (`path/table.json#row`)."""
    return isinstance(spec, str) and RECORDED_SEPARATOR in spec


def load_recorded_row(spec: str) -> RecordedRow:
    """Read `path/table.json#row` (a `table.json` written by `combine_reports`, or its directory)."""
    path_text, _, name = spec.rpartition(RECORDED_SEPARATOR)
    fix = "write TABLE#ROW with TABLE a table.json written by `codeunlearn eval --combine` and ROW one of its rows"
    path, table = _read_json(path_text, TABLE_JSON_NAME, "recorded table", fix)
    try:
        rows = {r["row"]: r for r in table["rows"]}
        reference = rows[table["reference"]]
    except (KeyError, TypeError) as err:
        raise CodeunlearnError(f"{path} is not a combined table ({' '.join(str(err).split())})", fix) from None
    if name not in rows:
        raise CodeunlearnError(f"{path} has no row {name!r}", f"use one of {', '.join(rows)}")
    return RecordedRow(source=spec, row=rows[name], reference=reference)


def _recorded_agreement(recorded: RecordedRow, reference: SuiteReport, picked: list[tuple[str, str, str]]) -> set[str]:
    """Check that a recorded row's reference agrees with this table's on every loss column they share (an error
    otherwise: its loss changes would be measured from another base); returns the other shared columns on which
    they differ, whose recorded values are then not strictly comparable."""
    by_name = {r.name: r for r in reference.results}
    live_keys = {f"{name}:{key}" for name, key, _ in picked} | {
        f"{r.name}:{LOSS_KEY}" for r in reference.results if LOSS_KEY in r.scores
    }
    losses, differing = 0, set()
    for column, old in recorded.reference.get("values", {}).items():
        name, _, key = column.partition(":")
        new = _score(by_name.get(name), key)
        if column not in live_keys or not (_number(old) and _number(new)):
            continue
        if key == LOSS_KEY:
            losses += 1
            if abs(old - new) > LOSS_TOLERANCE:
                raise CodeunlearnError(
                    f"recorded row {recorded.source}: its reference row scored {column} {old:.4f}, this one "
                    f"{new:.4f}, so its loss changes are from another base or other suite settings",
                    "evaluate that model again with this suite and settings",
                )
        elif not math.isclose(old, new, rel_tol=SCORE_RELATIVE_TOLERANCE, abs_tol=LOSS_TOLERANCE):
            differing.add(column)
    if losses == 0:
        raise CodeunlearnError(
            f"recorded row {recorded.source}: its reference row shares no loss column with this table's",
            "combine it only with reports of the same suite",
        )
    return differing


def combine_reports(
    reports: Mapping[str, str | Path | SuiteReport | RecordedRow],
    output_dir: str | Path,
    reference: str | None = None,
    columns: Sequence[str] | None = None,
) -> str:
    """One table, one row per model, one column per metric's headline score; writes `table.md`, `table.json` and
    then the trade-off figure `tradeoff.png` / `tradeoff.svg` (a drawing error is a `note:` line: the table is
    written) into `output_dir` and returns the Markdown table.

    Args:
        reports: row name -> a suite report (a report.json path, its directory, or a `SuiteReport`) or a row of an
            earlier table (`path/table.json#row` or a `RecordedRow`), in row order.
        output_dir: where the files go.
        reference: the row the forget/retain loss changes are measured from (default: the first row, e.g. `base`);
            it must be a report, not a recorded row.
        columns: `metric` or `metric:key` entries to show, in order (default: every metric's headline score, by
            section, of the reports).
    """
    loaded = _load_rows(reports)
    live = {row: r for row, r in loaded.items() if isinstance(r, SuiteReport)}
    reference = reference or next(iter(loaded))
    if reference not in live:
        raise CodeunlearnError(
            f"reference row {reference!r} is not a report of this run",
            f"use one of {', '.join(live) or '(none: pass at least one report.json)'}",
        )
    picked = _columns(live, columns)
    # Without a forget loss in the reference, forgetting is plotted as the drop of the forget probes' accuracy.
    by_accuracy = loss_levels(live[reference])[0] is None
    rows = [
        _recorded_entry(row, report, live[reference], picked, by_accuracy)
        if isinstance(report, RecordedRow)
        else _report_entry(row, report, live[reference], picked, by_accuracy)
        for row, report in loaded.items()
    ]
    points = {}
    for entry in rows:
        forgotten = entry.get("forget_accuracy_drop") if by_accuracy else entry["delta_forget_loss"]
        if _number(forgotten) and _number(entry["delta_retain_loss"]):
            points[entry["row"]] = (entry["delta_retain_loss"], forgotten)
    chance = {f"{name}:{key}": _chance(live, name, key) for name, key, _ in picked}
    markdown = _combined_markdown(picked, rows, chance, reference)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    table = {
        "reference": reference,
        "columns": [{"metric": name, "key": key, "group": group} for name, key, group in picked],
        "rows": rows,
        "chance": chance,
        "sources": {
            row: r.source if isinstance(r, RecordedRow) else str(r)
            for row, r in reports.items()
            if not isinstance(r, SuiteReport)
        },
    }
    atomic_write_text(out / TABLE_JSON_NAME, json.dumps(json_safe(table), indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(out / TABLE_NAME, markdown + "\n")
    controls = {entry["row"] for entry in rows if is_random_control(entry["row"], entry.get("model"))}
    axis = "accuracy" if by_accuracy else "loss"
    for stale in (out / TRADEOFF_NAME, (out / TRADEOFF_NAME).with_suffix(".svg")):
        stale.unlink(missing_ok=True)  # a figure beside the table is this table's, or there is none
    draw_or_note("trade-off", tradeoff_scatter, points, reference, out / TRADEOFF_NAME, axis, controls)
    return markdown


def is_random_control(row: str, model: str | None) -> bool:
    """Whether a combined table's row is a random-codes control: its model carries the control edit `forget`
    writes (topic `TOPIC/random-control`), or the row is named so (`random_codes`, `..._random_control`)."""
    name = row.lower().replace("-", "_")
    return RANDOM_CONTROL in (model or "") or name in ("random", "random_codes") or "random_control" in name


def _load_rows(reports: Mapping[str, str | Path | SuiteReport | RecordedRow]) -> dict[str, SuiteReport | RecordedRow]:
    """Every combine entry read: a report, or a row of an earlier table."""
    if not reports:
        raise CodeunlearnError("no reports to combine", "pass at least one ROW=path/to/report.json")
    loaded: dict[str, SuiteReport | RecordedRow] = {}
    for row, r in reports.items():
        if isinstance(r, (SuiteReport, RecordedRow)):
            loaded[row] = r
        else:
            loaded[row] = load_recorded_row(r) if is_recorded(r) else load_report(r)
    return loaded


def _report_entry(
    row: str, report: SuiteReport, reference: SuiteReport, picked: list[tuple[str, str, str]], by_accuracy: bool
) -> dict[str, Any]:
    """A table row from a report: its scores for the picked columns and its loss changes against `reference`."""
    by_name = {r.name: r for r in report.results}
    ref_forget, ref_retain = loss_levels(reference)
    forget, retain = loss_levels(report)
    entry = {
        "row": row,
        "model": report.model,
        "config": report.config,
        "fast": report.fast,
        "values": {f"{name}:{key}": _score(by_name.get(name), key) for name, key, _ in picked},
        "delta_forget_loss": _difference(forget, ref_forget),
        "delta_retain_loss": _difference(retain, ref_retain),
    }
    if by_accuracy:
        entry["forget_accuracy_drop"] = _difference(forget_accuracy(reference), forget_accuracy(report))
    return entry


def _recorded_entry(
    row: str,
    recorded: RecordedRow,
    reference: SuiteReport,
    picked: list[tuple[str, str, str]],
    by_accuracy: bool,
) -> dict[str, Any]:
    """A table row from a recorded one: its scores for the picked columns and its recorded loss changes, which hold
    against this reference because the two reference rows agree on every loss (checked)."""
    differing = _recorded_agreement(recorded, reference, picked)
    old = recorded.row
    values = {f"{name}:{key}": old.get("values", {}).get(f"{name}:{key}") for name, key, _ in picked}
    entry = {
        "row": row,
        "model": old.get("model"),
        "config": old.get("config"),
        "fast": old.get("fast"),
        "values": values,
        "delta_forget_loss": old.get("delta_forget_loss"),
        "delta_retain_loss": old.get("delta_retain_loss"),
        "recorded": recorded.source,
        "reference_differs": sorted(differing & set(values)),
    }
    if by_accuracy:
        drop = old.get("forget_accuracy_drop")
        forget_columns = {f"{n}:{k}" for n, k, g in picked if g == "forget"}
        # the accuracy drop was measured from the recorded reference's forget probes: only valid if they agree
        entry["forget_accuracy_drop"] = None if differing & forget_columns else drop
    return entry


def _columns(loaded: Mapping[str, SuiteReport], columns: Sequence[str] | None) -> list[tuple[str, str, str]]:
    """(metric name, score key, group) per column."""
    known: dict[str, MetricResult] = {}
    headline: dict[str, str] = {}
    for report in loaded.values():
        for result in report.results:
            if result.name not in known:
                known[result.name] = result
                headline[result.name] = report.headline_key(result) or ""
    if columns is None:
        order = {g: i for i, g in enumerate(GROUPS)}
        names = sorted(known, key=lambda n: order.get(known[n].group, len(order)))  # stable: run order in a group
        return [(n, headline[n], known[n].group) for n in names if headline[n]]
    picked = []
    for entry in columns:
        name, _, key = entry.partition(":")
        if name not in known:
            raise CodeunlearnError(
                f"column {entry!r}: no report has a metric {name!r}", f"use one of {', '.join(known)}"
            )
        key = key or headline[name]
        if key not in known[name].scores:
            raise CodeunlearnError(
                f"column {entry!r}: metric {name} has no score {key!r}", f"use one of {', '.join(known[name].scores)}"
            )
        picked.append((name, key, known[name].group))
    return picked


def _combined_markdown(
    picked: list[tuple[str, str, str]], rows: list[dict[str, Any]], chance: dict[str, float | None], reference: str
) -> str:
    with_losses = any(r["delta_forget_loss"] is not None or r["delta_retain_loss"] is not None for r in rows)
    head = ["model", *(f"{name} ({key})" for name, key, _ in picked)]
    groups = ["", *(group for _, _, group in picked)]
    if with_losses:
        head += [f"Δ forget loss vs {reference}", f"Δ retain loss vs {reference}"]
        groups += ["forget", "retain"]
    body = [[f"*{g}*" if g else "*section*" for g in groups]]  # a second header row: each column's section
    flagged = False
    for row in rows:
        name = row["row"] + (" (recorded)" if row.get("recorded") else "")
        differs = set(row.get("reference_differs", ()))
        flagged |= bool(differs)
        cells = [
            escape_pipes(name),
            *(_fmt(row["values"][f"{n}:{k}"]) + ("†" if f"{n}:{k}" in differs else "") for n, k, _ in picked),
        ]
        if with_losses:
            cells += [_fmt(row["delta_forget_loss"], signed=True), _fmt(row["delta_retain_loss"], signed=True)]
        body.append(cells)
    if any(v is not None for v in chance.values()):
        cells = ["chance", *(_fmt(chance[f"{n}:{k}"]) for n, k, _ in picked)]
        body.append(cells + ([""] * 2 if with_losses else []))
    lines = [markdown_table(head, body, align="l" + "r" * (len(head) - 1))]
    if flagged:
        lines += [
            "",
            "*(recorded)*: a row of an earlier table whose reference row has the same losses as this one's. "
            "†: that table's reference row scored this column differently, so the value is not strictly comparable.",
        ]
    elif any(row.get("recorded") for row in rows):
        lines += ["", "*(recorded)*: a row of an earlier table whose reference row has the same losses as this one's."]
    return "\n".join(lines)


def _score(result: MetricResult | None, key: str) -> float | None:
    return None if result is None else result.scores.get(key)


def _chance(loaded: Mapping[str, SuiteReport], name: str, key: str) -> float | None:
    for report in loaded.values():
        for result in report.results:
            if result.name == name and _number(result.chance.get(key)):
                return result.chance[key]
    return None


# ------------------------------------------------------------------------------------------------ formatting


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _difference(value: Any, reference: Any) -> float | None:
    return value - reference if _number(value) and _number(reference) else None


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:+d}" if signed else str(value)
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:+,.1f}" if signed else f"{value:,.1f}"
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return str(value)
