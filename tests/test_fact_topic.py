"""The geography fact topic: a split with no subject shared between train and held-out, files the corpus loader and
the fact metric read back, atomic writes that refuse a non-empty directory, and the `fact-topic` command."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_error, run_ok

from codeunlearn.data import load_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.facts import (
    GEOGRAPHY_RELATIONS,
    FactTopic,
    fact_sentence,
    split_fact_topic,
    write_fact_topic,
)
from codeunlearn.evaluate.metrics.probe_data import FactItem, load_facts
from codeunlearn.evaluate.suite.config import data_files, load_suite_config
from codeunlearn.evaluate.suite.fact_suite import write_fact_suite

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


def fact(known_id: int, subject: str, prompt: str, attribute: str, relation: str) -> dict:
    return {
        "known_id": known_id,
        "subject": subject,
        "attribute": attribute,
        "template": "{}",
        "prediction": "",
        "prompt": prompt,
        "relation_id": relation,
    }


def known_facts(path: Path) -> Path:
    """A small known_1000-style file: linked subjects (France / Paris / Eiffel Tower, Vietnam on both sides) and
    independent geography and language facts."""
    rows = [
        fact(0, "France", "The capital of France is", "Paris", "P36"),
        fact(1, "Paris", "Paris is located in the country of", "France", "P17"),
        fact(2, "Eiffel Tower", "Eiffel Tower is located in the country of", "France", "P17"),
        fact(3, "Vietnam", "Vietnam is located in the continent of", "Asia", "P30"),
        fact(4, "Vietnam", "The official language of Vietnam is", "Vietnamese", "P37"),
    ]
    for i in range(16):
        relation = GEOGRAPHY_RELATIONS[i % 3]
        rows.append(fact(10 + i, f"Town{i}", f"Town{i} is a place in", f"Region{i}", relation))
    for i in range(24):
        rows.append(fact(40 + i, f"Person{i}", f"The mother tongue of Person{i} is", f"Language{i % 4}", "P103"))
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def train_and_heldout(topic: FactTopic) -> tuple[list[FactItem], list[FactItem]]:
    return topic.forget_train + topic.retain_train, topic.forget_heldout + topic.retain_heldout


def assert_no_leak(topic: FactTopic) -> None:
    """No held-out subject occurs (whole words, any case) in a training sentence, and no subject is on both sides."""
    train, heldout = train_and_heldout(topic)
    sentences = [fact_sentence(f).casefold() for f in train]
    for item in heldout:
        pattern = re.compile(r"(?<!\w)" + re.escape(item.subject.casefold()) + r"(?!\w)")
        assert not any(pattern.search(s) for s in sentences), item
    assert not {f.subject for f in train} & {f.subject for f in heldout}


def test_split_has_no_subject_leak_and_keeps_relations_apart(tmp_path):
    path = known_facts(tmp_path / "known.jsonl")
    topic = split_fact_topic(path, heldout_fraction=0.5, seed=0)
    assert_no_leak(topic)
    assert all(f.relation in GEOGRAPHY_RELATIONS for f in topic.forget_train + topic.forget_heldout)
    assert all(f.relation not in GEOGRAPHY_RELATIONS for f in topic.retain_train + topic.retain_heldout)
    counts = topic.counts()
    assert (
        counts["forget_train"] + counts["forget_heldout"] == 20
        and counts["retain_train"] + counts["retain_heldout"] == len(load_facts(path)) - 20
    )
    assert abs(counts["forget_heldout"] - 10) <= 3 and abs(counts["retain_heldout"] - 12) <= 3
    train, heldout = train_and_heldout(topic)
    france = {f.id for f in train if f.id in (0, 1, 2)} or {f.id for f in heldout if f.id in (0, 1, 2)}
    assert france == {0, 1, 2}  # linked through each other's sentences: always on one side together
    vietnam_sides = {f.id in {h.id for h in heldout} for f in load_facts(path) if f.subject == "Vietnam"}
    assert len(vietnam_sides) == 1  # a subject with a forget and a retain fact stays on one side


def test_split_is_seeded(tmp_path):
    path = known_facts(tmp_path / "known.jsonl")
    assert split_fact_topic(path, seed=3) == split_fact_topic(path, seed=3)
    heldout_sets = {tuple(f.id for f in split_fact_topic(path, seed=s).forget_heldout) for s in range(4)}
    assert len(heldout_sets) > 1


def test_split_rejects_bad_settings(tmp_path):
    path = known_facts(tmp_path / "known.jsonl")
    with pytest.raises(CodeunlearnError, match="heldout_fraction"):
        split_fact_topic(path, heldout_fraction=1.0)
    with pytest.raises(CodeunlearnError, match="P999"):
        split_fact_topic(path, forget_relations=["P30", "P999"])
    with pytest.raises(CodeunlearnError, match="empty parts"):
        split_fact_topic(path, forget_relations=["P37"])  # one fact cannot be both trained on and held out


def test_written_topic_loads_as_corpora_and_probes(tmp_path):
    path = known_facts(tmp_path / "known.jsonl")
    out = tmp_path / "geo"
    topic = write_fact_topic(path, out, seed=1)
    assert sorted(p.name for p in out.iterdir()) == [
        "forget_train.jsonl",
        "probes_forget.jsonl",
        "probes_retain.jsonl",
        "retain_train.jsonl",
        "topic.json",
    ]
    assert load_documents(str(out / "forget_train.jsonl")) == [fact_sentence(f) for f in topic.forget_train]
    assert load_documents(str(out / "retain_train.jsonl")) == [fact_sentence(f) for f in topic.retain_train]
    assert load_facts(out / "probes_forget.jsonl") == topic.forget_heldout
    assert load_facts(out / "probes_retain.jsonl") == topic.retain_heldout
    summary = json.loads((out / "topic.json").read_text())
    assert summary["counts"] == topic.counts() and summary["seed"] == 1
    assert summary["forget_relations"] == list(GEOGRAPHY_RELATIONS) and summary["retain_relations"] == ["P103", "P37"]


def test_write_refuses_a_non_empty_directory_unless_overwrite(tmp_path):
    path = known_facts(tmp_path / "known.jsonl")
    out = tmp_path / "geo"
    write_fact_topic(path, out, seed=0)
    with pytest.raises(CodeunlearnError, match="not empty"):
        write_fact_topic(path, out, seed=1)
    assert json.loads((out / "topic.json").read_text())["seed"] == 0  # untouched
    write_fact_topic(path, out, seed=1, overwrite=True)
    assert json.loads((out / "topic.json").read_text())["seed"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["geo", "known.jsonl"]  # no temporary directories left


def test_cli_writes_the_topic_and_reports_errors_in_one_line(tmp_path, capsys):
    path = known_facts(tmp_path / "known.jsonl")
    out = tmp_path / "geo"
    printed = run_ok(["fact-topic", "--known_facts", str(path), "--output_dir", str(out), "--seed", "2"], capsys)
    assert "forget_train" in printed and (out / "topic.json").is_file()
    assert str(out / "suite.yaml") in printed
    assert json.loads((out / "topic.json").read_text())["seed"] == 2
    run_error(["fact-topic", "--known_facts", str(path), "--output_dir", str(out)], capsys)  # not empty
    error = run_error(
        ["fact-topic", "--known_1000", str(path), "--output_dir", str(tmp_path / "x"), "--forget_relations", "P9"],
        capsys,
    )
    assert "P9" in error
    run_error(["fact-topic", "--known_facts", str(tmp_path / "missing.jsonl"), "--output_dir", str(out)], capsys)


def test_topic_suite_scores_the_held_out_facts_of_the_topic(tmp_path):
    path = known_facts(tmp_path / "known.jsonl")
    out = tmp_path / "geo"
    write_fact_topic(path, out, forget_relations=["P30", "P36"], seed=1)
    suite_path = write_fact_suite(
        out, ["P30", "P36"], forget_train="forget_train.jsonl", probes_forget="probes_forget.jsonl",
        probes_retain="probes_retain.jsonl",
    )  # fmt: skip
    suite = load_suite_config(suite_path)
    specs = {s.name: s for s in suite.specs(attacks=True)}
    forget, retain = specs["geo_facts"], specs["other_facts"]
    assert (forget.group, retain.group) == ("forget", "retain")
    assert forget.params == {"path": "./probes_forget.jsonl", "relations": ["P30", "P36"]}
    assert retain.params == {"path": "./probes_retain.jsonl", "exclude_relations": ["P30", "P36"]}
    assert forget.max_items is None and retain.max_items is None  # all held-out facts, not a sample
    assert specs["rephrased_facts"].params["path"] == forget.params["path"]
    relearning = specs["relearning"]
    assert relearning.params["forget_corpus"] == "./forget_train.jsonl"
    assert relearning.params["facts_path"] == forget.params["path"]
    assert relearning.params["fact_relations"] == ["P30", "P36"]
    assert (
        relearning.key == "facts_recovery"
        and relearning.params["steps"][-1] == 50
        and suite.fast.metrics["relearning"]["steps"] == [0, 5]
    )
    # Everything else is the shipped geography suite, read from --data_dir as before.
    shipped = {s.name: s for s in load_suite_config("geography").specs(attacks=True)}
    for name in set(shipped) - {"geo_facts", "other_facts", "rephrased_facts"}:
        assert specs[name] == shipped[name]
    topic_files = {p for _, p in data_files(suite) if p.startswith("./")}
    assert topic_files == {"./probes_forget.jsonl", "./probes_retain.jsonl", "./forget_train.jsonl"}
    assert all((Path(suite.source).parent / p).is_file() for p in topic_files)


@pytest.mark.skipif(not (SHARED_DATA / "retain").is_dir(), reason="needs ../shared/data beside the repository")
def test_a_topic_folder_moves_with_its_suite(tmp_path, monkeypatch):
    from codeunlearn.evaluate.suite.runner import plan_suite

    path = known_facts(tmp_path / "known.jsonl")
    write_fact_topic(path, tmp_path / "geo", forget_relations=["P30", "P36"], seed=1)
    write_fact_suite(
        tmp_path / "geo", ["P30", "P36"], forget_train="forget_train.jsonl", probes_forget="probes_forget.jsonl",
        probes_retain="probes_retain.jsonl",
    )  # fmt: skip
    moved = tmp_path / "elsewhere" / "geography_topic"
    moved.parent.mkdir()
    (tmp_path / "geo").rename(moved)
    monkeypatch.chdir(tmp_path / "elsewhere")  # neither the old folder nor the suite's own
    suite = load_suite_config("geography_topic/suite.yaml")
    planned = {p.spec.name: p.params for p in plan_suite(suite, SHARED_DATA, attacks=True)}
    assert Path(planned["geo_facts"]["path"]).resolve() == (moved / "probes_forget.jsonl").resolve()
    assert Path(planned["relearning"]["forget_corpus"]).resolve() == (moved / "forget_train.jsonl").resolve()
    # the shipped data still comes from --data_dir
    assert Path(planned["history_loss"]["corpus"]).resolve().is_relative_to(SHARED_DATA.resolve())


def test_thin_script_runs_the_command(tmp_path):
    path = known_facts(tmp_path / "known.jsonl")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, str(REPO / "eval" / "make_fact_topic.py"), "--known_facts", str(path)]
    done = subprocess.run([*argv, "--output_dir", str(tmp_path / "geo")], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "geo" / "probes_forget.jsonl").is_file()


@pytest.mark.skipif(not (SHARED_DATA / "eval").is_dir(), reason="needs ../shared/data beside the repository")
def test_split_of_the_shipped_known_1000():
    topic = split_fact_topic(SHARED_DATA / "eval" / "known_1000.jsonl")
    assert_no_leak(topic)
    counts = topic.counts()
    forget = counts["forget_train"] + counts["forget_heldout"]
    assert forget == sum(
        1 for f in load_facts(SHARED_DATA / "eval" / "known_1000.jsonl") if f.relation in {"P30", "P17", "P36"}
    )
    assert abs(counts["forget_heldout"] / forget - 0.5) < 0.1
    assert abs(counts["retain_heldout"] / (counts["retain_train"] + counts["retain_heldout"]) - 0.5) < 0.1
