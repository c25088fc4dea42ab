"""Probe metrics on models whose right answers are known.

Most tests use `BagLM`, a causal LM written by hand: the logits at a position are the sum of one row of a matrix per
token so far, so "after context token X, prefer token Y" is set directly (an oracle for the right answer, an
anti-oracle for a wrong one, a flat model for known log-probabilities). A tiny random Llama checks that the metrics
run on a real Hugging Face model (past key values, padding) and that their two scoring paths agree.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from export_helpers import make_tokenizer
from helpers import make_model
from torch import nn

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import EvalContext
from codeunlearn.evaluate.metrics.choice import (
    NEAR_TOPIC_SUBJECTS,
    arc_easy,
    expand_subjects,
    lettered_choice,
    lettered_prompt,
    mmlu,
    multiple_choice,
)
from codeunlearn.evaluate.metrics.cloze import fact_cloze, sports_cloze
from codeunlearn.evaluate.metrics.familiarity import familiarity, mentions
from codeunlearn.evaluate.metrics.probe_data import (
    load_choice_items,
    load_facts,
    load_familiarity,
    load_sports_facts,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPECIAL = ["<unk>", "<pad>", "</s>"]
STRUCTURE = ["Question", "Answer", ":", ".", "A", "B", "C", "D", "Fact", "plays", "the", "sport", "of", "golf"]
SPORTS = ["baseball", "basketball", "football"]
WORDS = [f"w{i}" for i in range(40)]


def probe_tokenizer():
    """A word-level fast tokenizer that knows the prompt scaffolding (`Question`, `Answer`, letters), the three
    sports and the words w0 .. w39; anything else is <unk>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(SPECIAL + STRUCTURE + SPORTS + WORDS)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>", eos_token="</s>")


TOKENIZER = probe_tokenizer()
V = len(TOKENIZER)


def tok(word: str) -> int:
    return TOKENIZER.convert_tokens_to_ids(word)


class BagLM(nn.Module):
    """logits[t] = sum over tokens s <= t of weight[token_s]: a causal LM whose preferences are set by hand.

    Right padding cannot change earlier logits, and the cache is the running sum, as a real causal LM's would be.
    `longest` records the longest input it was given (to check truncation)."""

    def __init__(self, vocab: int = V) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab, vocab), requires_grad=False)
        self.longest = 0

    def prefer(self, context: str, token: str, strength: float = 5.0) -> BagLM:
        """Once `context` has been seen, raise the logit of `token` by `strength`."""
        self.weight.data[tok(context), tok(token)] += strength
        return self

    def forward(self, input_ids, attention_mask=None, past_key_values=None, use_cache=False, **kwargs):
        self.longest = max(self.longest, input_ids.shape[1])
        logits = self.weight[input_ids].cumsum(1)
        if past_key_values is not None:
            logits = logits + past_key_values[:, None]
        return SimpleNamespace(logits=logits, past_key_values=logits[:, -1] if use_cache else None)


def context(model: nn.Module, tokenizer=TOKENIZER, **kwargs) -> EvalContext:
    return EvalContext(model=model, tokenizer=tokenizer, batch_size=3, progress=False, **kwargs)


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def trivia_rows(count: int = 10) -> list[dict]:
    """HP trivia rows: question w{k}, answer w{10+k}, distractors w{20+k} (hard) and w{30+k} (original, easy)."""
    return [
        {
            "id": f"hp-{k}",
            "question": f"w{k}",
            "answer": f"w{10 + k}",
            "distractor": f"w{30 + k}",
            "distractor_easy": f"w{30 + k}",
            "distractor_hard": f"w{20 + k}",
        }
        for k in range(count)
    ]


def four_way_rows(answers: list[int], subjects: list[str] | None = None) -> list[dict]:
    """WMDP-style rows (MMLU-style with `subjects`): question w{k}, choices w10 .. w13."""
    rows = []
    for k, answer in enumerate(answers):
        row = {"id": f"q-{k}", "question": f"w{k}", "choices": ["w10", "w11", "w12", "w13"], "answer": answer}
        if subjects is not None:
            row = {"subject": subjects[k], "split": "test", **{k2: v for k2, v in row.items() if k2 != "id"}}
        rows.append(row)
    return rows


# ---- multiple choice (cloze) ----------------------------------------------------------------------------------------


def test_multiple_choice_oracle_scores_one_and_anti_oracle_zero(tmp_path):
    path = write_jsonl(tmp_path / "trivia.jsonl", trivia_rows())
    items = load_choice_items(path, "hp_trivia")
    oracle, anti = BagLM(), BagLM()
    for item in items:
        oracle.prefer(item.question, item.choices[item.answer_index])
        anti.prefer(item.question, item.choices[1 - item.answer_index])
    good = multiple_choice(context(oracle), path=path, format="hp_trivia", name="hp", group="forget")
    bad = multiple_choice(context(anti), path=path, format="hp_trivia", name="hp", group="forget")
    assert good.scores == {"acc": 1.0, "acc_norm": 1.0} and bad.scores == {"acc": 0.0, "acc_norm": 0.0}
    assert good.chance == {"acc": 0.5, "acc_norm": 0.5} and good.n == 10 and good.group == "forget"
    assert [d["pred"] for d in good.details] == [item.answer_index for item in items]


def test_hp_trivia_choice_order_is_seeded_and_mixed(tmp_path):
    path = write_jsonl(tmp_path / "trivia.jsonl", trivia_rows())
    items = load_choice_items(path, "hp_trivia", distractor="distractor")
    assert {item.answer_index for item in items} == {0, 1}  # the answer is not always first
    assert items == load_choice_items(path, "hp_trivia", distractor="distractor")
    for item, row in zip(items, trivia_rows(), strict=True):
        assert item.choices[item.answer_index] == row["answer"] and row["distractor"] in item.choices
    hard = load_choice_items(path, "hp_trivia", distractor="distractor_hard")
    assert [i.answer_index for i in hard] == [i.answer_index for i in items]  # order depends on the id only


def test_acc_and_acc_norm_differ_when_choice_lengths_differ(tmp_path):
    # Flat model: every token costs log V. The 2-token answer " w10 w11" (8 chars) loses on the sum to the 1-token
    # distractor " w1" (3 chars) but wins per character: -2 log V / 8 > -log V / 3.
    row = {"id": "x", "question": "w5", "answer": "w10 w11", "distractor": "w1"}
    path = write_jsonl(tmp_path / "nb.jsonl", [{**row, "neighbor_topic": "oz"}])
    result = multiple_choice(context(BagLM()), path=path, format="hp_neighbors")
    assert result.scores == {"acc": 0.0, "acc_norm": 1.0}
    (detail,) = result.details
    answer = detail["answer_index"]
    assert detail["logprobs"][answer] == pytest.approx(-2 * math.log(V), abs=1e-4)
    assert detail["logprobs_per_char"][answer] == pytest.approx(-2 * math.log(V) / 8, abs=1e-4)
    assert detail["subject"] == "oz"


def test_arc_easy_is_cloze_scored_with_the_given_answer_index(tmp_path):
    rows = [
        {"id": "a", "question": "w0", "choices": ["w10", "w11", "w12"], "labels": ["A", "B", "C"], "answer_index": 2},
        {"id": "b", "question": "w1", "choices": ["w10", "w11", "w12", "w13", "w14"], "answer_index": 0},
    ]
    path = write_jsonl(tmp_path / "arc.jsonl", rows)
    model = BagLM().prefer("w0", "w12").prefer("w1", "w11")
    result = arc_easy(context(model), path=path)
    assert result.scores == {"acc": 0.5, "acc_norm": 0.5} and result.name == "arc_easy"
    assert result.chance["acc"] == pytest.approx((1 / 3 + 1 / 5) / 2)


# ---- letter scoring -------------------------------------------------------------------------------------------------


def test_lettered_prompt_follows_the_readme_baseline():
    assert lettered_prompt("Why?", ["x", "y"]) == "Question: Why?\nA. x\nB. y\nAnswer:"


def test_lettered_choice_scores_letters_as_acc_and_cloze_as_acc_norm(tmp_path):
    answers = [0, 1, 2, 3, 2]
    path = write_jsonl(tmp_path / "wmdp.jsonl", four_way_rows(answers))
    model = BagLM()
    for k, answer in enumerate(answers):
        model.prefer(f"w{k}", "ABCD"[answer])  # the letter oracle ...
        model.prefer(f"w{k}", f"w{10 + (answer + 1) % 4}")  # ... and a cloze anti-oracle
    result = lettered_choice(context(model), path=path, format="wmdp", name="wmdp_bio")
    assert result.scores == {"acc": 1.0, "acc_norm": 0.0}
    assert result.chance == {"acc": 0.25, "acc_norm": 0.25} and result.n == 5
    assert [d["pred"] for d in result.details] == answers


def test_lettered_choice_cuts_long_questions_from_the_left(tmp_path):
    filler = " ".join(["w30"] * 60)
    rows = four_way_rows([1, 3])
    for row in rows:
        row["question"] = f"{filler} {row['question']}"  # the key word is the question's last word
    path = write_jsonl(tmp_path / "cyber.jsonl", rows)
    model = BagLM().prefer("w0", "B").prefer("w1", "D").prefer("w0", "w11").prefer("w1", "w13")
    result = lettered_choice(context(model), path=path, format="wmdp", max_length=24)
    assert model.longest <= 24  # the ~80-token prompts were cut ...
    assert result.scores == {"acc": 1.0, "acc_norm": 1.0}  # ... from the left: the end of the question survived
    for row, key in zip(rows, ["w0", "w1"], strict=True):
        row["question"] = f"{key} {filler}"  # now the key word is cut away: flat scores, the first choice wins
    path = write_jsonl(tmp_path / "cyber_front.jsonl", rows)
    cut = lettered_choice(context(model), path=path, format="wmdp", max_length=24)
    assert [d["pred"] for d in cut.details] == [0, 0] and cut.scores["acc"] == 0.0


# ---- MMLU -----------------------------------------------------------------------------------------------------------


def mmlu_file(tmp_path: Path) -> tuple[Path, BagLM]:
    """Six test rows and one dev row; a model right (letters) on virology and college_biology, wrong on astronomy,
    and right (cloze) on astronomy only."""
    subjects = ["virology", "virology", "college_biology", "astronomy", "astronomy", "astronomy"]
    answers = [0, 1, 2, 3, 0, 1]
    rows = four_way_rows(answers, subjects)
    rows.append({"subject": "virology", "split": "dev", "question": "w9", "choices": ["w1", "w2"], "answer": 0})
    model = BagLM()
    for k, (subject, answer) in enumerate(zip(subjects, answers, strict=True)):
        wrong = (answer + 1) % 4
        right_letter = subject != "astronomy"
        model.prefer(f"w{k}", "ABCD"[answer if right_letter else wrong])
        model.prefer(f"w{k}", f"w{10 + (wrong if right_letter else answer)}")  # cloze: the other way round
    return write_jsonl(tmp_path / "mmlu.jsonl", rows), model


def test_mmlu_reports_scores_with_and_without_the_near_topic_subjects(tmp_path):
    path, model = mmlu_file(tmp_path)
    result = mmlu(context(model), path=path, exclude_subjects=["biology"])
    assert result.n == 6  # the dev row is not scored
    assert result.scores == {
        "acc": 0.5,
        "acc_cloze": 0.5,
        "acc_without_near_topic": 0.0,
        "acc_cloze_without_near_topic": 1.0,
    }
    assert set(result.chance.values()) == {0.25}
    subjects = {d["subject"]: d for d in result.details if d["kind"] == "subject"}
    assert subjects["virology"] == {
        "kind": "subject",
        "subject": "virology",
        "n": 2,
        "acc": 1.0,
        "acc_cloze": 0.0,
        "excluded": True,
    }
    assert not subjects["astronomy"]["excluded"] and subjects["astronomy"]["acc_cloze"] == 1.0
    only_virology = mmlu(context(model), path=path, exclude_subjects=["virology"])
    assert only_virology.scores["acc_without_near_topic"] == 0.25  # college_biology right, astronomy wrong
    assert mmlu(context(model), path=path).scores["acc_without_near_topic"] == 0.5  # nothing excluded


def test_mmlu_refuses_unknown_subjects(tmp_path):
    path, model = mmlu_file(tmp_path)
    with pytest.raises(CodeunlearnError, match="unknown MMLU subject"):
        mmlu(context(model), path=path, exclude_subjects=["virolgy"])


def test_near_topic_subjects_are_mmlu_subjects():
    assert set(NEAR_TOPIC_SUBJECTS) == {"biology", "cyber"}
    assert expand_subjects(["cyber", "anatomy", "computer_security"], {"anatomy", "computer_security"}) == [
        "computer_security",
        "college_computer_science",
        "anatomy",
    ]


# ---- facts ----------------------------------------------------------------------------------------------------------


def fact_rows() -> list[dict]:
    rows = [
        ("w0", "w10", "P30"),  # first token top-1, whole target greedy
        ("w1", "w11 w12", "P30"),  # first token top-1, but greedy repeats w11 instead of producing w12
        ("w2", "w13", "P17"),  # second most likely next token: top-5, not top-1
        ("w3", "w15", "P17"),  # ranked below six preferred tokens
    ]
    return [
        {"known_id": i, "subject": p, "attribute": t, "template": "{}", "prediction": "", "prompt": p, "relation_id": r}
        for i, (p, t, r) in enumerate(rows)
    ]


def fact_model() -> BagLM:
    model = BagLM().prefer("w0", "w10").prefer("w1", "w11").prefer("w2", "w14").prefer("w2", "w13", 4.0)
    for word in ["w20", "w21", "w22", "w23", "w24", "w25"]:
        model.prefer("w3", word)
    return model


def test_fact_cloze_top1_top5_greedy_and_per_relation(tmp_path):
    path = write_jsonl(tmp_path / "known.jsonl", fact_rows())
    result = fact_cloze(context(fact_model()), path=path)
    assert result.scores["top1"] == 0.5 and result.scores["top5"] == 0.75 and result.scores["greedy_exact"] == 0.25
    assert result.chance == {} and result.n == 4
    items = [d for d in result.details if d["kind"] == "item"]
    assert [d["rank"] for d in items[:3]] == [0, 0, 1] and items[3]["rank"] >= 6
    assert [d["greedy"] for d in items] == [True, False, False, False]
    relations = {d["relation"]: d for d in result.details if d["kind"] == "relation"}
    assert relations["P30"]["top1"] == 1.0 and relations["P17"]["top1"] == 0.0 and relations["P17"]["top5"] == 0.5
    # Exact target log-probability of the first fact: logit 5 against V - 1 logits of 0.
    expected = 5 - math.log(math.exp(5) + V - 1)
    assert items[0]["logprob_per_token"] == pytest.approx(expected, abs=1e-4)


def test_fact_cloze_flat_model_has_no_top1_and_logprob_minus_log_vocab(tmp_path):
    path = write_jsonl(tmp_path / "known.jsonl", fact_rows())
    result = fact_cloze(context(BagLM()), path=path)
    assert result.scores["top1"] == 0.0 and result.scores["greedy_exact"] == 0.0  # ties go to the lowest token id
    assert result.scores["target_logprob"] == pytest.approx(-math.log(V), abs=1e-4)


def test_fact_cloze_filters_relations(tmp_path):
    path = write_jsonl(tmp_path / "known.jsonl", fact_rows())
    only = fact_cloze(context(fact_model()), path=path, relations=["P30"])
    without = fact_cloze(context(fact_model()), path=path, exclude_relations=["P30"])
    assert only.n == 2 and only.scores["top1"] == 1.0
    assert without.n == 2 and {d["relation"] for d in without.details} == {"P17"}
    with pytest.raises(CodeunlearnError, match="no facts"):
        load_facts(path, relations=["P999"])


def test_sports_cloze_zero_and_one_shot(tmp_path):
    rows = [
        {
            "id": f"s{k}",
            "athlete": f"w{k}",
            "sport": sport,
            "choices": SPORTS,
            "answer_index": SPORTS.index(sport),
            "prompt_zero_shot": f"w{k} plays the sport of",
            "prompt_one_shot": f"Fact: Tiger Woods plays the sport of golf\nFact: w{k} plays the sport of",
        }
        for k, sport in enumerate(["football", "basketball", "baseball"])
    ]
    path = write_jsonl(tmp_path / "sports.jsonl", rows)
    model = BagLM().prefer("w0", "football").prefer("w1", "basketball").prefer("w2", "baseball")
    model.prefer("golf", "baseball", 20.0)  # the one-shot example drowns the athlete: always baseball
    zero = sports_cloze(context(model), path=path, shots="zero")
    one = sports_cloze(context(model), path=path, shots="one")
    assert zero.scores == {"acc": 1.0, "acc_norm": 1.0}
    assert one.scores["acc"] == pytest.approx(1 / 3) and [d["pred"] for d in one.details] == [0, 0, 0]
    assert zero.chance["acc"] == pytest.approx(1 / 3)
    with pytest.raises(CodeunlearnError, match="shots"):
        sports_cloze(context(model), path=path, shots="two")


# ---- familiarity ----------------------------------------------------------------------------------------------------


def test_mentions_matches_whole_words_ignoring_case():
    assert mentions("He drew the Invisibility  Cloak", "invisibility cloak")
    assert mentions("Harry's wand", "Harry")
    assert not mentions("harrying the enemy", "Harry")
    assert not mentions("anything", "")


def test_familiarity_counts_only_references_not_in_the_prompt(tmp_path):
    rows = [
        {"id": "f0", "prompt": "w0 w1", "references": ["w1", "w30"], "subtlety": 3, "source_file": "x"},
        {"id": "f1", "prompt": "w2 w3", "references": ["w31"], "subtlety": 5, "source_file": "x"},
        {"id": "f2", "prompt": "w4", "references": ["w32", "w32 w33"], "subtlety": 9, "source_file": "x"},
    ]
    path = write_jsonl(tmp_path / "fam.jsonl", rows)
    # f0 keeps repeating w1, already in its prompt; f1 produces w31; f2 produces w32 w33 (its two overlapping
    # references have probability ~1 each, so their sum is capped at 1).
    model = BagLM().prefer("w0", "w1", 10.0).prefer("w2", "w31", 10.0)
    model.prefer("w4", "w32", 20.0).prefer("w32", "w33", 40.0)
    result = familiarity(context(model), path=path, max_new_tokens=4, name="hp_fam")
    assert result.scores["greedy_hits"] == pytest.approx(2 / 3)
    completions = [d["completion"] for d in result.details]
    assert completions[0] == "w1 w1 w1 w1" and completions[1].startswith("w31")
    assert [d["new_references"] for d in result.details] == [[], ["w31"], ["w32", "w32 w33"]]
    assert result.details[0]["references_in_prompt"] == ["w1"]
    z = math.exp(10) + V - 1
    expected = [(math.exp(10) + 1) / z, math.exp(10) / z, 1.0]
    assert [d["reference_prob"] for d in result.details] == pytest.approx(expected, abs=1e-5)
    assert result.scores["reference_prob"] == pytest.approx(sum(expected) / 3, abs=1e-5)
    assert result.chance == {} and result.group == "forget"


# ---- sampling and determinism ---------------------------------------------------------------------------------------


def test_max_items_draws_the_same_seeded_subset(tmp_path):
    path = write_jsonl(tmp_path / "trivia.jsonl", trivia_rows(12))
    model = BagLM()

    def ids(seed: int) -> list[str]:
        result = multiple_choice(context(model, max_items=4, seed=seed), path=path, format="hp_trivia")
        assert result.n == 4
        return [d["id"] for d in result.details]

    assert ids(1) == ids(1)
    assert len({tuple(ids(seed)) for seed in range(4)}) > 1
    full = multiple_choice(context(model, seed=1), path=path, format="hp_trivia")
    assert full.n == 12


# ---- loaders --------------------------------------------------------------------------------------------------------


def assert_one_line(err: pytest.ExceptionInfo, *fragments: str) -> None:
    message = str(err.value)
    assert "\n" not in message and "-- fix:" in message
    for fragment in fragments:
        assert fragment in message, message


def test_loaders_fail_with_one_line_errors(tmp_path):
    with pytest.raises(CodeunlearnError) as err:
        load_choice_items(tmp_path / "missing.jsonl", "hp_trivia")
    assert_one_line(err, "not found", "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(CodeunlearnError) as err:
        load_facts(empty)
    assert_one_line(err, "has no rows")
    rows = trivia_rows(2)
    del rows[1]["answer"]
    with pytest.raises(CodeunlearnError) as err:
        load_choice_items(write_jsonl(tmp_path / "t.jsonl", rows), "hp_trivia")
    assert_one_line(err, "line 2", "'answer'")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": 1}\n{not json\n')
    with pytest.raises(CodeunlearnError) as err:
        load_familiarity(bad)
    assert_one_line(err, "line 2", "not valid JSON")
    with pytest.raises(CodeunlearnError) as err:
        load_choice_items(write_jsonl(tmp_path / "w.jsonl", four_way_rows([7])), "wmdp")
    assert_one_line(err, "answer=7")
    with pytest.raises(CodeunlearnError) as err:
        load_choice_items(empty, "trivia")
    assert_one_line(err, "unknown probe format")
    with pytest.raises(CodeunlearnError) as err:
        load_choice_items(empty, "hp_trivia", distractor="distractor_medium")
    assert_one_line(err, "distractor_medium")
    fam = write_jsonl(tmp_path / "f.jsonl", [{"id": "x", "prompt": "p", "references": []}])
    with pytest.raises(CodeunlearnError) as err:
        load_familiarity(fam)
    assert_one_line(err, "references")
    sports = write_jsonl(tmp_path / "s.jsonl", [{"id": "x", "athlete": 3, "choices": SPORTS, "answer_index": 0}])
    with pytest.raises(CodeunlearnError) as err:
        load_sports_facts(sports)
    assert_one_line(err, "'athlete' is int")


# ---- a real Hugging Face model --------------------------------------------------------------------------------------


def test_metrics_run_on_a_tiny_llama_and_their_scoring_paths_agree(tmp_path):
    tokenizer = make_tokenizer()
    ctx = EvalContext(model=make_model("llama"), tokenizer=tokenizer, batch_size=3, progress=False)
    words = [f"w{i}" for i in range(3, 40)]
    facts = [
        {"known_id": i, "subject": words[i], "attribute": words[i + 10], "prompt": f"{words[i]} {words[i + 1]}"}
        | {"relation_id": "P30" if i % 2 else "P36"}
        for i in range(8)
    ]
    result = fact_cloze(ctx, path=write_jsonl(tmp_path / "known.jsonl", facts))
    for item in (d for d in result.details if d["kind"] == "item"):
        assert item["greedy"] == (item["rank"] == 0)  # single-token targets: greedy flag and argmax rank agree
    fam_rows = [{"id": str(i), "prompt": f"{words[i]} {words[i + 2]}", "references": [words[i + 5]]} for i in range(5)]
    fam = familiarity(ctx, path=write_jsonl(tmp_path / "fam.jsonl", fam_rows), max_new_tokens=5)
    assert all(len(d["completion"].split()) <= 5 for d in fam.details) and 0.0 <= fam.scores["reference_prob"] <= 1.0
    wmdp = lettered_choice(ctx, path=write_jsonl(tmp_path / "w.jsonl", four_way_rows([0, 1, 2])), format="wmdp")
    assert wmdp.n == 3 and 0.0 <= wmdp.scores["acc"] <= 1.0


# ---- the shipped data -----------------------------------------------------------------------------------------------


@pytest.mark.skipif(not (SHARED_DATA / "eval").is_dir(), reason="needs ../shared/data beside the repository")
def test_loaders_parse_the_shipped_probe_files():
    hp = SHARED_DATA / "topics" / "harry_potter"
    for name, format in [
        ("probes_trivia.jsonl", "hp_trivia"),
        ("probes_by_book.jsonl", "hp_by_book"),
        ("neighbors_trivia.jsonl", "hp_neighbors"),
    ]:
        items = load_choice_items(hp / name, format)
        assert len(items) > 100 and {i.answer_index for i in items} == {0, 1}
    for path in [SHARED_DATA / "topics" / "biology" / "probes_wmdp_bio.jsonl", SHARED_DATA / "eval" / "mmlu.jsonl"]:
        format = "mmlu" if path.name == "mmlu.jsonl" else "wmdp"
        assert all(len(i.choices) == 4 for i in load_choice_items(path, format))
    subjects = {i.subject for i in load_choice_items(SHARED_DATA / "eval" / "mmlu.jsonl", "mmlu")}
    assert len(subjects) == 57 and {s for names in NEAR_TOPIC_SUBJECTS.values() for s in names} <= subjects
    assert len(load_choice_items(SHARED_DATA / "eval" / "arc_easy_test.jsonl", "arc")) > 1000
    facts = load_facts(SHARED_DATA / "eval" / "known_1000.jsonl")
    assert len(facts) > 1000 and {"P30", "P17", "P36"} <= {f.relation for f in facts}
    sports = load_sports_facts(SHARED_DATA / "topics" / "sports" / "probes_athlete_sport.jsonl")
    assert {tuple(s.choices) for s in sports} == {tuple(SPORTS)}
    familiarity_items = load_familiarity(hp / "probes_familiarity.jsonl")
    assert len(familiarity_items) > 100 and all(item.references for item in familiarity_items)
