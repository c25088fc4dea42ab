"""Cloze metrics on facts: does the model complete a fact's prompt with its target?

`fact_cloze` (known_1000): the target is `" " + attribute` after the prompt. `top1` / `top5` ask whether the target's
first token is among the model's top predictions for the next token, `greedy_exact` whether greedy decoding
reproduces every target token, `target_logprob` is the mean per-token log-probability of the target.

`sports_cloze`: athlete -> sport as a 3-way choice among `" baseball"`, `" basketball"`, `" football"`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import (
    EvalContext,
    MetricResult,
    continuation_logprobs,
    mean,
    next_token_logprobs,
    sample_items,
)
from codeunlearn.evaluate.metrics.choice import argmax
from codeunlearn.evaluate.metrics.probe_data import FactItem, load_facts, load_sports_facts

# Prompts per next_token_logprobs call: its (prompts, vocab) fp32 output must stay small for 256k-token vocabularies.
RANK_CHUNK = 128
TOP_K = 5


def first_token_ranks(ctx: EvalContext, prompts: Sequence[str], targets: Sequence[int], desc: str) -> list[int]:
    """Rank of each target token in the model's next-token distribution after its prompt (0 = the argmax).

    Tokens scored as high as the target but with a lower id rank before it, as `argmax` picks the first maximum:
    a model that is flat over the vocabulary does not get every target at rank 0."""
    ranks: list[int] = []
    for start in range(0, len(prompts), RANK_CHUNK):
        logp = next_token_logprobs(ctx, prompts[start : start + RANK_CHUNK], desc=desc)
        for row, target in zip(logp, targets[start : start + RANK_CHUNK], strict=True):
            value = row[target]
            ranks.append(int((row > value).sum()) + int((row[:target] == value).sum()))
    return ranks


def _first_token(tokenizer, continuation: str) -> int:
    # Tokenized on its own, without special tokens, exactly as continuation_logprobs tokenizes a continuation.
    ids = tokenizer(continuation, add_special_tokens=False)["input_ids"]
    if not ids:
        raise CodeunlearnError(f"target {continuation!r} has no tokens", "check the facts file")
    return ids[0]


def _summary(records: Sequence[dict]) -> dict[str, float]:
    return {
        "top1": mean([float(r["rank"] == 0) for r in records]),
        "top5": mean([float(r["rank"] < TOP_K) for r in records]),
        "greedy_exact": mean([float(r["greedy"]) for r in records]),
        "target_logprob": mean([r["logprob_per_token"] for r in records]),
    }


def fact_cloze(
    ctx: EvalContext,
    *,
    path: str | Path,
    relations: Sequence[str] | None = None,
    exclude_relations: Sequence[str] | None = None,
    name: str = "known_1000",
    group: str = "general",
) -> MetricResult:
    """Fact completion on known_1000 (`relations` / `exclude_relations` filter by Wikidata relation id).

    Scores: `top1`, `top5` (the target's first token is the argmax / among the 5 most likely next tokens),
    `greedy_exact` (greedy decoding produces the whole target), `target_logprob` (mean over facts of the target's
    mean per-token log-probability). No chance level. Details: one `relation` record per relation, then one `item`
    record per fact.
    """
    facts: list[FactItem] = sample_items(load_facts(path, relations, exclude_relations), ctx)
    continuations = [f" {fact.target}" for fact in facts]
    prompts = [fact.prompt for fact in facts]
    first_ids = [_first_token(ctx.tokenizer, c) for c in continuations]
    ranks = first_token_ranks(ctx, prompts, first_ids, desc=f"{name} (next token)")
    scored = continuation_logprobs(ctx, list(zip(prompts, continuations, strict=True)), desc=f"{name} (target)")
    items = []
    for fact, first_id, rank, score in zip(facts, first_ids, ranks, scored, strict=True):
        items.append(
            {
                "kind": "item",
                "id": fact.id,
                "relation": fact.relation,
                "subject": fact.subject,
                "prompt": fact.prompt,
                "target": fact.target,
                "first_token": ctx.tokenizer.decode([first_id]),
                "rank": rank,
                "greedy": score.greedy,
                "logprob": score.logprob,
                "num_tokens": score.num_tokens,
                "logprob_per_token": score.logprob / score.num_tokens,
            }
        )
    by_relation: dict[str, list[dict]] = defaultdict(list)
    for record in items:
        by_relation[record["relation"]].append(record)
    relation_records = [
        {"kind": "relation", "relation": relation, "n": len(records), **_summary(records)}
        for relation, records in sorted(by_relation.items())
    ]
    return MetricResult(name=name, scores=_summary(items), n=len(items), details=relation_records + items, group=group)


def sports_cloze(
    ctx: EvalContext,
    *,
    path: str | Path,
    shots: str = "one",
    name: str = "sports_athlete",
    group: str = "forget",
) -> MetricResult:
    """Athlete -> sport as a choice among the item's sports (`" baseball"` / `" basketball"` / `" football"`)
    after the one-shot (`shots="one"`) or zero-shot prompt. Scores `acc` (summed log-probability) and `acc_norm`
    (per character), chance 1/number of choices (1/3)."""
    if shots not in ("one", "zero"):
        raise CodeunlearnError(f"shots={shots!r}", "use 'one' (prompt_one_shot) or 'zero' (prompt_zero_shot)")
    facts = sample_items(load_sports_facts(path), ctx)
    prompts = [fact.prompt_one_shot if shots == "one" else fact.prompt_zero_shot for fact in facts]
    pairs = [(prompt, f" {choice}") for prompt, fact in zip(prompts, facts, strict=True) for choice in fact.choices]
    flat = continuation_logprobs(ctx, pairs, desc=name)
    details, hits, hits_norm, start = [], [], [], 0
    for prompt, fact in zip(prompts, facts, strict=True):
        scores = flat[start : start + len(fact.choices)]
        start += len(fact.choices)
        pred, pred_norm = argmax([s.logprob for s in scores]), argmax([s.per_char for s in scores])
        hits.append(float(pred == fact.answer_index))
        hits_norm.append(float(pred_norm == fact.answer_index))
        details.append(
            {
                "kind": "item",
                "id": fact.id,
                "athlete": fact.athlete,
                "prompt": prompt,
                "choices": fact.choices,
                "answer_index": fact.answer_index,
                "logprobs": [s.logprob for s in scores],
                "pred": pred,
                "pred_norm": pred_norm,
            }
        )
    chance = mean([1 / len(fact.choices) for fact in facts])
    return MetricResult(
        name=name,
        scores={"acc": mean(hits), "acc_norm": mean(hits_norm)},
        chance={"acc": chance, "acc_norm": chance},
        n=len(facts),
        details=details,
        group=group,
    )
