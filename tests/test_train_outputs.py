"""`codeunlearn train` never loses an earlier run: a non-empty output directory is refused without `--overwrite`
(every file untouched), `--resume` continues a run from any working directory (run_args.json holds absolute paths),
and a `--resume` that finds no checkpoint says where it looked without writing anything."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import hashes, make_cli_workspace, run_error, run_ok

from codeunlearn.io import load_tensors

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # tiny matrices; the same thread count as the resumed subprocess
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHAPE = ["--layers", "1", "--num_heads", "4", "--codebook_size", "16", "--num_stages", "1"]
STEPS = ["--key_steps", "2", "--value_steps", "2", "--batch_size", "4", "--kmeans_init_tokens", "64"]
RUN = [*SHAPE, *STEPS, "--seq_len", "16", "--checkpoint_every", "1", "--log_every", "1", "--no_progress"]


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    return make_cli_workspace(tmp_path_factory.mktemp("train_outputs"))


@pytest.fixture(scope="module")
def finished(workspace) -> Path:
    """An uninterrupted run (absolute paths), the reference of the resumed one."""
    from codeunlearn.cli import main

    out = workspace["root"] / "finished"
    argv = ["train", "--model_name_or_path", str(workspace["model"]), "--corpora", str(workspace["retain"])]
    assert main([*argv, *RUN, "--output_dir", str(out)]) == 0
    return out


def test_train_refuses_an_earlier_run_and_leaves_it_untouched(workspace, finished, capsys):
    before = hashes(finished)
    argv = ["train", "--model_name_or_path", str(workspace["model"]), "--corpora", str(workspace["retain"]), *RUN]
    error = run_error([*argv, "--output_dir", str(finished)], capsys)
    assert "not empty" in error and "--overwrite" in error
    assert hashes(finished) == before
    # A folder holding only a finished bottleneck is refused the same way.
    only_bottleneck = workspace["root"] / "only_bottleneck"
    shutil.copytree(finished / "bottleneck", only_bottleneck / "bottleneck")
    kept = hashes(only_bottleneck)
    run_error([*argv, "--output_dir", str(only_bottleneck)], capsys)
    assert hashes(only_bottleneck) == kept
    # --overwrite replaces what the earlier run wrote (its checkpoints would otherwise refuse the new run).
    (only_bottleneck / "notes.txt").write_text("mine")
    run_ok([*argv, "--output_dir", str(only_bottleneck), "--overwrite"], capsys)
    assert (only_bottleneck / "notes.txt").read_text() == "mine"
    # The same weights as the earlier run (the file's bytes may not match: safetensors writes its metadata keys from a
    # hash map, in no fixed order).
    again = load_tensors(only_bottleneck / "bottleneck" / "bottleneck.safetensors", "bottleneck")
    earlier = load_tensors(finished / "bottleneck" / "bottleneck.safetensors", "bottleneck")
    assert again.keys() == earlier.keys()
    assert all(torch.equal(again[name], earlier[name]) for name in earlier)


def test_resume_without_checkpoint_names_the_folder_and_writes_nothing(workspace, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", "--model_name_or_path", str(workspace["model"]), "--corpora", str(workspace["retain"]), *RUN]
    error = run_error([*argv, "--output_dir", "elsewhere", "--resume"], capsys)
    assert str(tmp_path / "elsewhere" / "checkpoints") in error
    assert "--output_dir" in error and "drop --resume" not in error
    assert list(tmp_path.iterdir()) == []  # no stray folder or run_args.json


def test_resume_from_another_working_directory(workspace, finished, tmp_path, monkeypatch, capsys):
    """A run started with relative paths and stopped after 2 of 4 steps, resumed with `--config run_args.json
    --resume` from another working directory, ends where the uninterrupted run ends."""
    start = tmp_path / "start"
    start.mkdir()
    shutil.copy(workspace["retain"], start / "retain.txt")
    monkeypatch.chdir(start)
    model = os.path.relpath(workspace["model"], start)
    argv = ["train", "--model_name_or_path", model, "--corpora", "retain.txt", *RUN, "--output_dir", "run"]
    out = run_ok([*argv, "--stop_after_steps", "2"], capsys)
    assert "continue with --resume" in out
    saved = json.loads((start / "run" / "run_args.json").read_text())
    assert saved["output_dir"] == str(start / "run") and saved["corpora"] == [str(start / "retain.txt")]
    assert saved["model_name_or_path"] == str(Path(workspace["model"]).resolve())
    assert "overwrite" not in saved and "resume" not in saved
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "codeunlearn", "train", "--config", str(start / "run" / "run_args.json")]
    result = subprocess.run(
        [*command, "--resume", "--stop_after_steps", "4"], cwd=elsewhere, env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert list(elsewhere.iterdir()) == []  # everything went to the run's own folder
    resumed = load_tensors(start / "run" / "bottleneck" / "bottleneck.safetensors")
    reference = load_tensors(finished / "bottleneck" / "bottleneck.safetensors")
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
