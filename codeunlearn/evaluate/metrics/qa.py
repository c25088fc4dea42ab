"""Short-answer metrics: does the model answer a question with its known short answer?

`short_answer` (`topics/sports/probes_sport_general.jsonl`, general sports knowledge: the neighbour-topic probes of
the athlete facts): the prompt is `Question: {question}\\nAnswer:` and the answer is `" " + answer` after it.
`greedy_exact` asks whether greedy decoding reproduces every answer token, `answer_logprob` is the mean per-token
log-probability of the answer. `which_sport` rows name a sport, so they are also a cloze choice among every distinct
`which_sport` answer of the file (`acc`, summed log-probability); `sport_trivia` rows (rules, numbers) have free-text
answers and no choices.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult, mean, sample_items
from codeunlearn.evaluate.metrics.choice import CLOZE_TEMPLATE, argmax, score_cloze
from codeunlearn.evaluate.metrics.probe_data import QA_KINDS, ChoiceItem, QAItem, load_qa_items

CHOICE_KIND = "which_sport"  # the kind whose answers are also the candidates of a cloze choice


def _summary(records: Sequence[dict], with_acc: bool) -> dict[str, float]:
    scores = {
        "greedy_exact": mean([float(r["greedy"]) for r in records]),
        "answer_logprob": mean([r["logprob_per_token"] for r in records]),
    }
    if with_acc:
        scores["acc"] = mean([float(r["correct"]) for r in records if r["probe_kind"] == CHOICE_KIND])
    return scores


def short_answer(
    ctx: EvalContext,
    *,
    path: str | Path,
    prompt_template: str = CLOZE_TEMPLATE,
    name: str = "sport_general",
    group: str = "retain",
) -> MetricResult:
    """Short-answer questions (`{id, kind, question, answer, sport?}`), scored as `" " + answer` after the filled-in
    `prompt_template`.

    Scores: `greedy_exact` (greedy decoding produces the whole answer), `answer_logprob` (mean over items of the
    answer's mean per-token log-probability), and, when the file has `which_sport` rows, `acc` on those rows: the
    answer has the best summed log-probability among the file's distinct `which_sport` answers (chance 1/number of
    them; ties go to the first in sorted order). Details: one `probe_kind` record per kind present (the
    `which_sport` one lists the candidates), then one `item` record per question.
    """
    all_items = load_qa_items(path)
    candidates = sorted({item.answer for item in all_items if item.kind == CHOICE_KIND})
    if len(candidates) == 1:
        raise CodeunlearnError(
            f"{path}: every {CHOICE_KIND} row has the answer {candidates[0]!r}, so there is nothing to choose from",
            f"give the {CHOICE_KIND} rows at least two distinct answers",
        )
    items: list[QAItem] = sample_items(all_items, ctx)
    # Each question as a choice item: its options are the candidates (which_sport) or only its own answer.
    choice_items = [
        ChoiceItem(item.id, item.question, candidates, candidates.index(item.answer), item.kind)
        if item.kind == CHOICE_KIND
        else ChoiceItem(item.id, item.question, [item.answer], 0, item.kind)
        for item in items
    ]
    scored = score_cloze(ctx, choice_items, prompt_template, desc=name)
    records = []
    for item, choice, scores in zip(items, choice_items, scored, strict=True):
        answer = scores[choice.answer_index]
        record = {
            "kind": "item",
            "id": item.id,
            "probe_kind": item.kind,
            "sport": item.sport,
            "question": item.question,
            "answer": item.answer,
            "greedy": answer.greedy,
            "logprob": answer.logprob,
            "num_tokens": answer.num_tokens,
            "logprob_per_token": answer.logprob / answer.num_tokens,
        }
        if item.kind == CHOICE_KIND:
            pred = argmax([s.logprob for s in scores])
            record |= {
                "logprobs": [s.logprob for s in scores],
                "pred": candidates[pred],
                "correct": pred == choice.answer_index,
            }
        records.append(record)
    with_acc = bool(candidates)
    kinds = []
    for kind in QA_KINDS:
        of_kind = [r for r in records if r["probe_kind"] == kind]
        if of_kind:
            extra = {"candidates": candidates} if kind == CHOICE_KIND else {}
            summary = _summary(of_kind, with_acc and kind == CHOICE_KIND)
            kinds.append({"kind": "probe_kind", "probe_kind": kind, "n": len(of_kind), **summary, **extra})
    return MetricResult(
        name=name,
        scores=_summary(records, with_acc),
        chance={"acc": 1 / len(candidates)} if with_acc else {},
        n=len(records),
        details=kinds + records,
        group=group,
    )
