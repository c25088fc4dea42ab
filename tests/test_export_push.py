"""`codeunlearn push` against a local HTTP server that plays the Hub (`HF_ENDPOINT`) and records every request: the
repo is created, every file of the export and the model card (naming the repo, with its license) go up in one
commit; a missing or refused token, an unknown license or a failed commit is a one-line error, and the local
directory stays byte for byte the same."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from export_helpers import make_tokenizer, topic_edits, trained_bmodel
from fake_hub import VALID_TOKEN, running_hub
from helpers import run_error

from codeunlearn.cli import main
from codeunlearn.export.save import save_pretrained

REPO_ID = "alice/tiny-no-wizards"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A recording Hub on localhost; HF_ENDPOINT points at it and no stored token can leak in."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(tmp_path / "no-stored-tokens"))
    with running_hub(monkeypatch) as server:
        yield server


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("push")
    bmodel = trained_bmodel("llama", root / "run")
    bmodel.apply_edit(topic_edits(bmodel)[0])
    save_pretrained(bmodel, root / "export", make_tokenizer())
    return root / "export"


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_push_creates_the_repo_and_uploads_every_file_with_a_card_in_one_commit(hub, export_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    before = snapshot(export_dir)
    argv = ["push", "--export_dir", str(export_dir), "--repo-id", REPO_ID, "--license", "apache-2.0"]
    assert main(argv) == 0
    assert f"{hub.endpoint}/{REPO_ID}" in capsys.readouterr().out
    assert snapshot(export_dir) == before

    assert len(hub.created) == 1
    assert (hub.created[0].get("organization"), hub.created[0]["name"]) == ("alice", "tiny-no-wizards")
    assert hub.created[0].get("visibility") != "private"
    assert all(r["auth"] == f"Bearer {VALID_TOKEN}" for r in hub.requests)
    assert len(hub.commits) == 1  # weights and card together: the repo never holds one without the other
    assert hub.commits[0]["path"] == f"/api/models/{REPO_ID}/commit/main"
    files = hub.commits[0]["files"]
    local = {p for p in before if p != "README.md"}
    assert set(files) == local | {"README.md"}  # every file of the export, nested codeunlearn_bottleneck/ included
    assert "model.safetensors" in files
    assert all(hashlib.sha256(files[p]).hexdigest() == before[p] for p in local)
    text = files["README.md"].decode()
    assert text.startswith("---\n") and "codeunlearn" in text
    assert "license: apache-2.0" in text.split("---\n")[1]
    assert f"\n# {REPO_ID}: " in text  # the title names the repo
    assert f'from_pretrained("{REPO_ID}", trust_remote_code=True)' in text
    assert "| 1 | wizards | substitute |" in text
    assert str(export_dir) not in text


def test_push_without_a_known_license_is_refused_before_anything_is_sent(hub, export_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    before = snapshot(export_dir)
    line = run_error(["push", "--export_dir", str(export_dir), "--repo-id", REPO_ID], capsys)
    assert "license" in line and "fix: pass --license ID" in line
    assert hub.requests == []
    assert snapshot(export_dir) == before
    assert "empty --license" in run_error(
        ["push", "--export_dir", str(export_dir), "--repo-id", REPO_ID, "--license", " "], capsys
    )
    assert hub.requests == []


def test_license_flag_regenerates_the_card_with_it(hub, export_dir, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    assert main(["push", "--export_dir", str(export_dir), "--repo-id", REPO_ID, "--license", "gemma"]) == 0
    text = hub.commits[0]["files"]["README.md"].decode()
    assert "license: gemma" in text.split("---\n")[1] and "`gemma` (given by the uploader)" in text


def test_a_failed_commit_leaves_nothing_half_pushed(hub, export_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    hub.fail_commits = True
    before = snapshot(export_dir)
    line = run_error(["push", "--export_dir", str(export_dir), "--repo-id", REPO_ID, "--license", "mit"], capsys)
    assert "HTTP 500" in line and "unchanged" in line
    assert hub.commits == []  # one commit, refused whole: neither weights nor card landed
    assert snapshot(export_dir) == before


def test_push_with_an_eval_report_publishes_it(hub, export_dir, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    report = tmp_path / "report.json"
    rows = [{"row": "base", "codes_removed": None, "forget_loss": 2.5, "retain_loss": 2.0}]
    rows += [{"row": "bottleneck", "codes_removed": 0, "forget_loss": 2.75, "retain_loss": 2.125}]
    for row in rows:
        row.update(delta_forget=row["forget_loss"] - 2.75, delta_retain=row["retain_loss"] - 2.125)
        row["selectivity"] = row["delta_forget"] - row["delta_retain"]
    report.write_text(json.dumps({"rows": rows, "heldout_tokens": {"forget": 1000, "retain": 2000}}))
    before = snapshot(export_dir)
    argv = ["push", "--dir", str(export_dir), "--repo_id", REPO_ID, "--eval_report", str(report), "--private"]
    assert main([*argv, "--license", "apache-2.0"]) == 0
    assert snapshot(export_dir) == before
    assert hub.created[0]["visibility"] == "private"
    assert len(hub.commits) == 1
    card = hub.commits[0]["files"]
    assert "model.safetensors" in card
    assert json.loads(card["eval_report.json"]) == json.loads(report.read_text())
    text = card["README.md"].decode()
    assert "| bottleneck | 0 | 2.7500 | 2.1250 | +0.0000 | +0.0000 | +0.0000 |" in text
    assert "forget 1,000, retain 2,000" in text


def test_missing_token_is_one_line_and_sends_nothing(hub, export_dir, capsys):
    before = snapshot(export_dir)
    argv = ["push", "--export_dir", str(export_dir), "--repo-id", REPO_ID, "--license", "apache-2.0"]
    line = run_error(argv, capsys)
    assert "no Hugging Face token" in line and "HF_TOKEN" in line
    assert hub.requests == []
    assert snapshot(export_dir) == before


def test_refused_token_is_one_line_and_keeps_the_directory(hub, export_dir, capsys):
    before = snapshot(export_dir)
    argv = ["push", "--export_dir", str(export_dir), "--repo-id", REPO_ID, "--token", "hf_revoked"]
    line = run_error([*argv, "--license", "apache-2.0"], capsys)
    assert "refused the token (401" in line and "unchanged" in line
    assert hub.requests and hub.commits == []
    assert snapshot(export_dir) == before


def test_unreachable_hub_and_bad_directories(monkeypatch, export_dir, tmp_path, capsys):
    import socket

    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    argv = ["push", "--export_dir", str(export_dir), "--repo-id", REPO_ID, "--token", "x", "--license", "mit"]
    assert "cannot reach the Hub" in run_error(argv, capsys)
    assert "not found" in run_error(["push", "--export_dir", str(tmp_path / "nope"), "--repo-id", REPO_ID], capsys)
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text('{"model_type": "llama"}')
    line = run_error(["push", "--export_dir", str(tmp_path / "plain"), "--repo-id", REPO_ID], capsys)
    assert "not a codeunlearn export" in line
