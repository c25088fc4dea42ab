"""The SAE pipeline through the command line, on the tiny Llama and corpora of test_cli: train --bottleneck sae ->
stats -> forget (clamp, mean-activation difference) -> calibrate (guardrail) -> apply -> eval, a sae-lens directory
given as --bottleneck_dir, and one-line errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_cli import common_flags, run_error, run_ok, workspace  # noqa: F401  (workspace is a fixture)

from codeunlearn.cli import main


@pytest.fixture(scope="module")
def sae_pipeline(workspace) -> dict[str, Path]:  # noqa: F811
    ws = workspace
    run = ws["root"] / "sae-run"

    def call(argv: list[str]) -> str:
        code = main(argv)
        assert code == 0, argv
        return ""

    corpora = ["--forget_corpora", str(ws["forget"]), "--retain_corpora", str(ws["retain"])]
    sae_flags = ["--bottleneck", "sae", "--layers", "1", "--sae_width", "64", "--sae_k", "4", "--sae_steps", "4"]
    # The SAE reads the topic too (named as training text with --corpora), as in the SAE-unlearning papers.
    training_text = ["--corpora", str(ws["forget"]), str(ws["retain"])]
    call(["train", *common_flags(ws), *training_text, *sae_flags, "--batch_size", "4", "--kmeans_init_tokens", "64",
          "--log_every", "1", "--no_progress", "--output_dir", str(run)])  # fmt: skip
    for name in ("forget", "retain"):
        call(["stats", *common_flags(ws), "--corpora", str(ws[name]), "--name", name, "--bottleneck_dir",
              str(run / "bottleneck"), "--output_file", str(run / "stats" / f"{name}.safetensors"), "--no_progress"])  # fmt: skip
    call(["forget", "--forget_stats", str(run / "stats" / "forget.safetensors"), "--retain_stats",
          str(run / "stats" / "retain.safetensors"), "--topic", "wizards", "--num_codes", "4", "--min_forget_count",
          "1", "--score", "mean_activation_difference", "--multiplier", "-5", "--output_dir", str(run / "edits")])  # fmt: skip
    call(["calibrate", *common_flags(ws), *corpora, "--bottleneck_dir", str(run / "bottleneck"), "--edit",
          str(run / "edits" / "edit.json"), "--window", "4", "--target_fpr", "0.1", "--no_progress",
          "--output_file", str(run / "edits" / "guardrail.json")])  # fmt: skip
    call(["apply", "--model_name_or_path", str(ws["model"]), "--bottleneck_dir", str(run / "bottleneck"), "--edits",
          str(run / "edits" / "guardrail.json"), "--output_dir", str(run / "edited")])  # fmt: skip
    edits = [str(run / "edits" / name) for name in ("edit.json", "random_control.json", "guardrail.json")]
    call(["eval", *common_flags(ws), *corpora, "--bottleneck_dir", str(run / "bottleneck"), "--edits", *edits,
          "--no_progress", "--output_dir", str(run / "eval")])  # fmt: skip
    return {**ws, "run": run}


def test_train_writes_sae_lens_directories(sae_pipeline):
    from sae_lens import SAE

    run = sae_pipeline["run"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["phase"] for m in metrics] == ["sae"] * 4
    sae = SAE.load_from_disk(run / "bottleneck" / "layer_1")
    assert type(sae).__name__ == "TopKSAE" and sae.cfg.d_sae == 64 and sae.cfg.k == 4
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert json.loads((run / "run_args.json").read_text())["kind"] == "sae"


def test_forget_writes_a_clamp_edit_and_its_control(sae_pipeline):
    edits = sae_pipeline["run"] / "edits"
    edit = json.loads((edits / "edit.json").read_text())
    assert (edit["kind"], edit["intervention"], edit["multiplier"]) == ("sae", "clamp", -5.0)
    assert edit["rule"]["name"] == "mean_activation_difference"
    layer = edit["layers"]["1"]
    assert 1 <= len(layer["codes"]) <= 4 and len(layer["scales"]) == len(layer["codes"])
    assert all(s > 0 for s in layer["scales"])
    control = json.loads((edits / "random_control.json").read_text())
    assert len(control["layers"]["1"]["codes"]) == len(layer["codes"]) and control["multiplier"] == -5.0


def test_calibrate_writes_a_guardrail(sae_pipeline):
    guard = json.loads((sae_pipeline["run"] / "edits" / "guardrail.json").read_text())
    assert guard["intervention"] == "guardrail"
    g = guard["guardrail"]
    assert (g["window"], g["action"], g["target_fpr"]) == (4, "clamp", 0.1)
    assert set(g["thresholds"]) == {"1"} and g["calibration"]["fpr"]["1"] <= 0.1
    assert "heldout_fpr" in g["calibration"] and "forget_heldout_gated" in g["calibration"]


def test_apply_and_eval_report_the_sae(sae_pipeline):
    from sae_lens import SAE

    run = sae_pipeline["run"]
    saved = json.loads((run / "edited" / "edits.json").read_text())
    assert [e["intervention"] for e in saved] == ["guardrail"]
    SAE.load_from_disk(run / "edited" / "layer_1")  # an edited directory still holds plain sae-lens SAEs
    report = json.loads((run / "eval" / "report.json").read_text())
    rows = {r["row"].split(" ")[0]: r for r in report["rows"]}
    assert rows["bottleneck"]["forget_loss"] == pytest.approx(rows["base"]["forget_loss"], abs=1e-5)  # error term
    assert len(report["rows"]) == 5
    quality = report["fidelity"]
    assert {q["corpus"] for q in quality} == {"forget", "retain"}
    assert all(q["l0"] == pytest.approx(4.0) and q["fvu"] > 0 for q in quality)
    for q in quality:  # a random tiny model: the splice changes the loss, in either direction
        assert q["ce_spliced"] != q["ce_base"] and q["ce_with_error_term"] == pytest.approx(q["ce_base"], abs=1e-5)
        expected = (q["ce_zero_ablation"] - q["ce_spliced"]) / (q["ce_zero_ablation"] - q["ce_base"])
        assert q["ce_recovered"] == pytest.approx(expected)
    assert [g["corpus"] for g in report["guardrails"]] == ["forget", "retain"]
    assert "CE recovered" in (run / "eval" / "report.md").read_text()


def test_a_sae_lens_directory_is_a_bottleneck_dir(sae_pipeline, capsys):
    ws, run = sae_pipeline, sae_pipeline["run"]
    out = run_ok(["stats", *common_flags(ws), "--corpora", str(ws["forget"]), "--bottleneck_dir",
                  str(run / "bottleneck" / "layer_1"), "--output_file", str(run / "ext.safetensors"), "--no_progress"],
                 capsys)  # fmt: skip
    assert "layer 1" in out
    summary = json.loads((run / "ext.json").read_text())
    reference = json.loads((run / "stats" / "forget.json").read_text())
    assert summary["kind"] == "sae" and summary["bottleneck_fingerprint"] == reference["bottleneck_fingerprint"]


def test_sae_cli_errors_are_one_line(sae_pipeline, capsys):
    ws, run = sae_pipeline, sae_pipeline["run"]
    stats = ["--forget_stats", str(run / "stats" / "forget.safetensors"), "--retain_stats",
             str(run / "stats" / "retain.safetensors"), "--output_dir", str(run / "bad")]  # fmt: skip
    assert "negative" in run_error(["forget", *stats, "--multiplier", "3"], capsys)
    assert "calibrate" in run_error(["forget", *stats, "--intervention", "guardrail"], capsys)
    assert "sae" in run_error(["forget", *stats, "--intervention", "exclude"], capsys)
    run_error(["train", *common_flags(ws), "--corpora", str(ws["forget"]), "--bottleneck", "sae", "--layers", "1",
               "--sae_architecture", "gated", "--output_dir", str(run / "bad-train")], capsys)  # fmt: skip
    run_error(["calibrate", *common_flags(ws), "--retain_corpora", str(ws["retain"]), "--bottleneck_dir",
               str(run / "bottleneck"), "--edit", str(run / "edits" / "edit.json"), "--target_fpr", "0",
               "--output_file", str(run / "bad.json")], capsys)  # fmt: skip
