"""`eval --suite` across processes (`codeunlearn.evaluate.suite.parallel`): the dealing rule, and a 2-process CPU
launch (gloo) whose reports equal a 1-process run's score for score, with the base model and failing metrics.

Both runs are subprocesses at OMP_NUM_THREADS=1, so every metric runs the same float operations in the same order
wherever it runs: the scores, details and parameters are compared exactly (the seconds are not).
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_suite import SEQ, suite_flags, tiny_config_dict, workspace  # noqa: F401 (workspace is a fixture)

from codeunlearn import distributed
from codeunlearn.evaluate.metrics.base import EvalContext
from codeunlearn.evaluate.suite import registry
from codeunlearn.evaluate.suite.config import parse_suite_config
from codeunlearn.evaluate.suite.parallel import KIND_SECONDS, SuiteModel, deal, expected_seconds, run_suites
from codeunlearn.evaluate.suite.runner import plan_suite, run_suite
from codeunlearn.modeling import load_model_and_tokenizer

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu.yaml"
BIN = Path(sys.executable).parent
ACCELERATE = [str(BIN / "accelerate"), "launch", "--config_file", str(CPU_CONFIG), str(BIN / "codeunlearn")]


# ----------------------------------------------------------------------------------------------- dealing
def test_deal_gives_the_longest_first_to_the_least_loaded():
    # 5 -> rank 0; 4 -> rank 1; 3 (unit 2) -> rank 1 (4 < 5); 3 (unit 3) -> rank 0 (5 < 7); 3 (unit 4) -> rank 1
    assert deal([5, 4, 3, 3, 3], 2) == [[0, 3], [1, 2, 4]]
    assert deal([1.0, 1.0, 1.0], 1) == [[0, 1, 2]]  # one process: every unit, in order
    assert deal([2.0, 7.0], 4) == [[1], [0], [], []]  # more processes than units: some idle
    assert deal([], 3) == [[], [], []]
    with pytest.raises(ValueError):
        deal([1.0], 0)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=1e3), max_size=40), st.integers(min_value=1, max_value=9))
def test_deal_deals_every_unit_once_deterministically_and_balanced(costs, processes):
    shares = deal(costs, processes)
    assert len(shares) == processes
    assert sorted(i for share in shares for i in share) == list(range(len(costs)))  # each exactly once
    assert all(share == sorted(share) for share in shares)
    assert deal(list(costs), processes) == shares
    # List scheduling's bound: no process expects more than an even share plus one unit.
    loads = [sum(costs[i] for i in share) for share in shares]
    assert max(loads, default=0) <= sum(costs) / processes + max(costs, default=0) + 1e-6


def test_every_registered_metric_has_an_expected_time():
    assert set(KIND_SECONDS) == set(registry.METRICS)
    assert all(full > 0 and fast > 0 for full, fast in KIND_SECONDS.values())


# ----------------------------------------------------------------------------------------------- collectives
def _alone_and_gather(rank: int, world: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = torch.arange(10).view(5, 2)
        with distributed.alone():
            # rank 1 sums alone while rank 0 does not: a collective here would wait forever
            total = distributed.all_sum(rank + 1) if rank == 1 else None
            inside = (distributed.world_size(), distributed.rank(), distributed.gather_rows(distributed.share(rows)))
        out = {
            "inside": inside,
            "total": total,
            "after": (distributed.world_size(), distributed.rank(), distributed.share(rows)),
            "gathered": distributed.all_gather_objects({"rank": rank, "text": "x" * (100 * rank + 1)}),
        }
        torch.save(out, Path(results) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_alone_and_the_object_gather_across_two_processes(tmp_path):
    """Inside `alone()` each process is a run of its own (every row its share); after it the group is back; objects
    of different sizes gather in rank order on every process."""
    mp.spawn(_alone_and_gather, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    rows = torch.arange(10).view(5, 2)
    for rank in range(2):
        got = torch.load(tmp_path / f"{rank}.pt", weights_only=False)
        assert got["inside"][:2] == (1, 0) and torch.equal(got["inside"][2], rows)
        assert got["total"] == (2 if rank == 1 else None)
        assert got["after"][:2] == (2, rank) and torch.equal(got["after"][2], rows.tensor_split(2)[rank])
        assert got["gathered"] == [{"rank": 0, "text": "x"}, {"rank": 1, "text": "x" * 101}]


# ----------------------------------------------------------------------------------------------- one process
def test_run_suites_in_one_process_is_run_suite(workspace):  # noqa: F811
    """Outside a process group every unit runs here, in order, as `run_suite(keep_going=True)` runs it."""
    config = parse_suite_config(tiny_config_dict(), str(workspace["root"] / "tiny.yaml"))
    model, tokenizer = load_model_and_tokenizer(str(workspace["model"]))
    ctx = EvalContext(model, tokenizer, batch_size=4, progress=False)
    shared = {"seq_len": SEQ, "heldout_fraction": 0.3}
    (report,) = run_suites([SuiteModel(ctx, "tiny")], config, workspace["data"], shared=shared, verbose=False)
    alone = run_suite(ctx, config, workspace["data"], shared=shared, description="tiny", verbose=False)
    assert without_seconds(report.to_dict()) == without_seconds(alone.to_dict())
    planned = plan_suite(config, workspace["data"], shared=shared)
    assert [expected_seconds(p, fast) for p in planned for fast in (False, True)] == [38.0, 9.0] * 2
    capped = dataclasses.replace(planned[0], max_items=100)  # --max_items 25 runs a quarter of its items
    assert [expected_seconds(capped, False, cap) for cap in (None, 25, 100, 400)] == [38.0, 9.5, 38.0, 38.0]
    assert expected_seconds(dataclasses.replace(planned[0], max_items=None), False, 25) == 38.0  # count unknown


def without_seconds(report: dict) -> dict:
    report = {k: v for k, v in report.items() if k != "total_seconds"}
    report["metrics"] = [{k: v for k, v in m.items() if k != "seconds"} for m in report["metrics"]]
    return report


# ----------------------------------------------------------------------------------------------- two processes
def parallel_suite(path: Path) -> Path:
    """Held-out losses, a metric that fails when it runs (not when planned), and two attacks; the relearning attack
    draws its LoRA start from the seeded state, so it would differ if a process ran it from another state."""
    broken = {
        "name": "broken",
        "metric": "heldout_loss",
        "group": "general",
        "params": {"corpus": "retain.txt", "skip_positions": 99},
    }
    attacks = [
        {"name": "relearning", "metric": "relearning_attack",
         "params": {"forget_corpus": "forget.txt", "steps": [0, 2], "train_tokens": 64, "eval_tokens": 32,
                    "batch_size": 2}},
        {"name": "bypass", "metric": "bypass_attack",
         "params": {"forget_corpus": "forget.txt", "retain_corpora": ["retain.txt"], "max_tokens": 256}},
    ]  # fmt: skip
    config = tiny_config_dict(attacks=attacks)
    config["metrics"].append(broken)
    path.write_text(yaml.safe_dump(config))
    return path


def launch(launcher: list[str], argv: list[str]) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(
        [*launcher, *argv], capture_output=True, text=True, cwd=REPO, env=environment, timeout=600, check=False
    )


@pytest.fixture(scope="module")
def one_and_two(workspace, tmp_path_factory):  # noqa: F811
    """The same `eval --suite --attacks --with_base` on the edited bottleneck, in one process and in two."""
    root = tmp_path_factory.mktemp("parallel")
    config = parallel_suite(root / "parallel.yaml")
    runs = {}
    for name, launcher in (("one", [str(BIN / "codeunlearn")]), ("two", ACCELERATE)):
        flags = [*suite_flags(workspace, config, root / name), "--model", str(workspace["edited"])]
        runs[name] = launch(launcher, [*flags, "--attacks", "--with_base"])
    return root, runs


def reports(out: Path) -> dict[str, dict]:
    """The report and its base model's, the base column's source (a path inside `out`) checked and left out."""
    found = {which: json.loads((out / which / "report.json").read_text()) for which in (".", "base")}
    assert found["."]["baseline"].pop("source") == str(out / "base" / "report.json")
    return found


@pytest.mark.slow  # two launches of 2 + 1 processes: ~25 s on 2 busy cores
def test_two_processes_report_what_one_process_reports(one_and_two):
    root, runs = one_and_two
    for name in ("one", "two"):  # the failing metric makes both exit 2 after writing, as one process does
        assert runs[name].returncode != 0, runs[name].stderr[-3000:]
        assert "error: 2 metric(s) failed: broken, broken (base model) -- fix: see the errors above and" in (
            runs[name].stderr
        ), runs[name].stderr[-3000:]
    one, two = reports(root / "one"), reports(root / "two")
    for which in (".", "base"):
        names = [m["name"] for m in one[which]["metrics"]]
        assert names == ["forget_loss", "retain_loss", "relearning", "bypass"]
        assert without_seconds(two[which]) == without_seconds(one[which])
        assert list(two[which]["failures"]) == ["broken"]
        assert "skip_positions=99 leaves no target" in two[which]["failures"]["broken"]
    # The model under test and its base differ, and the attacks ran: a comparison of equal nothings proves nothing.
    scores = {m["name"]: m["scores"] for m in two["."]["metrics"]}
    base_scores = {m["name"]: m["scores"] for m in two["base"]["metrics"]}
    assert scores["forget_loss"]["loss"] != base_scores["forget_loss"]["loss"]
    assert scores["relearning"]["forget_loss_step_0"] != scores["relearning"]["forget_loss_step_2"]
    assert scores["bypass"]["has_switch"] == 1.0 and base_scores["bypass"]["has_switch"] == 0.0
    assert two["."]["baseline"]["model"] == two["base"]["model"] == one["base"]["model"]
    for relative in ("report.md", "details/relearning.jsonl", "base/details/bypass.jsonl", "plots/attack.png"):
        assert (root / "two" / relative).is_file(), relative


@pytest.mark.slow
def test_the_work_is_shared_and_the_main_process_alone_prints(one_and_two):
    root, runs = one_and_two
    two = runs["two"]
    # Every (model, metric) ran once, on the rank the dealing rule gives it: both failures are reported (each by
    # the process that ran it, in its progress line on stderr), and the launch ended instead of waiting on them.
    config = parse_suite_config(yaml.safe_load((root / "parallel.yaml").read_text()), str(root / "parallel.yaml"))
    kinds = [s.metric for s in config.specs(attacks=True, fast=False)] * 2  # model under test, then its base
    shares = deal([KIND_SECONDS[k][0] for k in kinds], 2)
    broken = [i for i, spec in enumerate(config.specs(attacks=True, fast=False) * 2) if spec.name == "broken"]
    ranks = {i: r for r, share in enumerate(shares) for i in share}
    assert {ranks[i] for i in broken} == {0, 1}  # this suite puts one failure on each process
    for i in broken:
        assert f"[3/5 rank {ranks[i]}] broken FAILED:" in two.stderr
    assert all(shares)
    # The report is printed once; rank 1's base-model metrics and its progress lines on stdout are not shown.
    one = runs["one"].stdout
    assert two.stdout.count("wrote ") == one.count("wrote ") == 1
    assert two.stdout.count("| forget_loss |") == one.count("| forget_loss |") > 0
    assert "suite tiny on the base model" in two.stdout  # rank 0 runs some base-model metrics
    assert "[2/5] retain_loss: loss" in one and "[2/5 rank 0] retain_loss: loss" in two.stdout
    assert "[1/5 rank 1]" not in two.stdout and "[1/5 rank 1]" not in two.stderr


@pytest.mark.slow
def test_combine_is_refused_under_a_launch(tmp_path):
    out = tmp_path / "table"
    refused = launch(ACCELERATE, ["eval", "--combine", f"a={tmp_path / 'report.json'}", "--output_dir", str(out)])
    assert refused.returncode != 0
    assert "error: `eval --combine` runs in one process (it only reads reports) -- fix: run it without" in (
        refused.stderr
    )
    assert not out.exists()
