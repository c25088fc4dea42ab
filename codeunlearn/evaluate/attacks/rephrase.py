"""Rephrased facts: the same known_1000 facts asked in several framings, accuracy per framing.

An edit that only breaks the exact cloze phrasing has not removed the fact. Every fact of the chosen relations is
asked as:

- `cloze`: the original prompt (`"Vinson Massif is located in the continent of"`).
- `qa`: `"Question: Which continent is Vinson Massif located on?\\nAnswer:"` (one question template per relation,
  `QUESTION_TEMPLATES`; facts of other relations are skipped).
- `multiple_choice`: the cloze prompt with the answer against up to 3 distractors, other answers of the same
  relation drawn with the seed; correct when the answer has the highest summed log-probability (lm-eval's `acc`;
  a tie at the top earns 1 / the number tied).
- `few_shot`: `num_shots` other facts of the same relation (seeded) written as full sentences before the cloze prompt.
- `in_context` (with `context_corpus`): a seeded window of `context_tokens` tokens of topic text from a held-out
  document of that corpus before the cloze prompt.

Generative framings count a fact as known when the *whole* target `" " + attribute` is the greedy continuation:
every target token is the model's top-1 prediction given the prompt and the target tokens before it (stricter than
the first-token top-1 of the data README's baseline, and the same test for every framing).
"""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codeunlearn.data import load_documents, split_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult, continuation_logprobs, mean, sample_items

# Wikidata relation id -> a question about the subject (`{}`) whose answer is the fact's attribute.
QUESTION_TEMPLATES: dict[str, str] = {
    "P17": "Which country is {} located in?",
    "P19": "Where was {} born?",
    "P20": "Where did {} die?",
    "P27": "Which country is {} a citizen of?",
    "P30": "Which continent is {} located on?",
    "P36": "What is the capital city of {}?",
    "P37": "What is the official language of {}?",
    "P39": "What position does {} hold?",
    "P101": "In which field does {} work?",
    "P103": "What is the native language of {}?",
    "P106": "What is the profession of {}?",
    "P108": "Who is the employer of {}?",
    "P127": "Who owns {}?",
    "P131": "In which region is {} located?",
    "P136": "What genre of music does {} play?",
    "P138": "What is {} named after?",
    "P140": "Which religion is {} affiliated with?",
    "P159": "In which city are the headquarters of {}?",
    "P176": "Which company produces {}?",
    "P178": "Which company developed {}?",
    "P276": "Where is {} located?",
    "P364": "What is the original language of {}?",
    "P407": "In which language was {} written?",
    "P413": "Which position does {} play?",
    "P449": "On which network did {} first air?",
    "P463": "Which organization is {} a member of?",
    "P495": "In which country was {} created?",
    "P641": "Which sport does {} play professionally?",
    "P740": "Where was {} founded?",
    "P937": "In which city did {} work?",
    "P1303": "Which instrument does {} play?",
    "P1412": "Which language does {} speak?",
}
FRAMINGS = ("cloze", "qa", "multiple_choice", "few_shot", "in_context")
NUM_DISTRACTORS = 3


@dataclass(frozen=True)
class _Fact:
    id: str
    subject: str
    prompt: str
    target: str  # the continuation scored: " " + attribute
    relation: str


def _load_facts(path: str) -> list[_Fact]:
    """known_1000 rows (`{known_id, subject, attribute, prompt, relation_id, ...}`) as facts."""
    if not Path(path).is_file():
        raise CodeunlearnError(f"fact file not found: {path}", "pass the path of eval/known_1000.jsonl")
    facts = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            facts.append(
                _Fact(
                    id=str(row["known_id"]),
                    subject=row["subject"],
                    prompt=row["prompt"],
                    target=" " + row["attribute"].strip(),
                    relation=row["relation_id"],
                )
            )
        except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as err:
            raise CodeunlearnError(
                f"{path}:{number} is not a known_1000 row ({type(err).__name__}: {err})",
                "pass a JSONL file with known_id, subject, attribute, prompt and relation_id",
            ) from None
    return facts


def _select(facts: list[_Fact], relations: Sequence[str] | None, path: str) -> list[_Fact]:
    wanted = list(QUESTION_TEMPLATES) if relations is None else list(relations)
    unknown = [r for r in wanted if r not in QUESTION_TEMPLATES]
    if unknown:
        raise CodeunlearnError(
            f"no question template for relation(s) {unknown}", f"use relations among {sorted(QUESTION_TEMPLATES)}"
        )
    chosen = [f for f in facts if f.relation in wanted]
    if not chosen:
        raise CodeunlearnError(f"{path} has no fact of relations {wanted}", "pass relations that occur in the file")
    return chosen


def _passages(
    ctx: EvalContext, corpus: str, heldout_fraction: float, split_seed: int, text_field: str
) -> list[list[int]]:
    """Held-out documents of the topic corpus, tokenized once (the windows are cut per fact)."""
    split = split_documents(
        Path(corpus).stem, load_documents(corpus, text_field=text_field), heldout_fraction, split_seed
    )
    if not split.heldout:
        raise CodeunlearnError(f"context corpus {corpus} has no held-out documents", "use a heldout_fraction above 0")
    return [ids for ids in ctx.tokenizer(split.heldout, add_special_tokens=False)["input_ids"] if ids]


def _window(ctx: EvalContext, docs: list[list[int]], tokens: int, rng: random.Random) -> str:
    ids = docs[rng.randrange(len(docs))]
    start = rng.randrange(max(len(ids) - tokens, 0) + 1)
    return ctx.tokenizer.decode(ids[start : start + tokens])


def _framings(
    fact: _Fact,
    by_relation: dict[str, list[_Fact]],
    num_shots: int,
    seed: int,
    passage: str | None,
) -> dict[str, list[tuple[str, str]]]:
    """(context, continuation) pairs per framing; multiple choice lists the answer's pair first."""
    # One generator per fact (string seeds hash deterministically): a fact's draws do not depend on the sample.
    rng = random.Random(f"{seed}:{fact.id}")
    others = [f for f in by_relation[fact.relation] if f.id != fact.id and f.subject != fact.subject]
    shots = rng.sample(others, min(num_shots, len(others)))
    wrong = sorted({f.target for f in others} - {fact.target})
    distractors = rng.sample(wrong, min(NUM_DISTRACTORS, len(wrong)))
    question = QUESTION_TEMPLATES[fact.relation].format(fact.subject)
    out = {
        "cloze": [(fact.prompt, fact.target)],
        "qa": [(f"Question: {question}\nAnswer:", fact.target)],
        "few_shot": [("".join(f"{s.prompt}{s.target}.\n" for s in shots) + fact.prompt, fact.target)],
    }
    if distractors:  # a relation with a single answer has no multiple-choice question
        out["multiple_choice"] = [(fact.prompt, choice) for choice in [fact.target, *distractors]]
    if passage is not None:
        out["in_context"] = [(f"{passage}\n\n{fact.prompt}", fact.target)]
    return out


def rephrased_facts(
    ctx: EvalContext,
    *,
    path: str,
    relations: Sequence[str] | None = ("P30", "P17", "P36"),
    num_shots: int = 3,
    context_corpus: str | None = None,
    context_tokens: int = 128,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    text_field: str = "text",
    name: str = "rephrased_facts",
    group: str = "attack",
) -> MetricResult:
    """Accuracy on the known_1000 facts of `relations` (None: every relation with a question template) in each
    framing: scores `cloze`, `qa`, `multiple_choice`, `few_shot` and, with `context_corpus`, `in_context`.
    At most `ctx.max_items` facts (a seeded sample); shots and distractors come from all facts of the relation."""
    if num_shots < 1 or context_tokens < 1:
        raise CodeunlearnError(
            f"{name}: num_shots={num_shots}, context_tokens={context_tokens}", "use num_shots >= 1, context_tokens >= 1"
        )
    pool = _select(_load_facts(path), relations, path)
    by_relation: dict[str, list[_Fact]] = defaultdict(list)
    for fact in pool:
        by_relation[fact.relation].append(fact)
    facts = sample_items(pool, ctx)
    docs = None if context_corpus is None else _passages(ctx, context_corpus, heldout_fraction, split_seed, text_field)
    per_fact = []
    for fact in facts:
        passage = None if docs is None else _window(ctx, docs, context_tokens, random.Random(f"{ctx.seed}:{fact.id}:p"))
        per_fact.append(_framings(fact, by_relation, num_shots, ctx.seed, passage))
    # Score every pair of every framing in one batched pass.
    pairs = [pair for framings in per_fact for group_pairs in framings.values() for pair in group_pairs]
    scored = iter(continuation_logprobs(ctx, pairs, desc=f"{name}: score"))
    details = []
    for fact, framings in zip(facts, per_fact, strict=True):
        record: dict = {"id": fact.id, "subject": fact.subject, "relation": fact.relation, "target": fact.target}
        for framing, framing_pairs in framings.items():
            results = [next(scored) for _ in framing_pairs]
            if framing == "multiple_choice":
                logprobs = [r.logprob for r in results]
                record["choices"] = [choice for _, choice in framing_pairs]
                record["choice_logprobs"] = logprobs
                # A tie at the top earns its share, so a model that cannot tell the choices apart scores chance.
                best = max(logprobs)
                record[framing] = (logprobs[0] == best) / sum(lp == best for lp in logprobs)
            else:
                record[framing] = results[0].greedy
            record[f"{framing}_prompt"] = framing_pairs[0][0]
        details.append(record)
    scores = {
        framing: mean([float(d[framing]) for d in details if framing in d])
        for framing in FRAMINGS
        if any(framing in d for d in details)
    }
    chance = {}
    if "multiple_choice" in scores:
        chance["multiple_choice"] = mean([1 / len(d["choices"]) for d in details if "choices" in d])
    return MetricResult(name=name, scores=scores, chance=chance, n=len(facts), details=details, group=group)
