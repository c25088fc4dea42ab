"""Issue 22's bad-input matrix: every bad input a new user hit, and the older ones, against a workspace that already
holds the outputs of a whole tiny pipeline (train, stats, forget, apply, eval, export, a baseline).

Each case runs the CLI in-process and must end as one `error: ... -- fix: ...` line with exit code 2 (no traceback),
and leave every file that existed before it byte for byte as it was, with no file added: neither under the
workspace (outputs, inputs, model, corpora) nor in the working directory it ran from. Where a case names an output
it names a pre-existing one (the refusal to overwrite is part of the case) or a fresh path, which must not appear.

The per-field range checks are listed exhaustively in tests/test_bad_input.py (RANGE_CASES); here one or two per
command, beside everything else, against real outputs.
"""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml
from helpers import (
    HIDDEN,
    flip_tensor_byte,
    hashes,
    make_cli_workspace,
    make_model,
    run_error,
    run_ok,
    with_remote_code,
)
from safetensors.torch import save_file

from codeunlearn.bottleneck.config import CONFIG_NAME
from codeunlearn.bottleneck.model import WEIGHTS_NAME

# Imported as a model's own code, it would leave a marker in inputs/ (where the checksums see it, wherever
# transformers copies the module to): a refused directory must never run it.
REMOTE_CODE = """
from pathlib import Path

from transformers import LlamaForCausalLM

Path(MARKER).write_text("remote code ran")


class RemoteLlama(LlamaForCausalLM):
    pass
"""
SHAPE = ["--layers", "1", "--num_heads", "4", "--codebook_size", "16", "--num_stages", "1"]
STEPS = ["--key_steps", "2", "--value_steps", "2", "--batch_size", "4", "--kmeans_init_tokens", "64"]


@dataclass(frozen=True)
class Paths:
    """The workspace of the matrix: the tiny model and corpora, the pipeline's outputs, the bad inputs, and the
    fresh (empty) working directory of the case running now."""

    root: Path
    fresh: Path

    @property
    def model(self) -> Path:
        return self.root / "ws" / "model"

    @property
    def forget(self) -> Path:
        return self.root / "ws" / "forget.txt"

    @property
    def retain(self) -> Path:
        return self.root / "ws" / "retain.txt"

    def out(self, *parts: str) -> str:
        return str(self.root.joinpath("outputs", *parts))

    def bad(self, *parts: str) -> str:
        return str(self.root.joinpath("inputs", *parts))

    def new(self, name: str = "new") -> str:
        """A fresh output path (must not exist after the case)."""
        return str(self.fresh / name)

    def data(self) -> list[str]:
        """The flags every data-reading command shares with the pipeline that wrote the outputs."""
        return ["--model_name_or_path", str(self.model), "--seq_len", "16", "--heldout_fraction", "0.3"]

    def corpora(self) -> list[str]:
        return ["--forget_corpora", str(self.forget), "--retain_corpora", str(self.retain)]


def run_pipeline(p: Paths) -> None:
    """train -> stats -> forget -> apply -> eval -> export, and a one-step GA baseline, into outputs/."""

    def call(argv: list[str]) -> None:
        from codeunlearn.cli import main

        assert main(argv) == 0, argv

    call(["train", *p.data(), "--retain_corpora", str(p.retain), *SHAPE, *STEPS, "--checkpoint_every", "2",
          "--no_progress", "--output_dir", p.out("run")])  # fmt: skip
    for name in ("forget", "retain"):
        call(["stats", *p.data(), "--corpora", str(getattr(p, name)), "--name", name, "--bottleneck_dir",
              p.out("run", "bottleneck"), "--output_file", p.out("stats", f"{name}.safetensors"), "--no_progress"])  # fmt: skip
    call(["forget", "--forget_stats", p.out("stats", "forget.safetensors"), "--retain_stats",
          p.out("stats", "retain.safetensors"), "--topic", "wizards", "--num_codes", "3", "--min_forget_count", "1",
          "--output_dir", p.out("edits")])  # fmt: skip
    call(["apply", "--model_name_or_path", str(p.model), "--bottleneck_dir", p.out("run", "bottleneck"), "--edits",
          p.out("edits", "edit.json"), "--output_dir", p.out("edited")])  # fmt: skip
    call(["eval", *p.data(), *p.corpora(), "--bottleneck_dir", p.out("edited"), "--edits", p.out("edits", "edit.json"),
          "--output_dir", p.out("eval"), "--no_progress"])  # fmt: skip
    call(["export", "--model", str(p.model), "--bottleneck", p.out("run", "bottleneck"), "--edit",
          p.out("edits", "edit.json"), "--out", p.out("export"), "--no_progress"])  # fmt: skip
    call(["baseline", "--method", "ga", *p.data(), *p.corpora(), "--max_steps", "1", "--batch_size", "2",
          "--no_evaluate", "--no_progress", "--output_dir", p.out("baseline")])  # fmt: skip


def write_bad_inputs(p: Paths) -> None:
    """The files the cases read, under inputs/ (hashed with the outputs: reading them must not change them)."""
    inputs = p.root / "inputs"
    inputs.mkdir()
    (inputs / "empty.txt").write_bytes(b"")
    (inputs / "latin1.txt").write_bytes("first line\nsecond caf\u00e9 line\n".encode("latin-1"))
    (inputs / "binary.txt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(512)))
    (inputs / "corpus.bin").write_bytes(bytes(range(256)) * 4)
    (inputs / "bad_syntax.yaml").write_text("forget_stats: [unclosed\noutput_dir: x\n")
    (inputs / "unknown_key.yaml").write_text("forget_stats: a\nretain_stats: b\noutput_dir: c\nnum_codez: 3\n")
    (inputs / "bad_value.json").write_text(json.dumps({"forget_stats": "a", "retain_stats": "b", "num_codes": "many"}))
    (inputs / "not_a_mapping.yaml").write_text("- a list\n- of things\n")
    edit = json.loads(Path(p.out("edits", "edit.json")).read_text())
    (inputs / "not_json_edit.json").write_text("[{not json")
    (inputs / "foreign_edit.json").write_text(json.dumps({**edit, "bottleneck_fingerprint": "0123456789abcdef"}))
    layer = edit["layers"]["1"]
    far = {**edit, "layers": {"1": {**layer, "codes": [9999], "scores": layer["scores"][:1]}}}
    (inputs / "code_out_of_range_edit.json").write_text(json.dumps(far))
    corrupt = inputs / "corrupt_bottleneck"
    shutil.copytree(p.out("run", "bottleneck"), corrupt)
    flip_tensor_byte(corrupt / WEIGHTS_NAME)
    truncated = inputs / "truncated_bottleneck"  # a save cut off halfway
    shutil.copytree(p.out("run", "bottleneck"), truncated)
    weights = (truncated / WEIGHTS_NAME).read_bytes()
    (truncated / WEIGHTS_NAME).write_bytes(weights[: len(weights) // 2])
    broken_config = inputs / "config_not_json_bottleneck"
    shutil.copytree(p.out("run", "bottleneck"), broken_config)
    (broken_config / CONFIG_NAME).write_text("{ not json")
    (inputs / "garbage_stats.safetensors").write_bytes(b"\x10" * 64)
    save_file({"directions": torch.randn(1, HIDDEN)}, str(inputs / "directions.safetensors"))
    marker = repr(str(inputs / "REMOTE_CODE_RAN"))
    with_remote_code(p.model, inputs / "remote_model", REMOTE_CODE.replace("MARKER", marker))
    bloom = make_model("bloom")  # an architecture codeunlearn has no decoder-layer path for
    bloom.save_pretrained(inputs / "bloom_model")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (p.model / name).is_file():
            shutil.copy(p.model / name, inputs / "bloom_model" / name)
    suite = {"name": "tiny", "topic": "t", "metrics": [{"name": "forget_loss", "metric": "heldout_loss",
             "group": "forget", "params": {"corpus": "forget.txt"}}]}  # fmt: skip
    (inputs / "tiny_suite.yaml").write_text(yaml.safe_dump(suite))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """ws/ (tiny model, corpora), outputs/ (the pipeline's results), inputs/ (bad input files)."""
    root = tmp_path_factory.mktemp("matrix")
    (root / "ws").mkdir()
    make_cli_workspace(root / "ws")
    p = Paths(root, root / "unused")
    run_pipeline(p)
    write_bad_inputs(p)
    return root


@dataclass(frozen=True)
class Case:
    """One bad input: the argv it runs (from the workspace's paths), a phrase its error line must hold (and one it
    must not), and whether it runs offline with an empty Hub cache."""

    argv: Callable[[Paths], list[str]]
    expect: str
    offline: bool = False
    absent: str | None = None  # a phrase the line must not hold (a fix that would throw work away)


def stats(p: Paths, corpus: str, *extra: str, bottleneck: str | None = None, output: str | None = None) -> list[str]:
    """`stats` of `corpus` on the trained bottleneck, into a fresh file."""
    return ["stats", *p.data(), "--corpora", corpus, "--name", "x", "--bottleneck_dir",
            bottleneck or p.out("run", "bottleneck"), "--no_progress", *extra,
            "--output_file", output or p.new("x.safetensors")]  # fmt: skip


def train(p: Paths, *extra: str, output: str | None = None) -> list[str]:
    """`train` on the retain corpus (flags given twice: the later one counts)."""
    return ["train", *p.data(), "--retain_corpora", str(p.retain), *SHAPE, *STEPS, "--no_progress", *extra,
            "--output_dir", output or p.new()]  # fmt: skip


def forget(p: Paths, *extra: str, output: str | None = None) -> list[str]:
    """`forget` from the pipeline's statistics files."""
    return ["forget", "--forget_stats", p.out("stats", "forget.safetensors"), "--retain_stats",
            p.out("stats", "retain.safetensors"), "--min_forget_count", "1", *extra,
            "--output_dir", output or p.new()]  # fmt: skip


def forget_text(p: Paths, forget_corpus: str, retain_corpus: str) -> list[str]:
    """`forget` in one command: count both corpora on the trained bottleneck, then select."""
    return ["forget", *p.data(), "--bottleneck_dir", p.out("run", "bottleneck"), "--forget_corpora", forget_corpus,
            "--retain_corpora", retain_corpus, "--no_progress", "--output_dir", p.new()]  # fmt: skip


def apply(p: Paths, *extra: str, bottleneck: str | None = None, output: str | None = None) -> list[str]:
    return ["apply", "--model_name_or_path", str(p.model), "--bottleneck_dir", bottleneck or p.out("run", "bottleneck"),
            *extra, "--output_dir", output or p.new()]  # fmt: skip


def evaluate(p: Paths, *extra: str, output: str | None = None) -> list[str]:
    return ["eval", *p.data(), *p.corpora(), "--bottleneck_dir", p.out("edited"), "--no_progress", *extra,
            "--output_dir", output or p.new()]  # fmt: skip


def suite(p: Paths, *extra: str, model: str | None = None) -> list[str]:
    return ["eval", "--suite", p.bad("tiny_suite.yaml"), "--model", model or str(p.model), *p.data(), "--data_dir",
            str(p.root / "ws"), "--no_progress", *extra, "--output_dir", p.new()]  # fmt: skip


def export(p: Paths, *extra: str, output: str | None = None) -> list[str]:
    return ["export", "--model", str(p.model), "--bottleneck", p.out("run", "bottleneck"), "--no_progress", *extra,
            "--out", output or p.new()]  # fmt: skip


def linear(p: Paths, *extra: str) -> list[str]:
    """`export --mode linear` of the base model (no bottleneck)."""
    return ["export", "--mode", "linear", "--model", str(p.model), "--no_progress", *extra, "--out", p.new()]


def baseline(p: Paths, method: str, *extra: str, output: str | None = None) -> list[str]:
    return ["baseline", "--method", method, *p.data(), *p.corpora(), "--max_steps", "1", "--batch_size", "2",
            "--no_progress", *extra, "--output_dir", output or p.new()]  # fmt: skip


def relearn(p: Paths, *extra: str) -> list[str]:
    return ["relearn", *p.data(), *p.corpora(), "--bottleneck_dir", p.out("edited"), "--steps", "1", "--eval_steps",
            "0", "1", *extra, "--output_dir", p.new()]  # fmt: skip


def inspect(p: Paths, *extra: str, output: str | None = None) -> list[str]:
    return ["inspect", *p.data(), *p.corpora(), "--bottleneck_dir", p.out("run", "bottleneck"), "--edit",
            p.out("edits", "edit.json"), "--no_progress", *extra, "--output_dir", output or p.new()]  # fmt: skip


def calibrate(p: Paths, *extra: str) -> list[str]:
    return ["calibrate", *p.data(), "--retain_corpora", str(p.retain), "--bottleneck_dir", p.out("run", "bottleneck"),
            "--edit", p.out("edits", "edit.json"), *extra, "--output_file", p.new("guardrail.json")]  # fmt: skip


def resume_from_elsewhere(p: Paths) -> list[str]:
    # a relative --output_dir, resolved against the (fresh) working directory the case runs in
    return ["train", *p.data(), "--retain_corpora", str(p.retain), *SHAPE, *STEPS, "--no_progress", "--output_dir",
            "elsewhere", "--resume"]  # fmt: skip


CASES: dict[str, Case] = {
    # ---- issue 22 "Found": data loss, resume, corpus errors, silent acceptance, meaningless edit, garbage, trust
    "found/train-over-a-finished-run": Case(lambda p: train(p, output=p.out("run")), "is not empty"),
    "found/train-over-a-finished-run-from-its-run-args": Case(
        lambda p: ["train", "--config", p.out("run", "run_args.json")], "is not empty"
    ),
    "found/resume-without-checkpoint-from-another-cwd": Case(
        resume_from_elsewhere, "holds no checkpoint", absent="drop --resume"
    ),
    "found/empty-txt": Case(lambda p: stats(p, p.bad("empty.txt")), "empty"),
    "found/latin1-txt": Case(lambda p: stats(p, p.bad("latin1.txt")), "UTF-8"),
    "found/binary-txt": Case(lambda p: stats(p, p.bad("binary.txt")), "UTF-8"),
    "found/unsupported-suffix-bin": Case(lambda p: stats(p, p.bad("corpus.bin")), ".txt"),
    "found/offline-uncached-hub-dataset": Case(
        lambda p: stats(p, "someone/no-such-corpus:cfg:test"), "not in the local cache", offline=True
    ),
    "found/max_tokens=0": Case(lambda p: train(p, "--max_tokens", "0"), "--max_tokens 0 is out of range"),
    "found/max_tokens=-5": Case(lambda p: train(p, "--max_tokens", "-5"), "--max_tokens -5 is out of range"),
    "found/identical-forget-and-retain-stats": Case(
        lambda p: forget(p, "--forget_stats", p.out("stats", "retain.safetensors")), "do not tell the topic apart"
    ),
    "found/identical-forget-and-retain-corpora": Case(
        lambda p: forget_text(p, str(p.retain), str(p.retain)), "do not tell the topic apart"
    ),
    "found/corrupted-tensor-data-stats": Case(
        lambda p: stats(p, str(p.forget), bottleneck=p.bad("corrupt_bottleneck")),
        "does not match its checksum",
    ),
    "found/corrupted-tensor-data-apply": Case(
        lambda p: apply(p, "--edits", p.out("edits", "edit.json"), bottleneck=p.bad("corrupt_bottleneck")),
        "does not match its checksum",
    ),
    "found/eval-suite-model-with-remote-code": Case(
        lambda p: suite(p, model=p.bad("remote_model")), "ships its own Python code"
    ),
    # ---- an existing result is never replaced without --overwrite
    "overwrite/stats-output-file-exists": Case(
        lambda p: stats(p, str(p.forget), output=p.out("stats", "forget.safetensors")),
        "already exists",
    ),
    "overwrite/forget-over-an-earlier-edit": Case(lambda p: forget(p, output=p.out("edits")), "already exists"),
    "overwrite/apply-into-non-empty-dir": Case(
        lambda p: apply(p, "--edits", p.out("edits", "edit.json"), output=p.out("edited")), "is not empty"
    ),
    "overwrite/export-into-non-empty-dir": Case(lambda p: export(p, output=p.out("export")), "is not empty"),
    "overwrite/baseline-into-its-own-earlier-run": Case(
        lambda p: baseline(p, "ga", output=p.out("baseline")), "already holds"
    ),
    "overwrite/inspect-into-non-empty-dir": Case(lambda p: inspect(p, output=p.out("edits")), "is not empty"),
    "overwrite/eval-over-an-earlier-report": Case(lambda p: evaluate(p, output=p.out("eval")), "already exists"),
    # ---- model, architecture, layers
    "model/wrong-layer-index": Case(lambda p: train(p, "--layers", "7"), "layer index [7] out of range"),
    "model/unknown-architecture": Case(lambda p: train(p, "--model_name_or_path", p.bad("bloom_model")), "bloom"),
    "model/export-linear-layer-past-the-end": Case(
        lambda p: linear(p, "--directions", p.bad("directions.safetensors"), "--layer", "9"),
        "layer index [9] out of range",
    ),
    "model/num-heads-not-dividing-hidden-size": Case(
        lambda p: train(p, "--num_heads", "5"), "not divisible by num_heads=5"
    ),
    # ---- damaged files
    "damaged/truncated-bottleneck-weights": Case(
        lambda p: apply(p, "--edits", p.out("edits", "edit.json"), bottleneck=p.bad("truncated_bottleneck")),
        "corrupt or not safetensors",
    ),
    "damaged/bottleneck-config-not-json": Case(
        lambda p: apply(p, "--edits", p.out("edits", "edit.json"), bottleneck=p.bad("config_not_json_bottleneck")),
        "is not valid JSON",
    ),
    "damaged/statistics-file-not-safetensors": Case(
        lambda p: forget(p, "--forget_stats", p.bad("garbage_stats.safetensors")), "corrupt or not safetensors"
    ),
    # ---- corpora
    "corpus/missing-file": Case(lambda p: stats(p, p.bad("nope.txt")), "corpus file not found"),
    "corpus/topic-text-to-train-on": Case(
        lambda p: ["train", *p.data(), "--forget_corpora", str(p.forget), *SHAPE, "--output_dir", p.new()],
        "general text only",
    ),
    # ---- config files
    "config/yaml-syntax-error": Case(lambda p: ["forget", p.bad("bad_syntax.yaml")], "does not parse"),
    "config/unknown-key": Case(lambda p: ["forget", p.bad("unknown_key.yaml")], "unknown keys ['num_codez']"),
    "config/ill-typed-value": Case(
        lambda p: ["forget", p.bad("bad_value.json"), "--output_dir", p.new()], "num_codes='many'"
    ),
    "config/not-a-mapping": Case(lambda p: ["forget", p.bad("not_a_mapping.yaml")], "not a mapping"),
    "config/missing-file": Case(lambda p: ["forget", "--config", p.bad("nope.yaml")], "config file not found"),
    # ---- edit files
    "edit/not-json": Case(lambda p: apply(p, "--edits", p.bad("not_json_edit.json")), "not_json_edit.json"),
    "edit/made-for-another-bottleneck": Case(
        lambda p: apply(p, "--edits", p.bad("foreign_edit.json")), "another bottleneck"
    ),
    "edit/code-out-of-range": Case(lambda p: apply(p, "--edits", p.bad("code_out_of_range_edit.json")), "9999"),
    "edit/missing-file": Case(lambda p: apply(p, "--edits", p.bad("nope.json")), "nope.json"),
    # ---- numeric ranges, one or two per command (the full list: tests/test_bad_input.py RANGE_CASES)
    "range/train-dead_code_threshold=inf": Case(lambda p: train(p, "--dead_code_threshold", "inf"), "finite"),
    "range/train-sae_l1_coefficient=nan": Case(
        lambda p: train(p, "--bottleneck", "sae", "--sae_l1_coefficient", "nan"), "sae_l1_coefficient"
    ),
    "range/stats-seq_len=1": Case(lambda p: [*stats(p, str(p.forget)), "--seq_len", "1"], "--seq_len 1"),
    "range/forget-multiplier=nan": Case(lambda p: forget(p, "--multiplier", "nan"), "--multiplier nan"),
    "range/forget-min_score=-inf": Case(lambda p: forget(p, "--min_score=-inf"), "--min_score -inf"),
    "range/forget-batch_size=0": Case(lambda p: forget(p, "--batch_size", "0"), "--batch_size 0"),
    "range/eval-batch_size=0": Case(lambda p: evaluate(p, "--batch_size", "0"), "--batch_size 0"),
    "range/eval-skip_positions=seq_len-1": Case(lambda p: evaluate(p, "--skip_positions", "15"), "--skip_positions 15"),
    "range/eval-suite-max_length=0": Case(lambda p: suite(p, "--max_length", "0"), "--max_length 0"),
    "range/eval-suite-max_items=0": Case(lambda p: suite(p, "--max_items", "0"), "--max_items 0"),
    "range/calibrate-target_fpr=1": Case(lambda p: calibrate(p, "--target_fpr", "1"), "--target_fpr 1"),
    "range/calibrate-window=0": Case(lambda p: calibrate(p, "--window", "0"), "--window 0"),
    "range/export-linear-rank=0": Case(lambda p: linear(p, "--layer", "1", "--rank", "0"), "--rank 0"),
    "range/export-bake-learning_rate=inf": Case(
        lambda p: export(p, "--mode", "bake", "--edit", p.out("edits", "edit.json"), "--learning_rate", "inf"),
        "--learning_rate inf",
    ),
    "range/export-bake-perturb_alpha=1.5": Case(
        lambda p: export(p, "--mode", "bake", "--perturb_alpha", "1.5", output=p.out("export")), "--perturb_alpha 1.5"
    ),
    "range/baseline-eval_batch_size=0": Case(
        lambda p: baseline(p, "ga", "--eval_batch_size", "0", output=p.out("baseline")), "--eval_batch_size 0"
    ),
    "range/baseline-npo-beta=nan": Case(lambda p: baseline(p, "npo", "--beta", "nan"), "--beta nan"),
    "range/baseline-rmu-layer=-1": Case(lambda p: baseline(p, "rmu", "--layer", "-1"), "--layer -1"),
    "range/baseline-skip_positions=seq_len-1": Case(
        lambda p: baseline(p, "ga", "--skip_positions", "15"), "--skip_positions 15"
    ),
    "range/relearn-lora_alpha=0": Case(lambda p: relearn(p, "--mode", "lora", "--lora_alpha", "0"), "--lora_alpha 0"),
    "range/relearn-relearn_tokens=0": Case(lambda p: relearn(p, "--relearn_tokens", "0"), "--relearn_tokens 0"),
    "range/inspect-contexts=-1": Case(lambda p: inspect(p, "--contexts", "-1"), "--contexts -1"),
    "range/fact-topic-heldout_fraction=1": Case(
        lambda p: [
            "fact-topic",
            "--known_facts",
            p.bad("nope.jsonl"),
            "--heldout_fraction",
            "1",
            "--output_dir",
            p.new(),
        ],
        "--heldout_fraction 1",
    ),
    "range/demo-skip_positions=-1": Case(
        lambda p: ["demo", "--data_dir", str(p.root / "ws"), "--skip_positions", "-1", "--output_dir", p.new()],
        "--skip_positions -1",
    ),
    # ---- usage
    "usage/unknown-command": Case(lambda p: ["tranin"], "unknown command"),
    "usage/unknown-flag": Case(lambda p: forget(p, "--num_codez", "3"), "unrecognized arguments"),
    "usage/push-nothing-to-push": Case(lambda p: ["push", "--repo_id", "me/x"], "nothing to push"),
}


@pytest.fixture(scope="module")
def before(workspace) -> dict[str, str]:
    """The checksums of every pre-existing file, taken once before the first case."""
    return hashes(workspace)


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input(name, workspace, before, tmp_path, monkeypatch, request, capsys, record_property):
    case = CASES[name]
    if case.offline:
        request.getfixturevalue("offline_empty_cache")  # tests/conftest.py
    fresh = tmp_path / "cwd"
    fresh.mkdir()
    monkeypatch.chdir(fresh)  # a stray file written into the working directory shows up here
    line = run_error(case.argv(Paths(workspace, fresh)), capsys)
    assert case.expect in line, line
    assert case.absent is None or case.absent not in line, line
    assert list(fresh.iterdir()) == []  # no fresh output, no run_args.json in the wrong place
    assert hashes(workspace) == before  # every pre-existing file unchanged, none added
    record_property("files_checked", len(before))  # read by benchmarks/reliability_record.py


def test_the_outputs_are_real(workspace, before, tmp_path, capsys):
    """The matrix means something only if the outputs it protects are what the pipeline writes: a trained run with
    checkpoints and run_args.json, both statistics, the edit and its control, the applied bottleneck, the eval
    report, the export and the baseline's model."""
    expected = [
        "outputs/run/run_args.json",
        "outputs/run/bottleneck/bottleneck.safetensors",
        "outputs/stats/forget.safetensors",
        "outputs/stats/retain.safetensors",
        "outputs/edits/edit.json",
        "outputs/edits/random_control.json",
        "outputs/edited/edits.json",
        "outputs/eval/report.json",
        "outputs/export/config.json",
        "outputs/baseline/result.json",
    ]
    assert all(path in before for path in expected), sorted(before)
    assert any(path.startswith("outputs/run/checkpoints/") for path in before)
    # ...and the bad inputs are bad only as claimed: the uncorrupted bottleneck loads and applies the same edit.
    p = Paths(workspace, tmp_path)
    run_ok(apply(p, "--edits", p.out("edits", "edit.json")), capsys)
    assert (tmp_path / "new" / "edits.json").is_file()
