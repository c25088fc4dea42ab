"""The short-answer metric (`short_answer`, the general sports questions) on models whose right answers are known.

The models are `BagLM`s from test_metrics_probes: "after context token X, prefer token Y" is set by hand, so an
oracle knows every answer, an anti-oracle picks a wrong sport, and a nearly flat model has known log-probabilities.
"""

from __future__ import annotations

import itertools
import math

import pytest
from test_metrics_probes import SHARED_DATA, SPORTS, BagLM, V, assert_one_line, context, write_jsonl

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.probe_data import QAItem, load_qa_items
from codeunlearn.evaluate.metrics.qa import short_answer

CANDIDATES = sorted([*SPORTS, "golf"])  # the distinct which_sport answers of qa_rows(), as the metric orders them


def qa_rows() -> list[dict]:
    """Six which_sport rows (question w{k}, four distinct sports) and three sport_trivia rows (question w{10+k}),
    one of them with a two-token answer."""
    sports = ["football", "basketball", "baseball", "golf", "football", "baseball"]
    rows = [{"id": f"ws-{k}", "kind": "which_sport", "question": f"w{k}", "answer": s} for k, s in enumerate(sports)]
    trivia = [("w30 w31", "football"), ("w32", "basketball"), ("w33", "baseball")]
    rows += [
        {"id": f"st-{k}", "kind": "sport_trivia", "question": f"w{10 + k}", "answer": answer, "sport": sport}
        for k, (answer, sport) in enumerate(trivia)
    ]
    return rows


def oracle(rows: list[dict]) -> BagLM:
    """Prefers each question's answer after the question, and each answer word after the one before it."""
    model = BagLM()
    for row in rows:
        words = row["answer"].split()
        model.prefer(row["question"], words[0], 10.0)
        for before, after in itertools.pairwise(words):
            model.prefer(before, after, 20.0)  # beats the first word, still preferred after the question
    return model


def test_oracle_answers_exactly_and_picks_every_sport(tmp_path):
    rows = qa_rows()
    path = write_jsonl(tmp_path / "sport_general.jsonl", rows)
    result = short_answer(context(oracle(rows)), path=path)
    assert result.name == "sport_general" and result.group == "retain" and result.n == 9
    assert result.scores["greedy_exact"] == 1.0 and result.scores["acc"] == 1.0
    assert result.scores["answer_logprob"] > -0.1
    assert result.chance == {"acc": 0.25}
    kinds = [d for d in result.details if d["kind"] == "probe_kind"]
    items = [d for d in result.details if d["kind"] == "item"]
    assert result.details == kinds + items  # the breakdown first, then the items
    assert [d["id"] for d in items] == [row["id"] for row in rows]
    which, trivia = kinds
    assert which == {
        "kind": "probe_kind",
        "probe_kind": "which_sport",
        "n": 6,
        "greedy_exact": 1.0,
        "answer_logprob": which["answer_logprob"],
        "acc": 1.0,
        "candidates": CANDIDATES,
    }
    assert trivia["probe_kind"] == "sport_trivia" and trivia["n"] == 3 and "acc" not in trivia
    assert [d["pred"] for d in items if d["probe_kind"] == "which_sport"] == [row["answer"] for row in rows[:6]]
    assert all(len(d["logprobs"]) == 4 for d in items[:6]) and "pred" not in items[6]
    assert items[6]["num_tokens"] == 2 and items[6]["sport"] == "football" and items[0]["sport"] is None


def test_anti_oracle_picks_the_wrong_sport(tmp_path):
    rows = qa_rows()
    path = write_jsonl(tmp_path / "sport_general.jsonl", rows)
    model = BagLM()
    for row in rows[:6]:
        model.prefer(row["question"], CANDIDATES[(CANDIDATES.index(row["answer"]) + 1) % 4])
    result = short_answer(context(model), path=path, name="sg", group="general")
    assert result.scores["acc"] == 0.0 and result.scores["greedy_exact"] == 0.0
    assert result.name == "sg" and result.group == "general"
    assert all(not d["correct"] for d in result.details if d["kind"] == "item" and d["probe_kind"] == "which_sport")


def test_answer_logprob_is_exact_on_a_hand_built_case(tmp_path):
    # One trivia row, answer " w30 w31"; the model raises w30 by 5 after the question and nothing else. Token 1: logit
    # 5 against V - 1 zeros; token 2 (w31): logit 0, while w30 keeps its 5, so greedy would repeat w30.
    row = {"id": "t", "kind": "sport_trivia", "question": "w10", "answer": "w30 w31", "sport": "football"}
    path = write_jsonl(tmp_path / "one.jsonl", [row])
    result = short_answer(context(BagLM().prefer("w10", "w30")), path=path)
    log_z = math.log(math.exp(5) + V - 1)
    expected = ((5 - log_z) + (0 - log_z)) / 2
    assert result.scores["answer_logprob"] == pytest.approx(expected, abs=1e-4)
    assert result.scores["greedy_exact"] == 0.0
    assert "acc" not in result.scores and result.chance == {}  # no which_sport rows: no choice to score
    item = result.details[-1]
    assert item["logprob"] == pytest.approx(5 - 2 * log_z, abs=1e-4) and item["greedy"] is False
    # A flat model: every token costs log V.
    flat = short_answer(context(BagLM()), path=write_jsonl(tmp_path / "all.jsonl", qa_rows()))
    assert flat.scores["answer_logprob"] == pytest.approx(-math.log(V), abs=1e-4)


def test_chance_is_one_over_the_distinct_which_sport_answers(tmp_path):
    rows = qa_rows()
    three = [r for r in rows if r["answer"] != "golf"]
    result = short_answer(context(BagLM()), path=write_jsonl(tmp_path / "three.jsonl", three))
    assert result.chance == {"acc": pytest.approx(1 / 3)}
    assert result.details[0]["candidates"] == sorted(SPORTS)
    same = [{**r, "answer": "football"} if r["kind"] == "which_sport" else r for r in rows]
    with pytest.raises(CodeunlearnError) as err:
        short_answer(context(BagLM()), path=write_jsonl(tmp_path / "same.jsonl", same))
    assert_one_line(err, "'football'", "at least two distinct answers")


def test_max_items_draws_the_same_seeded_subset_and_keeps_every_candidate(tmp_path):
    rows = qa_rows()
    path = write_jsonl(tmp_path / "sport_general.jsonl", rows)
    model = oracle(rows)

    def ids(seed: int) -> list[str]:
        result = short_answer(context(model, max_items=4, seed=seed), path=path)
        assert result.n == 4 and result.chance == {"acc": 0.25}  # candidates come from the whole file
        assert result.details[0]["kind"] == "probe_kind"
        return [d["id"] for d in result.details if d["kind"] == "item"]

    assert ids(3) == ids(3)
    assert len({tuple(ids(seed)) for seed in range(5)}) > 1
    assert short_answer(context(model, seed=3), path=path).n == 9


def test_prompt_template_is_filled_and_checked(tmp_path):
    rows = qa_rows()
    path = write_jsonl(tmp_path / "sport_general.jsonl", rows)
    # The template drops the question: every which_sport item sees the same prompt, so all predict one sport.
    model = oracle(rows).prefer("Answer", "golf", 20.0)
    result = short_answer(context(model), path=path, prompt_template="Answer:")
    preds = {d["pred"] for d in result.details if d["kind"] == "item" and d["probe_kind"] == "which_sport"}
    assert preds == {"golf"}
    with pytest.raises(CodeunlearnError) as err:
        short_answer(context(model), path=path, prompt_template="Q: {query}")
    assert_one_line(err, "unknown field")


def test_loader_reads_the_schema_and_fails_in_one_line(tmp_path):
    items = load_qa_items(write_jsonl(tmp_path / "ok.jsonl", [*qa_rows(), {**qa_rows()[0], "answer": " tennis "}]))
    assert items[0] == QAItem("ws-0", "which_sport", "w0", "football")
    assert items[6].sport == "football" and items[-1].answer == "tennis"
    with pytest.raises(CodeunlearnError) as err:
        load_qa_items(tmp_path / "missing.jsonl")
    assert_one_line(err, "not found", "missing.jsonl")
    for change, fragments in [
        ({"kind": "trivia"}, ("line 2", "'trivia'", "which_sport, sport_trivia")),
        ({"answer": "  "}, ("line 2", "'answer' is empty")),
        ({"answer": 6}, ("line 2", "'answer' is int")),
        ({"sport": 3}, ("line 2", "'sport' is int")),
        ({"question": None}, ("line 2", "'question' is NoneType")),
    ]:
        rows = qa_rows()[:2]
        rows[1] |= change
        with pytest.raises(CodeunlearnError) as err:
            load_qa_items(write_jsonl(tmp_path / "bad.jsonl", rows))
        assert_one_line(err, *fragments)
    rows = qa_rows()[:2]
    del rows[1]["kind"]
    with pytest.raises(CodeunlearnError) as err:
        load_qa_items(write_jsonl(tmp_path / "bad.jsonl", rows))
    assert_one_line(err, "line 2", "no field 'kind'")


@pytest.mark.skipif(not (SHARED_DATA / "topics").is_dir(), reason="needs ../shared/data beside the repository")
def test_loader_parses_the_shipped_sport_general_file():
    items = load_qa_items(SHARED_DATA / "topics" / "sports" / "probes_sport_general.jsonl")
    assert len(items) > 200 and {item.kind for item in items} == {"which_sport", "sport_trivia"}
    which = {item.answer for item in items if item.kind == "which_sport"}
    assert {"baseball", "basketball", "football"} <= which and len(which) >= 3
    assert all(item.sport for item in items if item.kind == "sport_trivia")
    assert len({item.id for item in items}) == len(items)
