"""Figures the commands write (`codeunlearn.figures`, `evaluate/suite/plots.py`): the files are valid PNG and SVG,
the data behind each picture is the command's numbers (read back from the returned data and from the SVG's element
ids), output is deterministic, and a drawing error leaves the command's results written with one `note:` line.

`train -> forget -> eval` runs once on the tiny CLI workspace (`helpers.make_cli_workspace`)."""

from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from helpers import make_cli_workspace, make_tokens, run_ok

from codeunlearn import figures
from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.loading import load_bottlenecked
from codeunlearn.cli import main
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.evaluate.evaluation import token_losses
from codeunlearn.evaluate.loss_table import RowSpec, evaluate_rows, token_loss_increase, token_pieces
from codeunlearn.evaluate.metrics.base import MetricResult
from codeunlearn.evaluate.suite.report import combine_reports
from codeunlearn.evaluate.suite.runner import SuiteReport
from codeunlearn.modeling import ModelArguments
from codeunlearn.unlearn.selection import SelectionRule, firing_frequencies, random_control, select_codes
from codeunlearn.unlearn.statistics import CodeStatistics

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SVG = "{http://www.w3.org/2000/svg}"


def assert_png_and_svg(stem: Path) -> ET.Element:
    """Both files exist and are what they say; returns the parsed SVG."""
    assert stem.with_suffix(".png").read_bytes().startswith(PNG_MAGIC)
    root = ET.fromstring(stem.with_suffix(".svg").read_bytes())
    assert root.tag == f"{SVG}svg"
    return root


def markers(svg: ET.Element, gid: str) -> int:
    """How many markers (one `<use>` per point of a line or scatter) the SVG element with id `gid` draws."""
    (element,) = [e for e in svg.iter() if e.get("id") == gid]
    return sum(1 for e in element.iter(f"{SVG}use"))


# ------------------------------------------------------------------------------------------------ training curves


def codebook_records() -> list[dict]:
    """What a codebook run logs: the k-means fit (step 1), 2 EMA key steps, 3 value steps; layers 0 and 2."""
    records = [{"step": 1, "phase": "keys", "fit_fvu": 0.31, "dead_codes": {"0": 5, "2": 7}}]
    for step in (2, 3):
        usage = {"codes_used_in_batch": {"0": 40 + step, "2": 30 + step}, "dead_codes_in_window": {"0": 9, "2": 8}}
        records.append({"step": step, "phase": "keys", "fvu": 0.3, **usage, "dead_codes": {"0": 5, "2": 7}})
    for step in (4, 5, 6):
        usage = {"codes_used_in_batch": {"0": 50, "2": 51}, "dead_codes_in_window": {"0": 3, "2": 2}}
        records.append({"step": step, "phase": "values", "loss": 1.0 / step, "kl": 0.5 / step, "fvu": 0.2, **usage})
    return records


def test_training_curves_from_a_hand_written_metrics_file(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    metrics.write_text("".join(json.dumps(r) + "\n" for r in codebook_records()) + "\n")
    drawn = figures.training_curves_from_file(metrics)
    svg = assert_png_and_svg(tmp_path / "training_curves")
    panels = drawn["panels"]
    counts = {
        title: {label: len(points["steps"]) for label, points in series.items()} for title, series in panels.items()
    }
    assert counts == {
        "loss": {"loss": 3, "kl": 3},
        "FVU (fraction of variance unexplained)": {"fvu": 5, "fit_fvu": 1},
        "codes used in the step's batch": {"codes_used_in_batch (layer 0)": 5, "codes_used_in_batch (layer 2)": 5},
        "dead codes / features": {
            "dead_codes (layer 0)": 3,
            "dead_codes (layer 2)": 3,
            "dead_codes_in_window (layer 0)": 5,
            "dead_codes_in_window (layer 2)": 5,
        },
    }
    assert panels["loss"]["loss"] == {"steps": [4.0, 5.0, 6.0], "values": [0.25, 0.2, 1 / 6]}
    # the SVG draws one marker per logged point of every series
    for title, series in counts.items():
        for label, points in series.items():
            assert markers(svg, drawn["gids"][title][label]) == points, (title, label)
    # the same numbers give the same bytes
    again = figures.training_curves(codebook_records(), tmp_path / "again")
    assert [Path(p).read_bytes() for p in again["paths"]] == [Path(p).read_bytes() for p in drawn["paths"]]


def test_training_curves_of_an_sae_run_and_of_nothing_drawable(tmp_path):
    records = [
        {"step": s, "phase": "sae", "loss": 1.0, "fvu": 0.5, "l0_by_layer": {"3": 30.0}, "dead_features": {"3": s}}
        for s in (10, 20, 30, 40)
    ]
    drawn = figures.training_curves(records, tmp_path / "sae")
    assert set(drawn["panels"]) == {
        "loss",
        "FVU (fraction of variance unexplained)",
        "L0 (SAE features firing per token)",
        "dead codes / features",
    }
    assert drawn["panels"]["dead codes / features"]["dead_features (layer 3)"]["values"] == [10, 20, 30, 40]
    assert_png_and_svg(tmp_path / "sae")
    assert figures.training_curves([{"step": 1, "seconds": 0.1, "lr": float("nan")}], tmp_path / "none") is None
    assert not (tmp_path / "none.png").exists()


# ------------------------------------------------------------------------------------------------ firing frequency


def statistics(counts: dict[int, list[int]], tokens: int, corpus: str) -> CodeStatistics:
    return CodeStatistics(
        counts={layer: torch.tensor(c) for layer, c in counts.items()},
        tokens=dict.fromkeys(counts, tokens),
        corpus=corpus,
        bottleneck_fingerprint="fp",
    )


def test_firing_frequency_marks_exactly_the_edit_and_its_control(tmp_path):
    generator = torch.Generator().manual_seed(0)
    layers = (1, 2, 3, 4, 5)
    forget = statistics(
        {layer: torch.randint(0, 40, (64,), generator=generator).tolist() for layer in layers}, 500, "f"
    )
    retain = statistics(
        {layer: torch.randint(0, 40, (64,), generator=generator).tolist() for layer in layers}, 900, "r"
    )
    edit = select_codes(forget, retain, SelectionRule(num_codes=6), "topic")
    control = random_control(edit, forget, retain, seed=1)
    drawn = figures.firing_frequency(firing_frequencies(forget, retain, edit, control), tmp_path / "firing")
    svg = assert_png_and_svg(tmp_path / "firing")
    assert drawn["layers_drawn"] == [1, 2, 3, 4]  # the first FIRING_PANELS layers of five
    for layer in drawn["layers_drawn"]:
        marked = drawn["layers"][layer]
        assert marked["selected"] == sorted(edit.layers[layer].codes) and len(marked["selected"]) == 6
        assert marked["control"] == sorted(control.layers[layer].codes)
        assert markers(svg, marked["gids"]["selected"]) == 6
        assert markers(svg, marked["gids"]["control"]) == len(control.layers[layer].codes)
        live = (forget.counts[layer] + retain.counts[layer]) > 0
        assert marked["codes_drawn"] == int(live.sum())
    frequencies = firing_frequencies(forget, retain, edit, control)
    again = figures.firing_frequency(frequencies, tmp_path / "again")  # the grey codes are an embedded image
    assert [Path(p).read_bytes() for p in again["paths"]] == [Path(p).read_bytes() for p in drawn["paths"]]
    assert [f.layer for f in frequencies] == list(layers)
    assert frequencies[0].forget.tolist() == forget.frequency(1).tolist() and frequencies[0].forget_tokens == 500


# ------------------------------------------------------------------------------------------------ token losses


def test_token_loss_increase_of_a_known_case():
    """Reference losses 1, edited losses 1 + the position's column index / 10 in chunk 0 and 1 + 0.5 elsewhere."""
    chunks = torch.arange(3 * 8).view(3, 8) % 5
    reference = torch.ones(3, 7)
    edited = torch.full((3, 7), 1.5)
    edited[0] = 1 + torch.arange(7) / 10
    words = ["zero", " one", " two", " three", " four"]
    data = token_loss_increase(
        {"bottleneck": reference, "edit": edited, "base": torch.zeros(3, 7)},
        chunks,
        lambda ids: "".join(words[i] for i in ids),
        edited=["edit"],
        skip_positions=2,
        passage_tokens=3,
        top=2,
    )
    assert data["rows"] == ["edit"] and data["positions"] == [3, 4, 5, 6, 7]
    expected = [((c / 10) + 0.5 + 0.5) / 3 for c in range(2, 7)]
    assert data["by_position"]["edit"] == pytest.approx(expected)
    assert data["mean_increase"]["edit"] == pytest.approx(float((edited[:, 2:] - 1).mean()))
    tokens = data["passage"]["tokens"]
    assert [(t["position"], t["token"], t["token_id"]) for t in tokens] == [
        (3, " three", 3),
        (4, " four", 4),
        (5, "zero", 0),
    ]
    assert [t["increase"] for t in tokens] == pytest.approx([0.2, 0.3, 0.4])
    assert [t["position"] for t in data["top"]] == [5, 4]
    assert token_loss_increase({"bottleneck": reference}, chunks, str, edited=["edit"]) is None


def test_token_pieces_keep_what_each_token_adds():
    words = {0: "Har", 1: "ry", 2: " Potter"}
    assert token_pieces([0, 1, 2], lambda ids: "".join(words[i] for i in ids)) == ["Har", "ry", " Potter"]

    def cleaned(ids):  # a decoder that strips the text: not incremental, each token decoded alone
        return " ".join(words[i].strip() for i in ids)

    assert token_pieces([0, 2], cleaned) == ["Har", " Potter"]


def test_evaluate_rows_keeps_the_per_token_losses_of_its_forget_loss(trained):
    """The forget loss of the table is the mean of the per-token losses it hands over, and those are
    `token_losses` of the model with the row's edits."""
    forget, retain = make_tokens(4, 12, seed=41), make_tokens(4, 12, seed=42)
    edit = Edit("t", {1: LayerCodes(list(range(20)))}, "substitute", bottleneck_fingerprint=trained.fingerprint())
    specs = [RowSpec("base", None), RowSpec("bottleneck", []), RowSpec("edit", [edit])]
    per_token: dict[str, torch.Tensor] = {}
    rows = evaluate_rows(trained, forget, retain, specs, 2, 1, False, False, per_token)
    assert sorted(per_token) == ["base", "bottleneck", "edit"]
    with trained.edited(edit):
        expected = token_losses(trained, forget, 2)
    assert torch.equal(per_token["edit"], expected)
    by_row = {r["row"]: r for r in rows}
    assert by_row["edit"]["forget_loss"] == float(expected[:, 1:].mean())
    data = token_loss_increase(per_token, forget, lambda ids: " ".join(map(str, ids)), ["edit"], skip_positions=1)
    assert data["mean_increase"]["edit"] == pytest.approx(by_row["edit"]["delta_forget"], abs=1e-6)


# ------------------------------------------------------------------------------------------------ trade-off


def suite_report(model: str, forget: float, retain: float) -> SuiteReport:
    results = [
        MetricResult("forget_loss", {"loss": forget}, {}, 10, group="forget"),
        MetricResult("retain_loss", {"loss": retain}, {}, 10, group="retain"),
    ]
    return SuiteReport(model, "tiny", "t", results, {r.name: 1.0 for r in results})


def test_tradeoff_labels_every_row_with_the_reference_at_the_origin(tmp_path, monkeypatch):
    reports = {
        "base": suite_report("base model", 3.0, 2.0),
        "codebook": suite_report("bottleneck b (vq, layers [1], edits: hp) on m", 4.5, 2.1),
        "random": suite_report("bottleneck r (vq, layers [1], edits: hp/random-control) on m", 3.1, 2.1),
        "npo": suite_report("npo", 5.0, 2.6),
    }
    calls = []
    from codeunlearn.evaluate.suite import report as report_module

    real = report_module.tradeoff_scatter
    monkeypatch.setattr(report_module, "tradeoff_scatter", lambda *a: calls.append(a) or real(*a))
    combine_reports(reports, tmp_path)
    ((points, reference, _, axis, controls),) = calls
    assert reference == "base" and axis == "loss" and controls == {"random"}
    assert points["base"] == (0.0, 0.0) and points["codebook"] == pytest.approx((0.1, 1.5))
    svg = assert_png_and_svg(tmp_path / "tradeoff")
    ids = {e.get("id") for e in svg.iter()}
    assert {"row-base", "row-codebook", "row-random", "row-npo"} <= ids
    monkeypatch.setattr(report_module, "tradeoff_scatter", lambda *a: 1 / 0)
    combine_reports(reports, tmp_path / "failed")
    assert json.loads((tmp_path / "failed" / "table.json").read_text())["reference"] == "base"
    assert (tmp_path / "failed" / "table.md").is_file() and not (tmp_path / "failed" / "tradeoff.png").exists()


# ------------------------------------------------------------------------------------------------ the commands


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    return make_cli_workspace(tmp_path_factory.mktemp("figures"))


def data_flags(ws: dict[str, Path]) -> list[str]:
    return ["--model_name_or_path", str(ws["model"]), "--seq_len", "16", "--heldout_fraction", "0.3"]


def train_argv(ws: dict[str, Path], output_dir: Path) -> list[str]:
    flags = ["--layers", "1", "--num_heads", "4", "--codebook_size", "16", "--num_stages", "1", "--key_steps", "2"]
    flags += ["--value_steps", "2", "--batch_size", "4", "--kmeans_init_tokens", "64", "--log_every", "1"]
    return [
        "train",
        *data_flags(ws),
        "--retain_corpora",
        str(ws["retain"]),
        *flags,
        "--no_progress",
        "--output_dir",
        str(output_dir),
    ]


def forget_argv(ws: dict[str, Path], run: Path, output_dir: Path) -> list[str]:
    flags = ["--topic", "wizards", "--num_codes", "3", "--min_forget_count", "1", "--no_progress"]
    flags += ["--bottleneck_dir", str(run / "bottleneck"), "--forget_corpora", str(ws["forget"])]
    return ["forget", *data_flags(ws), *flags, "--output_dir", str(output_dir)]


def eval_argv(ws: dict[str, Path], run: Path, output_dir: Path) -> list[str]:
    edits = [str(run / "forget" / "edit.json"), str(run / "forget" / "random_control.json")]
    corpora = ["--forget_corpora", str(ws["forget"]), "--retain_corpora", str(ws["retain"])]
    flags = ["--bottleneck_dir", str(run / "bottleneck"), *corpora, "--edits", *edits, "--skip_positions", "1"]
    return ["eval", *data_flags(ws), *flags, "--no_bf16", "--no_progress", "--output_dir", str(output_dir)]


@pytest.fixture(scope="module")
def pipeline(workspace) -> dict[str, Path]:
    """train -> forget (on the bottleneck) -> eval of the edit and its control, once for the module."""
    ws, run = workspace, workspace["root"] / "run"

    for argv in (train_argv(ws, run), forget_argv(ws, run, run / "forget"), eval_argv(ws, run, run / "eval")):
        assert main(argv) == 0, argv
    return {**ws, "run": run}


def test_train_draws_its_training_curves(pipeline):
    run = pipeline["run"]
    records = figures.read_metrics(run / "metrics.jsonl")
    assert_png_and_svg(run / "training_curves")
    series = figures.training_series(records)
    assert len(series["codes used in the step's batch"]["codes_used_in_batch (layer 1)"]["steps"]) == 3  # EMA+values
    assert [r["step"] for r in records] == [1, 2, 3, 4]


def test_forget_draws_the_firing_frequency_of_its_edit(pipeline):
    out = pipeline["run"] / "forget"
    svg = assert_png_and_svg(out / "firing_frequency")
    edit, control = Edit.load(out / "edit.json"), Edit.load(out / "random_control.json")
    assert markers(svg, "selected-layer-1") == len(edit.layers[1].codes) == 3
    assert markers(svg, "control-layer-1") == len(control.layers[1].codes)


def test_eval_writes_the_token_loss_increase_with_the_tables_numbers(pipeline):
    ws, run = pipeline, pipeline["run"]
    out = run / "eval"
    assert_png_and_svg(out / "token_loss_increase")
    data = json.loads((out / "token_loss_increase.json").read_text())
    report = {r["row"]: r for r in json.loads((out / "report.json").read_text())["rows"]}
    assert data["reference"] == "bottleneck" and data["rows"] == [
        "wizards (edit.json)",
        "wizards/random-control (random_control.json)",
    ]
    for row in data["rows"]:
        assert data["mean_increase"][row] == pytest.approx(report[row]["delta_forget"], abs=1e-6)
        assert sum(data["by_position"][row]) / len(data["positions"]) == pytest.approx(data["mean_increase"][row])
    # the passage's numbers are the per-token losses of the unedited and the edited bottleneck, measured again here
    model_args = ModelArguments(model_name_or_path=str(ws["model"]))
    bmodel, tokenizer = load_bottlenecked(str(run / "bottleneck"), model_args, False)
    data_args = DataArguments(forget_corpora=[str(ws["forget"])], seq_len=16, heldout_fraction=0.3)
    forget = read_corpora(data_args.forget_corpora, data_args, "forget_corpora").pack(tokenizer, "heldout")
    before = token_losses(bmodel, forget, 4)
    with bmodel.edited(Edit.load(run / "forget" / "edit.json")):
        after = token_losses(bmodel, forget, 4)
    tokens = data["passage"]["tokens"]
    assert data["passage"]["row"] == "wizards (edit.json)" and tokens[0]["position"] == 2  # skip_positions 1
    for token in tokens:
        column = token["position"] - 1
        assert token["token_id"] == int(forget[0, token["position"]])
        assert token["reference_loss"] == pytest.approx(float(before[0, column]), abs=1e-5)
        assert token["increase"] == pytest.approx(float(after[0, column] - before[0, column]), abs=1e-5)
        assert token["token"].strip() == tokenizer.decode([token["token_id"]]).strip()
    assert [t["increase"] for t in data["top"]] == sorted((t["increase"] for t in tokens), reverse=True)[:15]
    markdown = (out / "token_loss_increase.md").read_text()
    assert f"{data['top'][0]['increase']:+.4f}" in markdown and "token_loss_increase.png" in markdown


def boom(*args, **kwargs):
    raise RuntimeError("no fonts here")


def test_a_drawing_error_is_a_note_and_every_result_is_written(pipeline, tmp_path, monkeypatch, capsys):
    ws, run = pipeline, pipeline["run"]
    for name in ("training_curves_from_file", "firing_frequency", "token_loss_increase"):
        monkeypatch.setattr(figures, name, boom)
    note = "the results are written"

    out = run_ok(train_argv(ws, tmp_path / "train"), capsys)
    assert "note: the training curves figure was not drawn (RuntimeError: no fonts here)" in out and note in out
    assert (tmp_path / "train" / "bottleneck" / "bottleneck.safetensors").is_file()
    assert not (tmp_path / "train" / "training_curves.png").exists()

    stats = ["--forget_stats", str(tmp_path / "f.safetensors"), "--retain_stats", str(tmp_path / "r.safetensors")]
    forget = statistics({1: [0, 9, 9, 1, 0, 4]}, 100, "f")
    retain = statistics({1: [5, 0, 1, 1, 3, 4]}, 100, "r")
    forget.save(tmp_path / "f.safetensors")
    retain.save(tmp_path / "r.safetensors")
    out = run_ok(
        ["forget", *stats, "--topic", "t", "--num_codes", "2", "--output_dir", str(tmp_path / "edits")], capsys
    )
    assert "note: the firing frequency figure was not drawn (RuntimeError: no fonts here)" in out
    assert Edit.load(tmp_path / "edits" / "edit.json").layers[1].codes == [1, 2]
    assert (tmp_path / "edits" / "random_control.json").is_file()
    assert not (tmp_path / "edits" / "firing_frequency.png").exists()

    out = run_ok(eval_argv(ws, run, tmp_path / "eval"), capsys)
    assert "note: the token loss increase figure was not drawn (RuntimeError: no fonts here)" in out
    for name in ("report.json", "report.md", "token_loss_increase.json", "token_loss_increase.md"):
        assert (tmp_path / "eval" / name).is_file(), name
    assert not (tmp_path / "eval" / "token_loss_increase.png").exists()
    assert math.isfinite(json.loads((tmp_path / "eval" / "token_loss_increase.json").read_text())["top"][0]["increase"])
