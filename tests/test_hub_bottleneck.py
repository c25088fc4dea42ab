"""Bottlenecks by name, against a local HTTP server that plays the Hub (`HF_ENDPOINT`): `codeunlearn push
--bottleneck_dir` uploads a trained bottleneck with its card in one commit, and a repo id (with a subfolder and a
revision) resolves wherever a bottleneck directory is expected, through `huggingface_hub`'s cache (isolated per
test). Offline, unknown repos, revisions and folders, and an unreachable Hub are each one line naming the fix, with
nothing written."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import pytest
from fake_hub import VALID_TOKEN, HubRepo, running_hub
from helpers import make_model, make_tokens, run_error, run_ok, tiny_config

from codeunlearn.bottleneck.config import CONFIG_NAME
from codeunlearn.bottleneck.loading import resolve_bottleneck_dir
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.card import read_fidelity_report
from codeunlearn.hub import HubSource, parse_hub_source
from codeunlearn.unlearn.statistics import collect_code_statistics
from codeunlearn.unlearn.statistics_cache import save_retain_statistics

REPO_ID = "alice/tiny-codebook"
BASE_MODEL = "alice/tiny-llama"


@pytest.fixture
def hf_home(monkeypatch, tmp_path) -> Path:
    """An empty Hugging Face home for this test: the download cache, and no stored token. huggingface_hub reads
    HF_HOME into its constants at import, so the constants are patched too."""
    from huggingface_hub import constants

    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    for name in ("HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return home


@pytest.fixture
def hub(monkeypatch, hf_home):
    """A recording Hub on localhost that HF_ENDPOINT points at."""
    with running_hub(monkeypatch) as server:
        yield server


@pytest.fixture(scope="module")
def bottleneck_dir(tmp_path_factory) -> Path:
    """A tiny codebook (layer 1 of a 3-layer Llama, keys fitted by k-means) saved as `codeunlearn train` leaves it:
    RUN/bottleneck/ with cached retain statistics, RUN/run_args.json beside it."""
    run = tmp_path_factory.mktemp("hub") / "run"
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1], base_model=BASE_MODEL))
    tokens = make_tokens(8, 12)
    bmodel.bottleneck(1).initialize(bmodel.states_at(1, tokens))
    bmodel.save_pretrained(run / "bottleneck")
    stats = collect_code_statistics(bmodel, tokens, batch_size=4, corpus="wiki", progress=False)
    save_retain_statistics(stats, run / "bottleneck")
    (run / "run_args.json").write_text(json.dumps({"corpora": ["/home/me/data/wiki.txt"], "retain_corpora": []}))
    return run / "bottleneck"


@pytest.fixture
def eval_report(tmp_path) -> Path:
    """A `codeunlearn eval` report.json of the bottleneck: base and bottleneck rows, FVU per corpus."""
    rows = [{"row": "base", "codes_removed": None, "forget_loss": 2.5, "retain_loss": 2.0}]
    rows += [{"row": "bottleneck", "codes_removed": 0, "forget_loss": 2.75, "retain_loss": 2.125}]
    fidelity = [
        {"layer": 1, "corpus": "forget", "fvu_ordinary": 0.125, "fvu_all": 0.1},
        {"layer": 1, "corpus": "retain", "fvu_ordinary": 0.25, "fvu_all": 0.2},
    ]
    report = {
        "layers": [1],
        "forget_corpora": ["/home/me/data/hp.txt"],
        "retain_corpora": ["/home/me/data/wiki.txt"],
        "heldout_tokens": {"forget": 1000, "retain": 2000},
        "rows": rows,
        "fidelity": fidelity,
    }
    path = tmp_path / "report.json"
    path.write_text(json.dumps(report))
    return path


def snapshot(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def files_under(directory: Path) -> list[Path]:
    return [p for p in directory.rglob("*") if p.is_file()] if directory.exists() else []


def free_port() -> int:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------------------------------- push


def test_push_bottleneck_uploads_files_and_card_in_one_commit(hub, bottleneck_dir, eval_report, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    before = snapshot(bottleneck_dir.parent)
    argv = ["push", "--bottleneck_dir", str(bottleneck_dir.parent), "--repo_id", REPO_ID]
    out = run_ok([*argv, "--fidelity_report", str(eval_report)], capsys)
    assert f"{hub.endpoint}/{REPO_ID}" in out
    assert snapshot(bottleneck_dir.parent) == before  # the local directory is only read

    assert len(hub.created) == 1 and len(hub.commits) == 1  # files and card together
    files = hub.commits[0]["files"]
    local = {p for p in snapshot(bottleneck_dir)}
    assert set(files) == local | {"README.md", "fidelity_report.json"}
    assert {CONFIG_NAME, "bottleneck.safetensors"} <= local
    assert any(p.startswith("statistics/retain-") and p.endswith(".safetensors") for p in local)
    assert all(files[p] == (bottleneck_dir / p).read_bytes() for p in local)
    assert "run_args.json" not in files  # read for the card, not published
    assert json.loads(files["fidelity_report.json"]) == json.loads(eval_report.read_text())

    card = files["README.md"].decode()
    assert card.startswith("---\n")
    meta = card.split("---\n")[1]
    assert "library_name: codeunlearn" in meta and "license: apache-2.0" in meta
    assert f"base_model: {BASE_MODEL}" in meta
    assert "| heads x codes x stages | 4 x 16 x 1 (64 codes per layer) |" in card
    assert "| bits per token | 16 |" in card
    assert "| layers | [1] |" in card and "| model_type | llama |" in card
    assert "`wiki.txt`" in card and "/home/me" not in card  # training corpora, without the local layout
    assert "| hp.txt (forget side of the eval) | +0.2500 | +10.00% |" in card
    assert "| wiki.txt (retain side of the eval) | +0.1250 | +6.25% |" in card
    assert "| layer 1, forget | 0.1250 |" in card and "| layer 1, retain | 0.2500 |" in card
    assert "| wiki |" in card  # the cached retain statistics
    assert f"--bottleneck_dir {REPO_ID}" in card
    assert f'huggingface_hub.snapshot_download("{REPO_ID}")' in card


def test_push_without_report_says_how_to_measure_and_refuses_bad_input(hub, bottleneck_dir, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    run_ok(["push", "--bottleneck_dir", str(bottleneck_dir), "--repo-id", REPO_ID], capsys)
    card = hub.commits[0]["files"]["README.md"].decode()
    assert "Fidelity was not measured" in card and "codeunlearn eval --bottleneck_dir" in card
    assert "fidelity_report.json" not in hub.commits[0]["files"]

    sent = len(hub.requests)
    bad = bottleneck_dir.parent.parent / "bad.json"
    bad.write_text("{not json")
    cases = [
        (["--repo_id", REPO_ID], "nothing to push"),
        (["--bottleneck_dir", str(bottleneck_dir), "--export_dir", str(bottleneck_dir), "--repo_id", REPO_ID], "both"),
        (["--bottleneck_dir", str(bottleneck_dir), "--repo_id", REPO_ID, "--eval_report", str(bad)], "--eval_report"),
        (["--bottleneck_dir", str(bottleneck_dir / "nope"), "--repo_id", REPO_ID], "not found"),
        (["--bottleneck_dir", str(bottleneck_dir), "--repo_id", REPO_ID, "--fidelity_report", str(bad)], "JSON"),
    ]
    for argv, expected in cases:
        assert expected in run_error(["push", *argv], capsys)
    assert len(hub.requests) == sent  # bad input is refused before anything is sent


def test_fidelity_sweep_rows_are_matched_by_run_name_and_shape(bottleneck_dir, tmp_path):
    row = {"bits_per_token": 16.0, "fvu_ordinary": 0.2, "fvu_all": 0.1, "train_corpora": ["history", "wiki"]}
    rows = [
        {**row, "name": "other", "delta_ce": {"wiki": 0.5}, "relative_delta_ce": {"wiki": 0.2}},
        {**row, "name": "run", "delta_ce": {"wiki": 0.05, "hp": 0.08}, "relative_delta_ce": {"wiki": 0.02}},
    ]
    results = tmp_path / "results.jsonl"
    results.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fidelity = read_fidelity_report(results, bottleneck_dir, [1], 16.0)  # the sweep wrote run/bottleneck
    assert fidelity.delta_ce == [("wiki", 0.05, 0.02), ("hp", 0.08, None)]
    assert fidelity.fvu == [("quantized tokens", 0.2), ("all tokens", 0.1)]
    assert fidelity.train_corpora == ["history", "wiki"]
    with pytest.raises(CodeunlearnError, match="none is named after"):
        read_fidelity_report(results, tmp_path / "elsewhere", [1], 16.0)
    loaded = {**row, "name": "x", "config": {"load": str(tmp_path / "elsewhere")}, "delta_ce": {"wiki": 0.01}}
    results.write_text("".join(json.dumps(r) + "\n" for r in [*rows, loaded]))  # a sweep row of a trained one
    assert read_fidelity_report(results, tmp_path / "elsewhere", [1], 16.0).delta_ce == [("wiki", 0.01, None)]
    with pytest.raises(CodeunlearnError, match="16 bits per token, this one has 768") as excinfo:
        read_fidelity_report(results, bottleneck_dir, [1], 768.0)
    assert "\n" not in str(excinfo.value) and "-- fix:" in str(excinfo.value)


# ------------------------------------------------------------------------------------------------- by name


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("me/smollm2-faithful", HubSource("me/smollm2-faithful")),
        ("me/bottlenecks/l15@v1", HubSource("me/bottlenecks", "l15", "v1")),
        ("me/bottlenecks@main", HubSource("me/bottlenecks", "", "main")),
        ("me/b/layers/l15@refs/pr/3", HubSource("me/b", "layers/l15", "refs/pr/3")),
        ("single-name", None),
        ("/abs/path", None),
        ("./rel/path", None),
        ("me/../etc", None),
        ("me/name--bad", None),
        ("me/name@", None),
    ],
)
def test_repo_id_forms(name, expected):
    assert parse_hub_source(name) == expected


def test_repo_id_resolves_through_the_cache_and_loads(hub, bottleneck_dir, hf_home, monkeypatch, capsys):
    monkeypatch.setenv("HF_TOKEN", VALID_TOKEN)
    run_ok(["push", "--bottleneck_dir", str(bottleneck_dir), "--repo_id", REPO_ID], capsys)
    monkeypatch.delenv("HF_TOKEN")  # a public repo downloads without a token

    path = resolve_bottleneck_dir(REPO_ID)
    assert path.is_relative_to(hf_home / "hub") and (path / CONFIG_NAME).is_file()
    original = BottleneckedModel.from_pretrained(make_model("llama"), bottleneck_dir)
    loaded = BottleneckedModel.from_pretrained(make_model("llama"), path)
    assert loaded.fingerprint() == original.fingerprint()

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # now cached: found without a request
    sent = len(hub.requests)
    assert resolve_bottleneck_dir(REPO_ID) == path
    assert len(hub.requests) == sent


def test_subfolder_and_revision(hub, bottleneck_dir):
    repo = hub.repos["alice/bottlenecks"] = HubRepo()
    layer_files = {f"l1/{name}": (bottleneck_dir / name).read_bytes() for name in snapshot(bottleneck_dir)}
    tagged = repo.add({**layer_files, "README.md": b"card"}, refs=("v1",))
    repo.add({"README.md": b"the bottleneck moved"}, refs=("main",))

    path = resolve_bottleneck_dir("alice/bottlenecks/l1@v1")
    assert path.name == "l1" and path.parent.name == tagged and (path / CONFIG_NAME).is_file()
    assert not (path.parent / "README.md").exists()  # only the subfolder is downloaded
    BottleneckedModel.from_pretrained(make_model("llama"), path)
    assert resolve_bottleneck_dir(f"alice/bottlenecks/l1@{tagged}") == path  # a commit sha works too

    with pytest.raises(CodeunlearnError, match="has no folder 'l1'") as excinfo:
        resolve_bottleneck_dir("alice/bottlenecks/l1")  # main no longer holds it
    assert "-- fix:" in str(excinfo.value)
    with pytest.raises(CodeunlearnError, match="holds no bottleneck"):
        resolve_bottleneck_dir("alice/bottlenecks")


# ------------------------------------------------------------------------------------------------- failures


def test_offline_and_not_cached_is_one_error_and_writes_nothing(hub, hf_home, tmp_path, monkeypatch, capsys):
    hub.repos[REPO_ID] = HubRepo()
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CodeunlearnError) as excinfo:
        resolve_bottleneck_dir(REPO_ID)
    message = str(excinfo.value)
    assert "\n" not in message and message.count("-- fix:") == 1
    assert "not in the local Hugging Face cache" in message and "cannot be reached" in message
    assert "download it once with network access" in message

    corpus = tmp_path / "topic.txt"
    corpus.write_text("one document\nanother document\n")
    argv = ["forget", "--bottleneck_dir", REPO_ID, "--forget_corpora", str(corpus), "--topic", "t"]
    line = run_error([*argv, "--num_codes", "4", "--output_dir", str(tmp_path / "out")], capsys)
    assert "not in the local Hugging Face cache" in line
    # (reading the corpus fills HF_HOME/datasets: the hub cache is what the repo id could have touched)
    assert hub.requests == [] and files_under(hf_home / "hub") == [] and not (tmp_path / "out").exists()


def test_unknown_repo_revision_or_unreachable_hub_is_one_clear_error(hub, hf_home, bottleneck_dir, monkeypatch):
    hub.repos[REPO_ID] = HubRepo()
    hub.repos[REPO_ID].add({name: (bottleneck_dir / name).read_bytes() for name in snapshot(bottleneck_dir)})
    cases = [
        ("alice/no-such-repo", "was not found at"),
        (f"{REPO_ID}@no-such-branch", "has no revision 'no-such-branch'"),
        ("missing-directory", "no bottleneck at missing-directory"),
    ]
    for name, expected in cases:
        with pytest.raises(CodeunlearnError, match=expected) as excinfo:
            resolve_bottleneck_dir(name)
        assert "\n" not in str(excinfo.value) and "-- fix:" in str(excinfo.value)
    assert files_under(hf_home / "hub" / "models--alice--no-such-repo") == []
    assert all("no-such-repo" not in str(p) for p in files_under(hf_home))

    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    with pytest.raises(CodeunlearnError, match="cannot be reached") as excinfo:
        resolve_bottleneck_dir(REPO_ID)
    assert "-- fix:" in str(excinfo.value)
    assert files_under(hf_home) == []
