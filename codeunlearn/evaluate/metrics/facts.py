"""A fact-level forget topic built from known_1000, for models too small to know the shipped topics.

The data README's suggestion: forget the geography relations (P30 continent, P17 country, P36 capital), which even
SmolLM2-135M demonstrably knows, and retain every other relation. Each fact becomes the sentence
`prompt + " " + target`; training sentences form the forget / retain corpora, held-out facts are the probes.

The split is by *subject*, and stricter than that: facts are grouped so that no held-out fact's subject occurs (as
whole words, ignoring case) in any training sentence, and no training fact's subject in a held-out sentence. A
held-out probe such as "The capital of France is Paris" is therefore never answered by a training sentence about
France or about Paris, and forgetting measured on it is generalisation, not memorisation of the training text.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.probe_data import FactItem, load_facts
from codeunlearn.io import atomic_directory, atomic_write_text

GEOGRAPHY_RELATIONS = ("P30", "P17", "P36")  # continent, country, capital
CORPUS_FILES = {"forget_train": "forget_train.jsonl", "retain_train": "retain_train.jsonl"}
PROBE_FILES = {"forget_heldout": "probes_forget.jsonl", "retain_heldout": "probes_retain.jsonl"}
TOPIC_FILE = "topic.json"
PARTS = ("forget_train", "forget_heldout", "retain_train", "retain_heldout")


@dataclass
class FactTopic:
    """Facts split into forget / retain (by relation) and train / held-out (by linked subject groups)."""

    forget_train: list[FactItem]
    forget_heldout: list[FactItem]
    retain_train: list[FactItem]
    retain_heldout: list[FactItem]
    forget_relations: list[str]
    heldout_fraction: float
    seed: int
    source: str = ""

    def counts(self) -> dict[str, int]:
        """Facts in each part."""
        return {part: len(getattr(self, part)) for part in PARTS}


def fact_sentence(item: FactItem) -> str:
    """The fact as one sentence: its prompt, a space, its target."""
    return f"{item.prompt} {item.target}"


class _Groups:
    """Union-find over fact indices."""

    def __init__(self, size: int) -> None:
        self.parent = list(range(size))

    def find(self, i: int) -> int:
        while self.parent[i] != i:
            self.parent[i] = self.parent[self.parent[i]]
            i = self.parent[i]
        return i

    def union(self, i: int, j: int) -> None:
        self.parent[self.find(i)] = self.find(j)


def linked_groups(facts: Sequence[FactItem]) -> list[list[int]]:
    """Fact indices grouped so that facts sharing a subject, or where one's subject occurs in the other's sentence,
    are in the same group; groups in order of their first fact, each in file order."""
    groups = _Groups(len(facts))
    sentences = [fact_sentence(f).casefold() for f in facts]
    by_subject: dict[str, list[int]] = {}
    for i, fact in enumerate(facts):
        by_subject.setdefault(fact.subject.casefold().strip(), []).append(i)
    for subject, owners in by_subject.items():
        pattern = re.compile(r"(?<!\w)" + re.escape(subject) + r"(?!\w)")
        for j, sentence in enumerate(sentences):
            # The substring test is cheap and rules out almost every pair before the regex runs.
            if subject in sentence and pattern.search(sentence):
                groups.union(j, owners[0])
        for i in owners[1:]:
            groups.union(i, owners[0])
    members: dict[int, list[int]] = {}
    for i in range(len(facts)):
        members.setdefault(groups.find(i), []).append(i)
    return sorted(members.values(), key=lambda m: m[0])


def _hold_out(groups: Sequence[list[int]], counted: set[int], target: int, already: int) -> set[int]:
    """Take groups (in the given, shuffled order) into the held-out part until it holds `target` counted facts."""
    heldout: set[int] = set()
    count = already
    for group in groups:
        if count >= target:
            break
        heldout.update(group)
        count += sum(1 for i in group if i in counted)
    return heldout


def split_fact_topic(
    path: str | Path,
    forget_relations: Sequence[str] = GEOGRAPHY_RELATIONS,
    heldout_fraction: float = 0.5,
    seed: int = 0,
) -> FactTopic:
    """Split known_1000 into forget (`forget_relations`) and retain (every other relation) facts, each into train
    and held-out parts of about `heldout_fraction`, with no subject shared between train and held-out (see the
    module docstring). Deterministic for a fixed seed."""
    if not 0.0 < heldout_fraction < 1.0:
        raise CodeunlearnError(f"heldout_fraction={heldout_fraction}", "use a value strictly between 0 and 1")
    forget_relations = list(dict.fromkeys(forget_relations))
    facts = load_facts(path)
    present = {f.relation for f in facts}
    missing = [r for r in forget_relations if r not in present]
    if not forget_relations or missing:
        raise CodeunlearnError(
            f"forget relations {missing or '[]'} not in {path}", f"choose among {', '.join(sorted(present))}"
        )
    is_forget = {i for i, f in enumerate(facts) if f.relation in forget_relations}
    is_retain = set(range(len(facts))) - is_forget
    groups = linked_groups(facts)
    random.Random(seed).shuffle(groups)
    # Groups with a forget fact are split first, on their forget facts; the retain facts they carry count towards
    # the retain side's held-out share, which the remaining (retain-only) groups then fill up.
    forget_groups = [g for g in groups if any(i in is_forget for i in g)]
    retain_groups = [g for g in groups if not any(i in is_forget for i in g)]
    heldout = _hold_out(forget_groups, is_forget, round(heldout_fraction * len(is_forget)), 0)
    heldout |= _hold_out(retain_groups, is_retain, round(heldout_fraction * len(is_retain)), len(heldout & is_retain))

    def part(side: set[int], held: bool) -> list[FactItem]:
        return [f for i, f in enumerate(facts) if i in side and (i in heldout) == held]

    topic = FactTopic(
        forget_train=part(is_forget, False),
        forget_heldout=part(is_forget, True),
        retain_train=part(is_retain, False),
        retain_heldout=part(is_retain, True),
        forget_relations=forget_relations,
        heldout_fraction=heldout_fraction,
        seed=seed,
        source=str(path),
    )
    empty = [name for name, count in topic.counts().items() if count == 0]
    if empty:
        raise CodeunlearnError(
            f"the fact topic of {path} has empty parts {empty} (counts {topic.counts()})",
            "use a file with more facts (and subjects) per side, or another heldout_fraction",
        )
    return topic


def _jsonl(rows: Sequence[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def _probe_row(item: FactItem) -> dict:
    """A held-out fact in the known_1000 schema (the fields `load_facts` reads)."""
    return {
        "known_id": item.id,
        "subject": item.subject,
        "attribute": item.target,
        "prompt": item.prompt,
        "relation_id": item.relation,
    }


def write_fact_topic(
    path: str | Path,
    output_dir: str | Path,
    forget_relations: Sequence[str] = GEOGRAPHY_RELATIONS,
    heldout_fraction: float = 0.5,
    seed: int = 0,
    overwrite: bool = False,
) -> FactTopic:
    """Split known_1000 (`split_fact_topic`) and write the topic to `output_dir`:

    `forget_train.jsonl`, `retain_train.jsonl` (corpora: one `{"text": sentence}` row per fact, readable by
    `codeunlearn.data.load_documents`), `probes_forget.jsonl`, `probes_retain.jsonl` (held-out facts in the
    known_1000 schema, readable by `load_facts` and `fact_cloze`) and `topic.json` (counts, relations, seed).
    The directory is written atomically; a non-empty one is refused unless `overwrite`.
    """
    topic = split_fact_topic(path, forget_relations, heldout_fraction, seed)
    summary = {
        "source": str(path),
        "forget_relations": topic.forget_relations,
        "retain_relations": sorted({f.relation for f in topic.retain_train + topic.retain_heldout}),
        "heldout_fraction": heldout_fraction,
        "seed": seed,
        "split": "by linked subject: no held-out subject occurs in a training sentence",
        "counts": topic.counts(),
        "files": {**CORPUS_FILES, **PROBE_FILES},
    }
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        for part, filename in CORPUS_FILES.items():
            atomic_write_text(tmp / filename, _jsonl([{"text": fact_sentence(f)} for f in getattr(topic, part)]))
        for part, filename in PROBE_FILES.items():
            atomic_write_text(tmp / filename, _jsonl([_probe_row(f) for f in getattr(topic, part)]))
        atomic_write_text(tmp / TOPIC_FILE, json.dumps(summary, indent=2, ensure_ascii=False) + "\n")
    return topic
