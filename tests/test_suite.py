"""The evaluation suite (`codeunlearn.evaluate.suite`, `codeunlearn eval --suite`) on tiny models and tiny corpora.

Shipped configs load, name only registered metrics and (when ../shared/data is there) only existing files with
parameters their functions take; bad configs fail in one line; `heldout_loss` scores exactly the held-out split; the
runner is seeded, timed and applies the fast path; reports, details and figures are written atomically; combined
tables; model detection for base, bottleneck, export and plain directories, with a reference model that really is the
base model; the CLI end to end, and its one-line errors.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from export_helpers import make_tokenizer, topic_edits
from helpers import HIDDEN, assert_fix_error, make_tokens, run_error, run_ok, save_tiny_llama, tiny_args, tiny_config

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import load_split
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import token_losses
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult, sample_items
from codeunlearn.evaluate.suite import registry
from codeunlearn.evaluate.suite.config import data_files, load_suite_config, named_configs, parse_suite_config
from codeunlearn.evaluate.suite.models import BaseModelView, base_model_run, load_model_for_eval, model_kind
from codeunlearn.evaluate.suite.report import combine_reports, load_report, markdown_report, write_report
from codeunlearn.evaluate.suite.runner import SuiteReport, plan_suite, run_suite
from codeunlearn.evaluate.suite.text_loss import heldout_loss
from codeunlearn.kinds.sae import attach_sae
from codeunlearn.modeling import load_model_and_tokenizer
from codeunlearn.train import train_bottleneck

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
SEQ = 16  # the tiny models have 64 positions
SHARED = {"seq_len": SEQ, "heldout_fraction": 0.3, "split_seed": 0}
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def toy_metric(
    ctx: EvalContext, *, items: int = 50, fail: bool = False, name: str = "toy", group: str = "general"
) -> MetricResult:
    """A registered test metric: a seeded draw (so seeds matter) and the model's mean logit on fixed tokens (so the
    model matters), with a chance level and per-item details; `fail` raises as a metric with bad input would."""
    if fail:
        raise CodeunlearnError(f"{name}: the toy metric was told to fail", "do not pass fail: true")
    chosen = sample_items(list(range(items)), ctx)
    draw = float(torch.rand(1))  # the runner seeds torch before every metric
    with torch.no_grad():
        logits = ctx.model(input_ids=torch.tensor([[3, 4, 5, 6]])).logits
    return MetricResult(
        name=name,
        scores={"acc": draw, "mean_logit": float(logits.mean())},
        chance={"acc": 0.5},
        n=len(chosen),
        details=[{"item": i} for i in chosen],
        group=group,
    )


def bare_metric(ctx: EvalContext, *, value: float = 1.0) -> MetricResult:
    """A metric function that takes no name or group: the runner names its result after the config."""
    return MetricResult("whatever", {"value": value}, group="forget")


@pytest.fixture
def toy_registered(monkeypatch):
    monkeypatch.setitem(registry.METRICS, "toy", f"{__name__}:toy_metric")
    monkeypatch.setitem(registry.METRICS, "bare", f"{__name__}:bare_metric")


def write_corpus(path: Path, seed: int, words: range, docs: int = 10, length: int = 60) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(" ".join(f"w{rng.choice(words)}" for _ in range(length)) + "\n" for _ in range(docs)))
    return path


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """A tiny Llama directory (and a second one as a different base), corpora, a trained bottleneck, the same
    bottleneck with two edits, and its export."""
    from codeunlearn.export.save import save_pretrained

    root = tmp_path_factory.mktemp("suite")
    tokenizer = make_tokenizer()
    data = root / "data"
    data.mkdir()
    ws = {
        "root": root,
        "data": data,
        "forget": write_corpus(data / "forget.txt", 1, range(3, 40)),
        "retain": write_corpus(data / "retain.txt", 2, range(60, 128)),
        "model": save_tiny_llama(root / "model", tokenizer),
        "other": save_tiny_llama(root / "other", tokenizer, seed=1),
    }
    model, _ = load_model_and_tokenizer(str(ws["model"]))
    bmodel = BottleneckedModel.attach(model, tiny_config(layers=[0, 2]))
    train_bottleneck(bmodel, make_tokens(24, 10, seed=1), tiny_args(root / "run", key_steps=2, value_steps=2))
    bmodel.save_pretrained(root / "bottleneck")
    for edit in topic_edits(bmodel):
        bmodel.apply_edit(edit)
    bmodel.save_pretrained(root / "edited")
    save_pretrained(bmodel, root / "export", tokenizer)
    return {**ws, "bottleneck": root / "bottleneck", "edited": root / "edited", "export": root / "export"}


def tiny_config_dict(**extra) -> dict:
    """A user suite: held-out loss on both corpora (relative to the data dir), plus `extra` keys."""
    return {
        "name": "tiny",
        "topic": "wizards",
        "metrics": [
            {"name": "forget_loss", "metric": "heldout_loss", "group": "forget", "params": {"corpus": "forget.txt"}},
            {"name": "retain_loss", "metric": "heldout_loss", "group": "retain", "params": {"corpus": "retain.txt"}},
        ],
        **extra,
    }


def context(model, tokenizer, **kwargs) -> EvalContext:
    return EvalContext(model, tokenizer, batch_size=4, progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------ configs


def test_named_configs_ship_in_the_package():
    assert set(named_configs()) >= {"microbiology", "harry_potter", "cyber", "geography"}
    for path in named_configs().values():
        assert path.parent.parent == Path(registry.__file__).parent  # inside codeunlearn/evaluate/suite/


@pytest.mark.parametrize("name", sorted(named_configs()))
def test_named_config_uses_registered_metrics_and_shared_data(name):
    config = load_suite_config(name)
    assert config.name == name and config.metrics and config.attacks
    specs = [*config.metrics, *config.attacks]
    assert all(spec.metric in registry.METRICS for spec in specs)
    groups = {spec.group for spec in config.metrics}
    assert {"forget", "retain", "general", "fluency"} <= groups
    assert any(s.metric == "arc_easy" for s in specs) and any(s.metric == "mmlu" for s in specs)
    # known_1000 is a general metric, except where its geography relations are the topic
    known = [s for s in specs if s.metric == "fact_cloze"]
    assert {s.group for s in known} == ({"forget", "retain"} if name == "geography" else {"general"})
    if not SHARED_DATA.is_dir():
        pytest.skip("needs ../shared/data beside the repository")
    missing = [path for _, path in data_files(config) if not (SHARED_DATA / path).exists()]
    assert not missing
    # Every metric function resolves and takes the parameters the config gives it (fast path and attacks too).
    for fast in (False, True):
        planned = plan_suite(config, SHARED_DATA, attacks=True, fast=fast, shared=SHARED)
        assert [p.spec.name for p in planned] == [s.name for s in config.specs(attacks=True, fast=fast)]


BAD_CONFIGS = [
    ({"metrics": [{"metric": "no_such_metric", "group": "forget"}]}, "unknown metric 'no_such_metric'"),
    ({"metrics": [{"metric": "heldout_loss", "params": {"corpus": "a.txt"}}]}, "no `group`"),
    ({"metrics": [{"metric": "heldout_loss", "group": "side"}]}, "group 'side'"),
    ({"metrics": [{"metric": "heldout_loss", "group": "forget", "max_items": "many"}]}, "positive integer"),
    ({"metrics": [{"metric": "heldout_loss", "group": "forget", "params": [1, 2]}]}, "not a mapping"),
    ({"metrics": [{"metric": "heldout_loss", "group": "forget", "paramz": {}}]}, "unknown keys ['paramz']"),
    ({"metrics": [{"metric": "heldout_loss", "group": "forget"}] * 2}, "more than once"),
    ({"metrics": []}, "no `metrics`"),
    ({"metrics": "heldout_loss"}, "not a list"),
    ({"metrics": [{"metric": "heldout_loss", "group": "forget", "name": "a/b"}]}, "plain file name"),
    ({"metrics": [{"metric": "heldout_loss", "group": "forget"}], "fast": {"skip": ["nope"]}}, "not metrics"),
    ({"metrics": [{"metric": "heldout_loss", "group": "forget"}], "speed": 1}, "unknown keys ['speed']"),
    (
        {
            "metrics": [{"metric": "heldout_loss", "group": "forget"}],
            "attacks": [{"metric": "latent_probe", "group": "forget"}],
        },
        "an attack's group",
    ),
    ([1, 2], "not a mapping"),
]


@pytest.mark.parametrize(("data", "message"), BAD_CONFIGS)
def test_bad_configs_fail_in_one_line(data, message):
    with pytest.raises(CodeunlearnError, match=re.escape(message)) as excinfo:
        parse_suite_config(data, "bad.yaml")
    assert_fix_error(excinfo)


def test_unknown_suite_and_missing_file(tmp_path):
    with pytest.raises(CodeunlearnError, match=r"unknown evaluation suite 'astronomy'.*harry_potter") as excinfo:
        load_suite_config("astronomy")
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError, match="not found") as excinfo:
        load_suite_config(tmp_path / "none.yaml")
    (tmp_path / "broken.yaml").write_text("metrics: [\n")
    with pytest.raises(CodeunlearnError, match="does not parse") as excinfo:
        load_suite_config(tmp_path / "broken.yaml")
    assert_fix_error(excinfo)


def test_plan_checks_params_and_data_files(workspace, toy_registered, tmp_path):
    config = parse_suite_config(tiny_config_dict())
    planned = plan_suite(config, workspace["data"], shared={**SHARED, "unused_param": 1})
    assert planned[0].params["corpus"] == str(workspace["data"] / "forget.txt")
    assert planned[0].params["seq_len"] == SEQ and "unused_param" not in planned[0].params
    with pytest.raises(CodeunlearnError, match="data file not found") as excinfo:
        plan_suite(config, tmp_path)
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError, match="no data directory"):
        plan_suite(config, None)
    typo = parse_suite_config(
        {"metrics": [{"metric": "heldout_loss", "group": "forget", "params": {"corpus": "forget.txt", "seqlen": 8}}]}
    )
    with pytest.raises(CodeunlearnError, match=r"seqlen.*takes .*seq_len") as excinfo:
        plan_suite(typo, workspace["data"])
    assert_fix_error(excinfo)


# ------------------------------------------------------------------------------------------------ heldout_loss


def test_heldout_loss_scores_the_heldout_split(workspace):
    model, tokenizer = load_model_and_tokenizer(str(workspace["model"]))
    ctx = context(model, tokenizer)
    result = heldout_loss(
        ctx, corpus=str(workspace["forget"]), seq_len=SEQ, heldout_fraction=0.3, name="f", group="forget"
    )
    train, heldout = load_split(str(workspace["forget"]), tokenizer, SEQ, 0.3, 0, max_tokens=8192)
    expected = token_losses(model, heldout, 4)[:, 1:]  # skip_positions=1 by default
    assert result.scores["loss"] == pytest.approx(float(expected.mean()), abs=1e-6)
    assert result.scores["ppl"] == pytest.approx(math.exp(result.scores["loss"]))
    assert result.chance["loss"] == pytest.approx(math.log(len(tokenizer)))
    assert result.n == expected.numel() and len(result.details) == len(heldout)
    assert (result.name, result.group) == ("f", "forget")
    assert not set(map(tuple, heldout.tolist())) & set(map(tuple, train.tolist()))  # different documents
    with pytest.raises(CodeunlearnError, match="no held-out documents"):
        heldout_loss(ctx, corpus=str(workspace["forget"]), seq_len=SEQ, heldout_fraction=0.0)


# ------------------------------------------------------------------------------------------------ runner, report


def toy_suite() -> dict:
    return tiny_config_dict(
        metrics=[
            *tiny_config_dict()["metrics"],
            {"name": "toy_general", "metric": "toy", "group": "general", "key": "mean_logit", "max_items": 30},
        ],
        attacks=[{"name": "toy_attack", "metric": "toy", "params": {"items": 20}}],
        fast={
            "max_items": 5,
            "params": {"max_tokens": 32},
            "metrics": {"toy_attack": {"items": 8}},
            "skip": ["toy_general"],
        },
    )


def test_run_suite_is_seeded_timed_and_fast(workspace, toy_registered):
    model, tokenizer = load_model_and_tokenizer(str(workspace["model"]))
    config = parse_suite_config(toy_suite(), "toy.yaml")
    full = run_suite(context(model, tokenizer), config, workspace["data"], attacks=True, shared=SHARED, verbose=False)
    assert [r.name for r in full.results] == ["forget_loss", "retain_loss", "toy_general", "toy_attack"]
    assert [r.group for r in full.results] == ["forget", "retain", "general", "attack"]
    assert set(full.seconds) == {r.name for r in full.results} and all(s >= 0 for s in full.seconds.values())
    assert full.item_caps == {"forget_loss": None, "retain_loss": None, "toy_general": 30, "toy_attack": None}
    assert full.result("toy_general").n == 30 and full.result("toy_attack").n == 20
    assert full.headline_key(full.result("toy_general")) == "mean_logit"
    # Same seed: same scores; the toy draw is seeded per metric, so two toy metrics draw the same number.
    again = run_suite(context(model, tokenizer), config, workspace["data"], attacks=True, shared=SHARED, verbose=False)
    assert [r.scores for r in again.results] == [r.scores for r in full.results]
    assert full.result("toy_general").scores["acc"] == full.result("toy_attack").scores["acc"]
    other = run_suite(context(model, tokenizer, seed=1), config, workspace["data"], shared=SHARED, verbose=False)
    assert other.result("toy_general").scores["acc"] != full.result("toy_general").scores["acc"]
    assert other.result("forget_loss").scores == full.result("forget_loss").scores
    # The fast path: smaller caps and params, a skipped metric; attacks only when asked for.
    fast = run_suite(context(model, tokenizer), config, workspace["data"], True, True, SHARED, verbose=False)
    assert [r.name for r in fast.results] == ["forget_loss", "retain_loss", "toy_attack"]
    assert fast.result("toy_attack").n == 5 and fast.params["toy_attack"]["items"] == 8
    assert (
        fast.params["forget_loss"]["max_tokens"] == 32 and fast.result("forget_loss").n < full.result("forget_loss").n
    )
    # A caller's max_items overrides every cap.
    capped = run_suite(context(model, tokenizer, max_items=3), config, workspace["data"], shared=SHARED, verbose=False)
    assert capped.result("toy_general").n == 3


def test_report_files_are_written_atomically(workspace, toy_registered, tmp_path):
    model, tokenizer = load_model_and_tokenizer(str(workspace["model"]))
    base_model, _ = load_model_and_tokenizer(str(workspace["other"]))
    config = parse_suite_config(toy_suite(), "toy.yaml")
    report = run_suite(context(model, tokenizer), config, workspace["data"], True, shared=SHARED, verbose=False)
    base = run_suite(context(base_model, tokenizer), config, workspace["data"], True, shared=SHARED, verbose=False)
    out = tmp_path / "out"
    written = write_report(report, out, base, "base/report.json")
    data = json.loads((out / "report.json").read_text())
    assert data["config"] == "tiny" and data["seed"] == 0 and data["fast"] is False
    assert [m["name"] for m in data["metrics"]] == [r.name for r in report.results]
    assert all("details" not in m and (out / m["details_file"]).is_file() for m in data["metrics"])
    lines = (out / "details" / "toy_general.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == report.result("toy_general").details
    assert data["baseline"]["source"] == "base/report.json"
    assert data["baseline"]["metrics"][0]["scores"] == base.results[0].scores
    assert sorted(data["plots"]) == ["plots/attack.png", "plots/forget.png", "plots/general.png", "plots/retain.png"]
    assert all((out / p).read_bytes().startswith(PNG_MAGIC) for p in data["plots"])
    assert written["json"] == out / "report.json" and len(written["details"]) == 4
    markdown = (out / "report.md").read_text()
    assert "| metric | score | this model | base model | Δ vs base | chance | n | seconds |" in markdown
    assert "| forget_loss | loss |" in markdown and "## Robustness attacks" in markdown
    assert not [p for p in out.rglob(".*")]  # no temporary files left behind
    # report.json reads back into the same scores
    loaded = load_report(out)
    assert [r.scores for r in loaded.results] == [r.scores for r in report.results]
    assert [loaded.headline_key(r) for r in loaded.results] == [report.headline_key(r) for r in report.results]
    assert loaded.item_caps == report.item_caps
    assert "not evaluated" in markdown_report(report)  # no baseline: said so, no empty column


def test_metric_without_name_parameters_is_named_by_the_config(workspace, toy_registered):
    model, tokenizer = load_model_and_tokenizer(str(workspace["model"]))
    config = parse_suite_config(
        {"metrics": [{"name": "mine", "metric": "bare", "group": "general", "params": {"value": 2}}]}
    )
    report = run_suite(context(model, tokenizer), config, None, verbose=False)
    assert (report.results[0].name, report.results[0].group, report.results[0].scores) == (
        "mine",
        "general",
        {"value": 2},
    )


def test_keep_going_records_a_failed_metric(workspace, toy_registered, tmp_path):
    model, tokenizer = load_model_and_tokenizer(str(workspace["model"]))
    failing = tiny_config_dict(attacks=[{"name": "broken", "metric": "toy", "params": {"fail": True}}])
    config = parse_suite_config(failing)
    with pytest.raises(CodeunlearnError, match="told to fail"):
        run_suite(context(model, tokenizer), config, workspace["data"], attacks=True, shared=SHARED, verbose=False)
    report = run_suite(
        context(model, tokenizer), config, workspace["data"], True, shared=SHARED, verbose=False, keep_going=True
    )
    assert [r.name for r in report.results] == ["forget_loss", "retain_loss"]
    assert list(report.failures) == ["broken"] and "told to fail" in report.failures["broken"]
    write_report(report, tmp_path, plots=False)
    assert json.loads((tmp_path / "report.json").read_text())["failures"] == report.failures
    assert "## Failed metrics" in (tmp_path / "report.md").read_text()
    assert load_report(tmp_path).failures == report.failures


def test_non_finite_scores_become_null(tmp_path):
    report = SuiteReport("m", "c", "t", [MetricResult("x", {"acc": math.nan}, group="general")], {"x": 0.1})
    write_report(report, tmp_path, plots=False)
    assert json.loads((tmp_path / "report.json").read_text())["metrics"][0]["scores"] == {"acc": None}
    with pytest.raises(CodeunlearnError, match="not a suite report"):
        (tmp_path / "bad.json").write_text("{}")
        load_report(tmp_path / "bad.json")


def synthetic(model: str, forget: float, retain: float, acc: float) -> SuiteReport:
    results = [
        MetricResult("forget_loss", {"loss": forget, "ppl": math.exp(forget)}, {"loss": 4.85}, 100, group="forget"),
        MetricResult("trivia", {"acc": acc, "acc_norm": acc / 2}, {"acc": 0.5, "acc_norm": 0.5}, 50, group="forget"),
        MetricResult("retain_loss", {"loss": retain, "ppl": math.exp(retain)}, {"loss": 4.85}, 100, group="retain"),
    ]
    return SuiteReport(model, "tiny", "t", results, {r.name: 1.0 for r in results}, headline={"trivia": "acc_norm"})


def test_combine_reports_one_row_per_model(tmp_path):
    reports = {
        "base": synthetic("base model", 3.0, 2.0, 0.8),
        "codebook": synthetic("edited", 4.5, 2.1, 0.55),
        "npo": synthetic("npo", 5.0, 2.6, 0.5),
    }
    write_report(reports["npo"], tmp_path / "npo", plots=False)  # one row read from disk
    markdown = combine_reports({**reports, "npo": tmp_path / "npo" / "report.json"}, tmp_path / "table")
    lines = markdown.splitlines()
    assert lines[0] == (
        "| model | forget_loss (loss) | trivia (acc_norm) | retain_loss (loss) | Δ forget loss vs base | Δ retain loss vs base |"
    )
    assert lines[3] == "| base | 3.0000 | 0.4000 | 2.0000 | +0.0000 | +0.0000 |"
    assert lines[4] == "| codebook | 4.5000 | 0.2750 | 2.1000 | +1.5000 | +0.1000 |"
    assert lines[5].startswith("| npo | 5.0000 | 0.2500 | 2.6000 | +2.0000 | +0.6000 |")
    assert lines[6].startswith("| chance | 4.8500 | 0.5000 | 4.8500 |")
    table = json.loads((tmp_path / "table" / "table.json").read_text())
    assert [r["row"] for r in table["rows"]] == ["base", "codebook", "npo"] and table["reference"] == "base"
    assert (tmp_path / "table" / "table.md").read_text().strip() == markdown
    assert (tmp_path / "table" / "tradeoff.png").read_bytes().startswith(PNG_MAGIC)
    picked = combine_reports(reports, tmp_path / "t2", reference="codebook", columns=["trivia:acc", "retain_loss"])
    assert picked.splitlines()[0].startswith("| model | trivia (acc) | retain_loss (loss) | Δ forget loss vs codebook")
    with pytest.raises(CodeunlearnError, match="no score 'f1'") as excinfo:
        combine_reports(reports, tmp_path / "t3", columns=["trivia:f1"])
    assert_fix_error(excinfo)


def test_combine_takes_rows_of_an_earlier_table_when_its_base_agrees(tmp_path):
    earlier = {"base": synthetic("base model", 3.0, 2.0, 0.8), "rmu": synthetic("rmu", 5.5, 2.05, 0.4)}
    combine_reports(earlier, tmp_path / "earlier")
    recorded = f"{tmp_path / 'earlier' / 'table.json'}#rmu"
    # This run's base scores the same losses; its trivia accuracy differs (another probe sample, say).
    now = {"base": synthetic("base model", 3.0004, 2.0, 0.9), "codebook": synthetic("edited", 4.5, 2.1, 0.6)}
    markdown = combine_reports({**now, "rmu": recorded}, tmp_path / "table")
    lines = markdown.splitlines()
    assert lines[5] == "| rmu (recorded) | 5.5000 | 0.2000† | 2.0500 | +2.5000 | +0.0500 |"
    assert lines[4] == "| codebook | 4.5000 | 0.3000 | 2.1000 | +1.4996 | +0.1000 |"
    assert any(line.startswith("*(recorded)*") and "†" in line for line in lines)
    rows = {r["row"]: r for r in json.loads((tmp_path / "table" / "table.json").read_text())["rows"]}
    assert rows["rmu"]["recorded"] == recorded and rows["rmu"]["reference_differs"] == ["trivia:acc_norm"]
    assert json.loads((tmp_path / "table" / "table.json").read_text())["sources"]["rmu"] == recorded
    # Losses from another base: the recorded loss changes would be wrong, so it is refused, and nothing is written.
    other = {"base": synthetic("base model", 3.2, 2.0, 0.8), "codebook": synthetic("edited", 4.5, 2.1, 0.6)}
    with pytest.raises(CodeunlearnError, match=r"forget_loss:loss 3\.0000, this one 3\.2000") as excinfo:
        combine_reports({**other, "rmu": recorded}, tmp_path / "refused")
    assert_fix_error(excinfo)
    assert not (tmp_path / "refused").exists()
    with pytest.raises(CodeunlearnError, match="has no row 'npo'"):
        combine_reports({**now, "npo": f"{tmp_path / 'earlier'}#npo"}, tmp_path / "refused")
    with pytest.raises(CodeunlearnError, match="not a report of this run"):
        combine_reports({"rmu": recorded, **now}, tmp_path / "refused")


def test_tradeoff_axes_turn_symmetric_log_only_when_one_method_is_far_out():
    from codeunlearn.evaluate.suite.plots import _symlog

    calls = []
    assert _symlog(lambda *a, **k: calls.append((a, k)), [0.02, -0.3, 1.9], 0.1) == "" and calls == []
    note = _symlog(lambda *a, **k: calls.append((a, k)), [0.02, 77.5], 0.1)
    assert calls == [(("symlog",), {"linthresh": 0.1})] and "symmetric log" in note


# ------------------------------------------------------------------------------------------------ models


def test_model_kinds(workspace, tmp_path):
    assert model_kind("smollm2-135m") == "base"  # detected by name; never loaded here
    assert model_kind(str(workspace["model"])) == "model"
    assert model_kind(str(workspace["edited"])) == "bottleneck"
    assert model_kind(str(workspace["root"])) == "bottleneck"  # holds bottleneck/, like a `train` output folder
    assert model_kind(str(workspace["export"])) == "export"
    (tmp_path / "empty").mkdir()
    for bad in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(CodeunlearnError) as excinfo:
            model_kind(str(bad))
        assert_fix_error(excinfo)


def logits(model, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens).logits


def test_plain_model_and_its_reference(workspace):
    tokens = make_tokens(2, 12, seed=3)
    own = load_model_for_eval(str(workspace["model"]), base_model=str(workspace["model"]), progress=False)
    assert own.reference is None and own.description.startswith("base model")
    assert load_model_for_eval(str(workspace["model"]), base_model=None, progress=False).reference is None
    assert base_model_run(own)[0] is own.model
    other = load_model_for_eval(str(workspace["other"]), base_model=str(workspace["model"]), progress=False)
    assert other.description.startswith("model ") and "llama" in other.description
    assert base_model_run(other)[0] is other.reference
    assert torch.equal(logits(other.reference, tokens), logits(own.model, tokens))
    assert not torch.allclose(logits(other.model, tokens), logits(own.model, tokens))


def test_bottleneck_directory_and_base_view(workspace):
    tokens = make_tokens(2, 12, seed=3)
    base, _ = load_model_and_tokenizer(str(workspace["model"]))
    expected_base = logits(base, tokens)
    edited = BottleneckedModel.from_pretrained(
        load_model_and_tokenizer(str(workspace["model"]))[0], workspace["edited"]
    )
    expected_edited = logits(edited, tokens)
    loaded = load_model_for_eval(str(workspace["edited"]), base_model=str(workspace["model"]), progress=False)
    assert "edits: wizards, dragons" in loaded.description and "layers [0, 2]" in loaded.description
    assert isinstance(loaded.model, BottleneckedModel) and isinstance(loaded.reference, BaseModelView)
    assert not torch.allclose(expected_edited, expected_base)  # the edits change these logits
    assert torch.equal(logits(loaded.model, tokens), expected_edited)
    assert torch.equal(logits(loaded.reference, tokens), expected_base)
    assert torch.equal(logits(loaded.model, tokens), expected_edited)  # the view switched the bottleneck back on
    # generate and the attributes metrics read go through the view too
    prompt = tokens[:1, :5]
    with torch.no_grad():
        generated = loaded.reference.generate(input_ids=prompt, max_new_tokens=6, do_sample=False)
        assert torch.equal(generated, base.generate(input_ids=prompt, max_new_tokens=6, do_sample=False))
    assert loaded.reference.config is loaded.model.model.config
    # Evaluating "the base model" of a bottleneck: the BottleneckedModel itself with its bottlenecks off.
    model, evaluating_base = base_model_run(loaded)
    with evaluating_base:
        assert model is loaded.model and torch.equal(logits(model, tokens), expected_base)
    assert torch.equal(logits(model, tokens), expected_edited)
    with pytest.raises(AttributeError):
        loaded.reference.no_such_attribute  # noqa: B018
    with pytest.raises(CodeunlearnError, match="needs its base model"):
        load_model_for_eval(str(workspace["edited"]), base_model=None, progress=False)


def test_exported_directory_and_its_base(workspace):
    tokens = make_tokens(2, 12, seed=3)
    base, _ = load_model_and_tokenizer(str(workspace["model"]))
    edited = BottleneckedModel.from_pretrained(
        load_model_and_tokenizer(str(workspace["model"]))[0], workspace["edited"]
    )
    loaded = load_model_for_eval(str(workspace["export"]), base_model=None, progress=False)
    assert loaded.description.startswith("export ") and "wizards" in loaded.description
    assert torch.allclose(logits(loaded.model, tokens), logits(edited, tokens), atol=1e-5)
    assert torch.allclose(logits(loaded.reference, tokens), logits(base, tokens), atol=1e-5)


def test_attacks_run_on_an_exported_directory(workspace):
    """The latent probe finds the layers of an export, and relearning trains neither its codebook nor adapters."""
    from codeunlearn.evaluate.attacks.latent_probe import latent_probe
    from codeunlearn.evaluate.attacks.relearning import relearning_attack

    loaded = load_model_for_eval(str(workspace["export"]), base_model=None, progress=False)
    ctx = context(loaded.model, loaded.tokenizer)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    probe = latent_probe(
        ctx, forget_corpus=str(workspace["forget"]), retain_corpora=[str(workspace["retain"])], chunk_tokens=8
    )
    assert probe.scores["accuracy"] > 0.6  # disjoint vocabularies: above chance even on a random tiny model
    for mode in ("lora", "full"):
        result = relearning_attack(
            ctx,
            forget_corpus=str(workspace["forget"]),
            steps=(0, 2),
            mode=mode,
            train_tokens=40,
            eval_tokens=20,
            seq_len=10,
            batch_size=2,
        )
        assert result.scores["forget_loss_step_0"] != result.scores["forget_loss_step_2"]  # something was trained
    after = loaded.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_bypass_of_an_export_is_loading_it_with_bottleneck_enabled_false(workspace):
    """Turning an exported model's `bottleneck_enabled` off in memory gives what `from_pretrained(DIR,
    trust_remote_code=True, bottleneck_enabled=False)` loads (the eval loader's reference); it is restored after."""
    from codeunlearn.evaluate.attacks.bypass import bypass_attack, switch_of, switched_off

    tokens = make_tokens(2, 12, seed=3)
    loaded = load_model_for_eval(str(workspace["export"]), base_model=None, progress=False)
    model, off = loaded.model, loaded.reference  # `off`: the same directory loaded with bottleneck_enabled=False
    assert model.config.bottleneck_enabled and not off.config.bottleneck_enabled
    assert switch_of(model) == "config" and switch_of(off) is None
    edited, base = logits(model, tokens), logits(off, tokens)
    assert not torch.allclose(edited, base)
    with switched_off(model) as flipped:
        assert flipped and torch.equal(logits(model, tokens), base)
    assert model.config.bottleneck_enabled and torch.equal(logits(model, tokens), edited)
    with pytest.raises(RuntimeError), switched_off(model):
        raise RuntimeError("restored anyway")
    assert model.config.bottleneck_enabled
    corpora = {"forget_corpus": str(workspace["forget"]), "retain_corpora": [str(workspace["retain"])], **SHARED}
    result = bypass_attack(context(model, loaded.tokenizer), **corpora)
    scores = result.scores
    released, bypassed = (context(m, loaded.tokenizer) for m in (model, off))
    assert scores["forget_loss"] == heldout_loss(released, corpus=str(workspace["forget"]), **SHARED).scores["loss"]
    assert (
        scores["forget_loss_bypassed"]
        == heldout_loss(bypassed, corpus=str(workspace["forget"]), **SHARED).scores["loss"]
    )
    assert (
        scores["retain_loss_bypassed"]
        == heldout_loss(bypassed, corpus=str(workspace["retain"]), **SHARED).scores["loss"]
    )
    assert scores["has_switch"] == 1.0 and "error_term_recovery" not in scores
    # The base-model run of an export (its reference) has no switch.
    assert bypass_attack(bypassed, **corpora).scores["has_switch"] == 0.0


def test_quantization_of_an_export_leaves_its_bottleneck_and_adapters(workspace):
    from codeunlearn.evaluate.attacks.quantization import quantizable_linears, quantize_weights_

    loaded = load_model_for_eval(str(workspace["export"]), base_model=None, progress=False)
    model = loaded.model
    assert len(quantizable_linears(model)) == 21  # 3 Llama layers x 7 linears, none of the bottleneck's
    work = copy.deepcopy(model)
    assert quantize_weights_(work, 4) == 21
    for key, value in work.state_dict().items():
        if key.startswith(("bottlenecks.", "adapters.")) or "layers" not in key or not key.endswith("proj.weight"):
            assert torch.equal(value, model.state_dict()[key]), key
        else:
            assert not torch.equal(value, model.state_dict()[key]), key
    tokens = make_tokens(2, 12, seed=3)
    assert torch.equal(logits(model, tokens), logits(loaded.model, tokens))


def test_suite_with_the_weight_attacks_shows_their_rows(workspace, tmp_path, capsys):
    """`eval --attacks --with_base` on an edited bottleneck: the bypass row gives back the base model's loss, the base
    column has no switch, and the quantization row scores both widths; both rows are in the report and the table."""
    attacks = [
        {"name": "bypass", "metric": "bypass_attack", "key": "forget_recovery",
         "params": {"forget_corpus": "forget.txt", "retain_corpora": ["retain.txt"], "max_tokens": 4096}},
        {"name": "quantization", "metric": "quantization_attack", "key": "forget_recovery_4bit",
         "params": {"forget_corpus": "forget.txt", "retain_corpora": ["retain.txt"], "bits": [8, 4]}},
    ]  # fmt: skip
    fast = {"metrics": {"bypass": {"max_tokens": 64}, "quantization": {"max_tokens": 64}}}
    config = tmp_path / "attacks.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict(attacks=attacks, fast=fast)))
    out = tmp_path / "out"
    flags = [*suite_flags(workspace, config, out), "--model", str(workspace["edited"]), "--attacks", "--with_base"]
    stdout = run_ok(flags, capsys)
    report = json.loads((out / "report.json").read_text())
    base = json.loads((out / "base" / "report.json").read_text())
    rows = {m["name"]: m for m in report["metrics"]}
    base_rows = {m["name"]: m for m in base["metrics"]}
    assert rows["bypass"]["group"] == rows["quantization"]["group"] == "attack"
    assert rows["bypass"]["headline"] == "forget_recovery"
    assert rows["quantization"]["headline"] == "forget_recovery_4bit"
    bypass, base_bypass = rows["bypass"]["scores"], base_rows["bypass"]["scores"]
    assert bypass["has_switch"] == 1.0 and base_bypass["has_switch"] == 0.0
    assert bypass["forget_loss"] == rows["forget_loss"]["scores"]["loss"]  # same split and scoring as heldout_loss
    assert bypass["forget_loss_bypassed"] == pytest.approx(base_rows["forget_loss"]["scores"]["loss"], abs=1e-6)
    assert set(rows["quantization"]["scores"]) >= {"forget_loss_8bit", "forget_loss_4bit", "retain_loss_4bit"}
    assert "| bypass |" in stdout and "| quantization |" in stdout
    # A fast run takes the suite's fast overrides.
    fast_out = tmp_path / "fast"
    run_ok(
        [*suite_flags(workspace, config, fast_out), "--model", str(workspace["edited"]), "--attacks", "--fast"], capsys
    )
    fast_rows = {m["name"]: m for m in json.loads((fast_out / "report.json").read_text())["metrics"]}
    assert fast_rows["bypass"]["params"]["max_tokens"] == 64 and fast_rows["bypass"]["scores"]["has_switch"] == 1.0
    table = run_ok(["eval", "--combine", f"edited={out}", f"base={out / 'base'}", "--output_dir",
                    str(tmp_path / "table")], capsys)  # fmt: skip
    assert "bypass" in table and "quantization" in table


def test_sae_directory_with_a_guardrail_edit(workspace, tmp_path):
    """An SAE bottleneck saved with a guardrail edit loads as the edited model, its reference is the base model,
    and relearning trains neither the SAE nor its edit."""
    from sae_lens import StandardSAE, StandardSAEConfig
    from sae_lens.saes.sae import SAEMetadata

    from codeunlearn.bottleneck.edit import Edit, Guardrail, LayerCodes
    from codeunlearn.evaluate.attacks.relearning import relearning_attack

    torch.manual_seed(0)
    sae = StandardSAE(
        StandardSAEConfig(d_in=HIDDEN, d_sae=16, metadata=SAEMetadata(hook_name="blocks.1.hook_resid_post"))
    )
    with torch.no_grad():
        sae.b_enc.zero_()  # random directions, no bias: about half the features fire on any token
    base, _ = load_model_and_tokenizer(str(workspace["model"]))
    bmodel = attach_sae(base, {1: sae})
    gate = Guardrail(window=4, thresholds={1: 0.0}, action="zero")
    bmodel.apply_edit(
        Edit(
            "wizards",
            {1: LayerCodes([0, 1, 2, 3])},
            "guardrail",
            bottleneck_fingerprint=bmodel.fingerprint(),
            kind="sae",
            guardrail=gate,
        )
    )
    bmodel.save_pretrained(tmp_path / "sae_edited")
    tokens = make_tokens(2, 12, seed=3)
    expected_edited = logits(bmodel, tokens)
    with bmodel.disabled():
        expected_base = logits(bmodel, tokens)
    assert not torch.allclose(expected_edited, expected_base)

    assert model_kind(str(tmp_path / "sae_edited")) == "bottleneck"
    loaded = load_model_for_eval(str(tmp_path / "sae_edited"), base_model=str(workspace["model"]), progress=False)
    assert "wizards" in loaded.description and isinstance(loaded.reference, BaseModelView)
    assert torch.allclose(logits(loaded.model, tokens), expected_edited, atol=1e-6)
    assert torch.allclose(logits(loaded.reference, tokens), expected_base, atol=1e-6)
    before = {k: v.clone() for k, v in loaded.model.state_dict().items()}
    result = relearning_attack(
        context(loaded.model, loaded.tokenizer),
        forget_corpus=str(workspace["forget"]),
        steps=(0, 2),
        train_tokens=40,
        eval_tokens=20,
        seq_len=10,
        batch_size=2,
    )
    assert result.scores["forget_loss_step_0"] != result.scores["forget_loss_step_2"]
    assert all(torch.equal(before[k], v) for k, v in loaded.model.state_dict().items())


# ------------------------------------------------------------------------------------------------ command line


def suite_flags(ws: dict[str, Path], config: Path, out: Path) -> list[str]:
    return [
        "eval", "--suite", str(config), "--model_name_or_path", str(ws["model"]), "--data_dir", str(ws["data"]),
        "--seq_len", str(SEQ), "--heldout_fraction", "0.3", "--output_dir", str(out), "--no_progress",
    ]  # fmt: skip


def test_combine_plots_the_probe_accuracy_drop_when_the_topic_has_no_forget_loss(tmp_path):
    def facts_report(model: str, top1: float, retain: float) -> SuiteReport:
        results = [
            MetricResult("geo_facts", {"top1": top1, "top5": 1.0}, {}, 40, group="forget"),
            MetricResult("history_loss", {"loss": retain}, {"loss": 4.85}, 100, group="retain"),
        ]
        return SuiteReport(model, "facts", "t", results, {r.name: 1.0 for r in results}, headline={"geo_facts": "top1"})

    reports = {"base": facts_report("b", 0.5, 3.0), "edit": facts_report("e", 0.125, 3.25)}
    combine_reports(reports, tmp_path / "table")
    rows = {r["row"]: r for r in json.loads((tmp_path / "table" / "table.json").read_text())["rows"]}
    assert rows["edit"]["forget_accuracy_drop"] == pytest.approx(0.375) and rows["base"]["forget_accuracy_drop"] == 0
    assert rows["edit"]["delta_forget_loss"] is None and rows["edit"]["delta_retain_loss"] == pytest.approx(0.25)
    assert (tmp_path / "table" / "tradeoff.png").read_bytes().startswith(PNG_MAGIC)
    # A topic with a forget loss keeps the loss axis and adds no accuracy field.
    combine_reports({"base": synthetic("b", 3.0, 2.0, 0.8), "x": synthetic("x", 4.0, 2.0, 0.5)}, tmp_path / "t2")
    assert "forget_accuracy_drop" not in json.loads((tmp_path / "t2" / "table.json").read_text())["rows"][1]


def test_cli_suite_end_to_end(workspace, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict()))
    out = tmp_path / "edited"
    stdout = run_ok([*suite_flags(workspace, config, out), "--model", str(workspace["edited"]), "--with_base"], capsys)
    assert "forget_loss" in stdout and "wrote" in stdout
    report = json.loads((out / "report.json").read_text())
    base = json.loads((out / "base" / "report.json").read_text())
    assert report["model"].startswith("bottleneck") and base["model"].startswith("base model of: bottleneck")
    scores = {m["name"]: m["scores"]["loss"] for m in report["metrics"]}
    base_scores = {m["name"]: m["scores"]["loss"] for m in base["metrics"]}
    assert scores != base_scores and report["baseline"]["model"] == base["model"]
    assert (
        report["metrics"][0]["params"]["seq_len"] == SEQ and report["metrics"][0]["params"]["heldout_fraction"] == 0.3
    )
    # The base column equals the plain base model evaluated on its own.
    plain = tmp_path / "plain"
    run_ok([*suite_flags(workspace, config, plain), "--model", str(workspace["model"])], capsys)
    plain_scores = {m["name"]: m["scores"]["loss"] for m in json.loads((plain / "report.json").read_text())["metrics"]}
    assert plain_scores == pytest.approx(base_scores, abs=1e-6)
    # A rerun with the same seed gives identical scores; an earlier base report can fill the base column.
    again = tmp_path / "again"
    run_ok([*suite_flags(workspace, config, again), "--bottleneck_dir", str(workspace["edited"]),
            "--baseline_report", str(plain / "report.json")], capsys)  # fmt: skip
    rerun = json.loads((again / "report.json").read_text())
    assert [m["scores"] for m in rerun["metrics"]] == [m["scores"] for m in report["metrics"]]
    assert "| base model |" in (again / "report.md").read_text()
    # One row per model.
    table = run_ok(["eval", "--combine", f"base={plain}", f"edited={out / 'report.json'}", "--output_dir",
                    str(tmp_path / "table")], capsys)  # fmt: skip
    assert "| base |" in table and "| edited |" in table
    assert (tmp_path / "table" / "tradeoff.png").is_file()


def test_cli_suite_errors_are_one_line(workspace, tmp_path, capsys):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config_dict()))
    out = tmp_path / "out"
    line = run_error([*suite_flags(workspace, config, out)[:2], "astronomy", "--output_dir", str(out)], capsys)
    assert "unknown evaluation suite 'astronomy'" in line
    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump(tiny_config_dict(metrics=[
        {"name": "gone", "metric": "heldout_loss", "group": "retain", "params": {"corpus": "gone.txt"}}])))  # fmt: skip
    line = run_error([*suite_flags(workspace, missing, out), "--model", str(workspace["model"])], capsys)
    assert "data file not found" in line and "gone.txt" in line
    line = run_error(["eval", "--model", str(workspace["model"]), "--output_dir", str(out)], capsys)
    assert "--model is a suite option" in line
    line = run_error(["eval", "--output_dir", str(out)], capsys)
    assert "no --bottleneck_dir" in line
    line = run_error([*suite_flags(workspace, config, out), "--model", str(workspace["model"]), "--bottleneck_dir",
                      str(workspace["edited"])], capsys)  # fmt: skip
    assert "both --model and --bottleneck_dir" in line
    line = run_error(["eval", "--combine", f"x={tmp_path / 'nothing'}", "--output_dir", str(out)], capsys)
    assert "suite report not found" in line
    assert not out.exists()  # nothing was written by any failed run


def test_cli_writes_the_report_before_failing_on_a_failed_metric(workspace, toy_registered, tmp_path, capsys):
    config = tmp_path / "failing.yaml"
    broken = {"name": "broken", "metric": "toy", "group": "general", "params": {"fail": True}}
    config.write_text(yaml.safe_dump(tiny_config_dict(metrics=[*tiny_config_dict()["metrics"], broken])))
    out = tmp_path / "out"
    line = run_error([*suite_flags(workspace, config, out), "--model", str(workspace["model"])], capsys)
    assert "1 metric(s) failed: broken" in line
    report = json.loads((out / "report.json").read_text())
    assert [m["name"] for m in report["metrics"]] == ["forget_loss", "retain_loss"] and "broken" in report["failures"]


def test_eval_script_help_lists_suite_options():
    result = subprocess.run(
        [sys.executable, str(REPO / "eval" / "eval.py"), "--help"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    assert "--suite" in result.stdout and "--with_base" in result.stdout and "--bottleneck_dir" in result.stdout
