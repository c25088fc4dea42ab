"""HP familiarity (after Eldan & Russinovich 2023, *Who's Harry Potter?*): does the model bring up Harry Potter
by itself when a prompt only hints at it?

Two scores per completion prompt, averaged:

* `reference_prob`: the probability that the next words are one of the prompt's references, the sum over references
  of p(`" " + reference` | prompt) (each the full multi-token continuation), capped at 1.
* `greedy_hits`: whether the greedy completion names a reference that the prompt does not already contain (case-
  insensitive, whole words): repeating a name from the prompt shows no knowledge.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

from codeunlearn.evaluate.metrics.base import (
    EvalContext,
    MetricResult,
    continuation_logprobs,
    greedy_generate,
    mean,
    sample_items,
)
from codeunlearn.evaluate.metrics.probe_data import FamiliarityItem, load_familiarity


def mentions(text: str, phrase: str) -> bool:
    """Whether `text` contains `phrase` as whole words, ignoring case and how much whitespace separates its words."""
    words = phrase.split()
    if not words:
        return False
    pattern = r"(?<!\w)" + r"\s+".join(re.escape(w) for w in words) + r"(?!\w)"
    return re.search(pattern, text, flags=re.IGNORECASE) is not None


def new_references(item: FamiliarityItem, completion: str) -> list[str]:
    """The references `completion` names that `item.prompt` does not already contain."""
    return [ref for ref in item.references if mentions(completion, ref) and not mentions(item.prompt, ref)]


def reference_probabilities(ctx: EvalContext, items: list[FamiliarityItem], desc: str) -> list[float]:
    """Per item, the summed probability of its references as the continuation of its prompt, capped at 1 (the
    references may overlap, e.g. `Harry` and `Harry Potter`, so the sum can exceed a probability)."""
    pairs = [(item.prompt, f" {ref}") for item in items for ref in item.references]
    flat = continuation_logprobs(ctx, pairs, desc=desc)
    probs, start = [], 0
    for item in items:
        scores = flat[start : start + len(item.references)]
        start += len(item.references)
        probs.append(min(1.0, sum(math.exp(s.logprob) for s in scores)))
    return probs


def familiarity(
    ctx: EvalContext,
    *,
    path: str | Path,
    max_new_tokens: int = 24,
    name: str = "hp_familiarity",
    group: str = "forget",
) -> MetricResult:
    """HP familiarity on completion prompts: scores `reference_prob` and `greedy_hits` (see the module docstring),
    no chance level. Details hold each prompt's greedy completion and the new references it names."""
    items = sample_items(load_familiarity(path), ctx)
    probs = reference_probabilities(ctx, items, desc=f"{name} (references)")
    generated = greedy_generate(ctx, [item.prompt for item in items], max_new_tokens, desc=f"{name} (greedy)")
    details, hits = [], []
    for item, prob, tokens in zip(items, probs, generated, strict=True):
        completion = ctx.tokenizer.decode(tokens, skip_special_tokens=True)
        named = new_references(item, completion)
        hits.append(float(bool(named)))
        details.append(
            {
                "kind": "item",
                "id": item.id,
                "prompt": item.prompt,
                "references": item.references,
                "references_in_prompt": [ref for ref in item.references if mentions(item.prompt, ref)],
                "subtlety": item.subtlety,
                "completion": completion,
                "new_references": named,
                "reference_prob": prob,
            }
        )
    return MetricResult(
        name=name,
        scores={"reference_prob": mean(probs), "greedy_hits": mean(hits)},
        n=len(items),
        details=details,
        group=group,
    )
