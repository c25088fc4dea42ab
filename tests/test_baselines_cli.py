"""`codeunlearn baseline` and `codeunlearn relearn` end to end on a tiny Llama saved to disk, and their one-line
errors."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import run_error, run_ok, save_tiny_llama

from codeunlearn.cli import main

REPO = Path(__file__).resolve().parents[1]
TOPIC = ["cell", "virus", "bacteria", "immune", "host", "spore", "gene", "toxin"]
OTHER = ["river", "city", "market", "harbor", "bridge", "farmer", "valley", "road"]
COMMON = ["the", "a", "of", "and", "to", "in", "is", "was"]

torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def write_jsonl(path: Path, words: list[str], docs: int, seed: int) -> Path:
    rng = random.Random(seed)
    rows = [{"id": i, "text": " ".join(rng.choice(words + COMMON) for _ in range(80))} for i in range(docs)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama with a word-level tokenizer (save_pretrained), a forget and a retain corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    root = tmp_path_factory.mktemp("baseline_cli")
    vocab = ["<unk>", "</s>", *TOPIC, *OTHER, *COMMON]
    tokenizer = Tokenizer(models.WordLevel({w: i for i, w in enumerate(vocab)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    hf_tokenizer = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", eos_token="</s>")
    save_tiny_llama(root / "model", hf_tokenizer)
    return {
        "root": root,
        "model": root / "model",
        "forget": write_jsonl(root / "forget.jsonl", TOPIC, docs=10, seed=1),
        "retain": write_jsonl(root / "retain.jsonl", OTHER, docs=10, seed=2),
    }


def flags(ws, *extra: str) -> list[str]:
    return [
        "--model_name_or_path",
        str(ws["model"]),
        "--forget_corpora",
        str(ws["forget"]),
        "--retain_corpora",
        str(ws["retain"]),
        "--seq_len",
        "16",
        "--heldout_fraction",
        "0.3",
        "--no_progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def ga_run(ws) -> Path:
    out = ws["root"] / "ga"
    argv = ["baseline", "--method", "ga", *flags(ws), "--max_steps", "4", "--batch_size", "4"]
    assert main([*argv, "--learning_rate", "3e-3", "--warmup_ratio", "0", "--output_dir", str(out)]) == 0
    return out


def test_baseline_writes_model_result_and_report(ga_run):
    from transformers import AutoModelForCausalLM

    result = json.loads((ga_run / "result.json").read_text())
    assert result["method"] == "ga" and result["steps"] == 4 and result["train_seconds"] > 0
    assert result["config"]["learning_rate"] == 3e-3
    report = json.loads((ga_run / "report.json").read_text())
    base, after = report["rows"]
    assert base["row"] == "base" and after["row"] == "ga (4 steps)"
    assert after["delta_forget"] == pytest.approx(after["forget_loss"] - base["forget_loss"])
    assert after["delta_forget"] > 0  # gradient ascent raised the held-out forget loss
    assert "Δ forget" in (ga_run / "report.md").read_text()
    AutoModelForCausalLM.from_pretrained(ga_run / "model")  # a plain transformers directory
    run_args = json.loads((ga_run / "run_args.json").read_text())
    assert run_args["method"] == "ga" and run_args["max_steps"] == 4


def test_relearn_command_on_a_baseline_output(ws, ga_run, tmp_path, capsys):
    out = ws["root"] / "relearn"
    argv = ["relearn", *flags(ws), "--model_name_or_path", str(ga_run / "model"), "--steps", "3"]
    stdout = run_ok([*argv, "--eval_steps", "0", "3", "--learning_rate", "3e-3", "--output_dir", str(out)], capsys)
    curve = json.loads((out / "relearn.json").read_text())["curve"]
    assert curve["steps"] == [0, 3] and len(curve["retain_loss"]) == 2
    assert curve["slice_tokens"] == curve["relearn_tokens"] == 3 * 4 * 16  # no --relearn_tokens: each chunk once
    report = json.loads((ga_run / "report.json").read_text())
    assert curve["forget_loss"][0] == pytest.approx(report["rows"][1]["forget_loss"], rel=1e-5)
    assert "| step | forget loss |" in stdout
    message = run_error([*argv, "--eval_steps", "0", "3", "--output_dir", str(out)], capsys)  # relearn.json exists
    assert "overwrite" in message
    assert "--eval_steps" in run_error([*argv, "--output_dir", str(tmp_path / "r")], capsys)  # default 0 5 10 25 50


def test_config_file_with_method_key(ws, tmp_path, capsys):
    config = tmp_path / "rmu.yaml"
    config.write_text(
        "method: rmu\n"
        f"model_name_or_path: {ws['model']}\n"
        f"forget_corpora: [{ws['forget']}]\n"
        f"retain_corpora: [{ws['retain']}]\n"
        "seq_len: 16\nheldout_fraction: 0.3\nprogress: false\n"
        "layer: 1\nmax_steps: 2\nbatch_size: 2\nlearning_rate: 1.0e-3\n"
        f"output_dir: {tmp_path / 'rmu'}\n"
    )
    stdout = run_ok(["baseline", str(config)], capsys)
    result = json.loads((tmp_path / "rmu" / "result.json").read_text())
    assert result["resolved"]["layer"] == 1 and result["resolved"]["trained_layers"] == [0, 1]
    assert result["resolved"]["steering_coeff"] > 0 and "steering_coeff=" in stdout
    # Flags override the file: the same config, another output directory and more steps.
    run_ok(["baseline", "--config", str(config), "--max_steps", "3", "--output_dir", str(tmp_path / "b")], capsys)
    assert json.loads((tmp_path / "b" / "result.json").read_text())["steps"] == 3


def test_bad_input_gives_one_line_errors(ws, ga_run, tmp_path, capsys):
    out = ["--output_dir", str(tmp_path / "x")]
    assert "ga, grad_diff, npo, rmu" in run_error(["baseline", "--method", "sgd", *flags(ws), *out], capsys)
    assert "--method" in run_error(["baseline", *flags(ws), *out], capsys)
    run_error(["baseline", "--method", "ga", "--beta", "0.1", *flags(ws), *out], capsys)  # an NPO-only flag
    run_error(["baseline", "--method", "npo", "--beta", "0", *flags(ws), *out], capsys)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    assert "empty" in run_error(
        ["baseline", "--method", "ga", *flags(ws), "--forget_corpora", str(empty), *out], capsys
    )
    no_retain = [a for a in flags(ws) if a not in ("--retain_corpora", str(ws["retain"]))]
    assert "retain" in run_error(["baseline", "--method", "rmu", *no_retain, *out], capsys)
    message = run_error(["baseline", "--method", "rmu", *flags(ws), "--layer", "7", *out], capsys)
    assert "[0, 2]" in message
    assert "already holds" in run_error(["baseline", "--method", "ga", *flags(ws), "--output_dir", str(ga_run)], capsys)
    assert "no checkpoint" in run_error(["baseline", "--method", "ga", *flags(ws), "--resume", *out], capsys)


def test_per_method_script_is_the_subcommand():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(REPO / "surgery" / "baselines" / "npo.py"), "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,  # a hang guard; importing torch under a loaded machine can take minutes
    )
    assert done.returncode == 0, done.stderr
    assert "--beta" in done.stdout and "--retain_weight" in done.stdout


def test_benchmark_script_runs_tiny(tmp_path, monkeypatch):
    """benchmarks/baselines.py on its hidden --tiny model: every method gets a timed row of held-out deltas."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import baselines as benchmark

    out = tmp_path / "bench"
    argv = ["--tiny", "--steps", "2", "--batch_size", "2", "--eval_tokens", "512", "--train_tokens", "2048"]
    benchmark.main([*argv, "--relearn_steps", "1", "--methods", "ga", "npo_rt", "rmu", "--out", str(out)])
    result = json.loads((out / "baselines.json").read_text())
    rows = {row["method"]: row for row in result["rows"]}
    assert list(rows) == ["base model", "ga", "npo_rt", "rmu"]
    for name in ("ga", "npo_rt", "rmu"):
        row = rows[name]
        assert row["steps"] == 2 and row["seconds"] > 0 and row["relearn"]["steps"] == [0, 1]
        assert row["delta"]["forget"] == pytest.approx(row["loss"]["forget"] - result["base"]["forget"])
    assert result["configs"]["npo_rt"]["retain_weight"] == 1.0 and rows["rmu"]["resolved"]["layer"] == 1
    assert "| ga | 2 |" in (out / "baselines.md").read_text()
