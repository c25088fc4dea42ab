"""`eval --suite --model DIR` and remote code (trusted only for codeunlearn's exports or on request), and
`--no_progress` silencing every progress bar, codeunlearn's and its libraries'."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from helpers import make_cli_workspace, run_error, run_ok, with_remote_code

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.suite.models import load_model_for_eval

# What a tqdm bar or codeunlearn's ticker leaves on stderr: "37%|###", "3/10 [", "[00:01<...", "load x: 00:02".
BAR = re.compile(r"\d+%\||\d+/\d+ \[|\[\d\d:\d\d|it/s\]|s/it\]|: \d\d:\d\d")

REMOTE_CODE = """
import os
from pathlib import Path

from transformers import LlamaForCausalLM

Path(os.environ["CODEUNLEARN_TEST_MARKER"]).write_text("remote code ran")


class RemoteLlama(LlamaForCausalLM):
    pass
"""


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    ws = make_cli_workspace(tmp_path_factory.mktemp("trust"))
    ws["remote"] = with_remote_code(ws["model"], ws["root"] / "remote", REMOTE_CODE)
    suite = ws["root"] / "tiny.yaml"
    suite.write_text(
        yaml.safe_dump(
            {
                "name": "tiny",
                "topic": "t",
                "metrics": [
                    {
                        "name": "forget_loss",
                        "metric": "heldout_loss",
                        "group": "forget",
                        "params": {"corpus": "forget.txt"},
                    },
                ],
            }
        )
    )
    ws["suite"] = suite
    return ws


def suite_argv(ws: dict[str, Path], model: Path, out: Path) -> list[str]:
    return [
        "eval", "--suite", str(ws["suite"]), "--model", str(model), "--model_name_or_path", str(ws["model"]),
        "--data_dir", str(ws["root"]), "--seq_len", "16", "--heldout_fraction", "0.3", "--output_dir", str(out),
    ]  # fmt: skip


def test_a_directory_with_remote_code_is_refused_without_the_flag(workspace, tmp_path, monkeypatch, capsys):
    marker = tmp_path / "ran"
    monkeypatch.setenv("CODEUNLEARN_TEST_MARKER", str(marker))
    with pytest.raises(CodeunlearnError, match="--trust_remote_code"):
        load_model_for_eval(str(workspace["remote"]), base_model=None, progress=False)
    line = run_error([*suite_argv(workspace, workspace["remote"], tmp_path / "out"), "--no_progress"], capsys)
    assert "ships its own Python code" in line and "--trust_remote_code" in line
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_the_flag_lets_a_trusted_directory_run_its_code(workspace, tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    monkeypatch.setenv("CODEUNLEARN_TEST_MARKER", str(marker))
    loaded = load_model_for_eval(str(workspace["remote"]), base_model=None, progress=False, trust_remote_code=True)
    assert type(loaded.model).__name__ == "RemoteLlama" and marker.read_text() == "remote code ran"


def test_a_plain_directory_needs_no_flag(workspace):
    loaded = load_model_for_eval(str(workspace["model"]), base_model=None, progress=False)
    assert type(loaded.model).__name__ == "LlamaForCausalLM"


def test_no_progress_silences_every_bar(workspace, tmp_path, capsys):
    from codeunlearn.cli import main

    assert main([*suite_argv(workspace, workspace["model"], tmp_path / "again"), "--no_progress"]) == 0
    _, err = capsys.readouterr()
    assert not BAR.search(err), err


def test_bars_are_shown_without_no_progress(workspace, tmp_path, capsys):
    """The pattern does catch the bars: without --no_progress the same command draws some (and turning them off for
    one command leaves them on for the next)."""
    from codeunlearn.cli import main

    run_ok([*suite_argv(workspace, workspace["model"], tmp_path / "quiet"), "--no_progress"], capsys)
    assert main(suite_argv(workspace, workspace["model"], tmp_path / "loud")) == 0
    _, err = capsys.readouterr()
    assert BAR.search(err), err


def test_progress_bars_off_reaches_the_gguf_bar_and_is_undone(capsys):
    from transformers import modeling_gguf_pytorch_utils as gguf_utils
    from transformers.utils import logging as transformers_logging

    from codeunlearn.runtime import bars_enabled, progress_bars, ticker

    with progress_bars(False):
        list(gguf_utils.tqdm(range(3), desc="Converting and de-quantizing GGUF tensors..."))
        with ticker("load x", enabled=True):
            pass
        assert not transformers_logging.is_progress_bar_enabled() and not bars_enabled(True)
    assert not BAR.search(capsys.readouterr().err)
    assert transformers_logging.is_progress_bar_enabled() and bars_enabled(True)
    list(gguf_utils.tqdm(range(3), desc="x", mininterval=0))
    assert BAR.search(capsys.readouterr().err)


@pytest.mark.parametrize(
    ("argv", "config", "wanted"),
    [
        ([], None, True),
        (["--no_progress"], None, False),
        (["--progress", "false"], None, False),
        (["--no_progress", "--progress"], None, True),  # the last one wins, as in the command's parser
        (["--config", "CONFIG"], "progress: false\n", False),
        (["CONFIG"], "progress: false\n", False),
        (["--config", "CONFIG", "--progress", "true"], "progress: false\n", True),
        (["--config", "CONFIG"], "other: 1\n", True),
        (["--config"], None, True),  # a mistake the command's parser reports
    ],
)
def test_progress_wanted(tmp_path, argv, config, wanted):
    from codeunlearn.cli import progress_wanted

    path = tmp_path / "run.yaml"
    if config is not None:
        path.write_text(config)
    assert progress_wanted([str(path) if a == "CONFIG" else a for a in argv]) is wanted


def test_an_export_runs_unasked_only_with_this_packages_own_code(tmp_path, monkeypatch):
    """model_type `codeunlearn` alone is no reason to trust a directory: its modeling file must be this package's,
    byte for byte. An altered copy is refused without the flag (nothing of it runs) and loads with it."""
    import shutil

    from export_helpers import make_tokenizer, trained_bmodel

    from codeunlearn.export.save import save_pretrained

    export = tmp_path / "export"
    save_pretrained(trained_bmodel("llama", tmp_path / "run"), export, make_tokenizer())
    assert type(load_model_for_eval(str(export), progress=False).model).__name__ == "CodeunlearnForCausalLM"

    altered = tmp_path / "altered"
    shutil.copytree(export, altered)
    marker = tmp_path / "ran"
    monkeypatch.setenv("CODEUNLEARN_TEST_MARKER", str(marker))
    code = altered / "modeling_codeunlearn.py"
    code.write_text(
        code.read_text()
        + '\nimport os\nfrom pathlib import Path\nPath(os.environ["CODEUNLEARN_TEST_MARKER"]).write_text("ran")\n'
    )
    with pytest.raises(CodeunlearnError, match="not this codeunlearn's own") as excinfo:
        load_model_for_eval(str(altered), progress=False)
    assert "--trust_remote_code" in str(excinfo.value) and not marker.exists()
    load_model_for_eval(str(altered), progress=False, trust_remote_code=True)
    assert marker.read_text() == "ran"
