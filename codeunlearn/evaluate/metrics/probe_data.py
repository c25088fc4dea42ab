"""Loaders that turn each shipped probe schema (see the shared data README) into a few common records.

Every loader reads a JSONL file and fails with one `CodeunlearnError` line naming the file, the line and the field
when the file is missing or empty, a line is not JSON, or a row lacks a field or has one of the wrong type; a metric
never starts scoring a file it will choke on halfway.

    ChoiceItem      multiple choice: HP trivia / by-book / neighbours (answer vs one distractor), WMDP, MMLU, ARC
    FactItem        known_1000 cloze facts (target = " " + attribute after the prompt)
    SportsFact      athlete -> sport with a 0-shot and a 1-shot prompt
    FamiliarityItem HP completion prompts with the reference words a model that knows HP would bring up
    QAItem          sports general knowledge: a question and its short free-text answer (`which_sport` / `sport_trivia`)
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from codeunlearn.errors import CodeunlearnError

CHOICE_FORMATS = ("hp_trivia", "hp_neighbors", "hp_by_book", "wmdp", "mmlu", "arc")
HP_DISTRACTORS = ("distractor", "distractor_hard", "distractor_easy")
MMLU_SPLITS = ("test", "dev")
QA_KINDS = ("which_sport", "sport_trivia")


@dataclass(frozen=True)
class ChoiceItem:
    """One multiple-choice question; `subject` groups items in breakdowns (MMLU subject, HP book, neighbour topic)."""

    id: str
    question: str
    choices: list[str]
    answer_index: int
    subject: str | None = None


@dataclass(frozen=True)
class FactItem:
    """One known_1000 fact: `prompt` is followed by `" " + target`; `relation` is the Wikidata id (`P30`)."""

    id: int
    subject: str
    prompt: str
    target: str
    relation: str


@dataclass(frozen=True)
class SportsFact:
    """One athlete -> sport fact; the choices are scored with a leading space after either prompt."""

    id: str
    athlete: str
    prompt_zero_shot: str
    prompt_one_shot: str
    choices: list[str]
    answer_index: int


@dataclass(frozen=True)
class FamiliarityItem:
    """One HP completion prompt and the HP-specific words a completion that knows HP would name."""

    id: str
    prompt: str
    references: list[str]
    subtlety: int | None = None


@dataclass(frozen=True)
class QAItem:
    """One short-answer question; `" " + answer` is scored after the prompt. `kind` is `which_sport` (the answer
    names a sport) or `sport_trivia` (rules and numbers, free text); `sport` is the sport a trivia row is about."""

    id: str
    kind: str
    question: str
    answer: str
    sport: str | None = None


Row = tuple[str, dict[str, Any]]  # (where: "FILE line N", the parsed row)


def read_jsonl(path: str | Path, what: str = "probe file") -> list[Row]:
    """Every non-blank line of a JSONL file as ("FILE line N", row); one-line errors for a missing or empty file
    and for a line that is not a JSON object."""
    path = Path(path)
    if not path.is_file():
        raise CodeunlearnError(f"{what} not found: {path}", "check the path (the shared data folder holds the probes)")
    rows: list[Row] = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            where = f"{path} line {number}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                raise CodeunlearnError(f"{where} is not valid JSON ({err.msg})", "fix or remove that line") from None
            if not isinstance(row, dict):
                raise CodeunlearnError(f"{where} is a JSON {type(row).__name__}, not an object", "one object per line")
            rows.append((where, row))
    if not rows:
        raise CodeunlearnError(f"{what} {path} has no rows", "pass a JSONL file with one probe per line")
    return rows


def field_of(row: Row, key: str, kind: type | tuple[type, ...] = str) -> Any:
    """`row[key]`, checked to be present and of type `kind` (bool is never accepted as an int)."""
    where, values = row
    if key not in values:
        raise CodeunlearnError(
            f"{where} has no field {key!r} (fields: {', '.join(values)})", "use a file in the documented schema"
        )
    value = values[key]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
        expected = " or ".join(k.__name__ for k in kinds)
        raise CodeunlearnError(
            f"{where}: field {key!r} is {type(value).__name__}, expected {expected}", "use the documented schema"
        )
    return value


def _choices_of(row: Row, key: str = "choices") -> list[str]:
    choices = field_of(row, key, list)
    if len(choices) < 2 or not all(isinstance(c, str) and c.strip() for c in choices):
        raise CodeunlearnError(f"{row[0]}: {key!r} must list at least two non-empty strings", "fix that row")
    return choices


def _answer_index_of(row: Row, key: str, num_choices: int) -> int:
    index = field_of(row, key, int)
    if not 0 <= index < num_choices:
        raise CodeunlearnError(f"{row[0]}: {key}={index} is outside the {num_choices} choices", "fix that row")
    return index


def _two_way(row: Row, distractor_field: str, subject: str | None, order_seed: int) -> ChoiceItem:
    """Answer against one distractor, in an order seeded by the item id: the answer is first about half the time
    (letter scoring would otherwise reward a bias for `A`), and the order never depends on which items are sampled."""
    item_id = str(field_of(row, "id", (str, int)))
    answer, distractor = field_of(row, "answer"), field_of(row, distractor_field)
    answer_first = random.Random(f"{order_seed}:{item_id}").random() < 0.5
    choices = [answer, distractor] if answer_first else [distractor, answer]
    return ChoiceItem(item_id, field_of(row, "question"), choices, 0 if answer_first else 1, subject)


def _hp_trivia(row: Row, distractor: str, order_seed: int) -> ChoiceItem:
    return _two_way(row, distractor, None, order_seed)


def _hp_neighbors(row: Row, distractor: str, order_seed: int) -> ChoiceItem:
    # The neighbour and by-book files ship a single `distractor`, whatever the trivia set's choice is.
    return _two_way(row, "distractor", field_of(row, "neighbor_topic"), order_seed)


def _hp_by_book(row: Row, distractor: str, order_seed: int) -> ChoiceItem:
    return _two_way(row, "distractor", f"book_{field_of(row, 'book', int)}", order_seed)


def _wmdp(row: Row, distractor: str, order_seed: int) -> ChoiceItem:
    choices = _choices_of(row)
    answer = _answer_index_of(row, "answer", len(choices))
    return ChoiceItem(str(field_of(row, "id", (str, int))), field_of(row, "question"), choices, answer)


def _arc(row: Row, distractor: str, order_seed: int) -> ChoiceItem:
    choices = _choices_of(row)
    answer = _answer_index_of(row, "answer_index", len(choices))
    return ChoiceItem(str(field_of(row, "id", (str, int))), field_of(row, "question"), choices, answer)


ChoiceParser = Callable[[Row, str, int], ChoiceItem]
_PARSERS: dict[str, ChoiceParser] = {
    "hp_trivia": _hp_trivia,
    "hp_neighbors": _hp_neighbors,
    "hp_by_book": _hp_by_book,
    "wmdp": _wmdp,
    "arc": _arc,
}


def _mmlu(path: str | Path, rows: Sequence[Row], split: str | None) -> list[ChoiceItem]:
    """MMLU rows have no id: it is `subject-split-K`, K counting that subject's rows of that split in file order."""
    if split is not None and split not in MMLU_SPLITS:
        raise CodeunlearnError(f"unknown MMLU split {split!r}", f"use one of {', '.join(MMLU_SPLITS)} (or None: all)")
    counters: dict[tuple[str, str], int] = {}
    items = []
    for row in rows:
        subject, row_split = field_of(row, "subject"), field_of(row, "split")
        key = (subject, row_split)
        counters[key] = counters.get(key, -1) + 1
        if split is not None and row_split != split:
            continue
        choices = _choices_of(row)
        answer = _answer_index_of(row, "answer", len(choices))
        items.append(
            ChoiceItem(f"{subject}-{row_split}-{counters[key]}", field_of(row, "question"), choices, answer, subject)
        )
    if not items:
        raise CodeunlearnError(f"{path} has no {split!r} rows", "use split 'test', 'dev' or None (all rows)")
    return items


def load_choice_items(
    path: str | Path, format: str, distractor: str = "distractor_hard", split: str | None = "test", order_seed: int = 0
) -> list[ChoiceItem]:
    """Multiple-choice items of a probe file in one of the shipped schemas.

    Args:
        path: the JSONL file.
        format: `hp_trivia`, `hp_neighbors`, `hp_by_book`, `wmdp`, `mmlu` or `arc`.
        distractor: the HP trivia distractor set (`distractor`, `distractor_hard` or `distractor_easy`); the
            neighbour and by-book files ship only `distractor`, and 4-way formats have none, so they ignore it.
        split: MMLU only: keep rows of this split (`test` or `dev`; None keeps both).
        order_seed: seeds the order of the two choices of the 2-way HP formats.
    """
    if format not in CHOICE_FORMATS:
        raise CodeunlearnError(f"unknown probe format {format!r}", f"use one of {', '.join(CHOICE_FORMATS)}")
    if distractor not in HP_DISTRACTORS:
        raise CodeunlearnError(f"unknown distractor set {distractor!r}", f"use one of {', '.join(HP_DISTRACTORS)}")
    rows = read_jsonl(path)
    if format == "mmlu":
        return _mmlu(path, rows, split)
    parse = _PARSERS[format]
    return [parse(row, distractor, order_seed) for row in rows]


def load_facts(
    path: str | Path, relations: Sequence[str] | None = None, exclude_relations: Sequence[str] | None = None
) -> list[FactItem]:
    """known_1000 facts, optionally only `relations` and without `exclude_relations` (Wikidata ids such as `P30`)."""
    rows = read_jsonl(path, "facts file")
    facts = [
        FactItem(
            id=field_of(row, "known_id", int),
            subject=field_of(row, "subject"),
            prompt=field_of(row, "prompt"),
            target=field_of(row, "attribute"),
            relation=field_of(row, "relation_id"),
        )
        for row in rows
    ]
    keep = set(relations) if relations is not None else None
    drop = set(exclude_relations or ())
    selected = [f for f in facts if (keep is None or f.relation in keep) and f.relation not in drop]
    if not selected:
        known = sorted({f.relation for f in facts})
        raise CodeunlearnError(
            f"no facts in {path} with relations={list(relations or [])} exclude_relations={sorted(drop)}",
            f"choose among the file's relations: {', '.join(known)}",
        )
    return selected


def load_sports_facts(path: str | Path) -> list[SportsFact]:
    """Athlete -> sport facts (`topics/sports/probes_athlete_sport.jsonl`)."""
    facts = []
    for row in read_jsonl(path, "sports facts file"):
        choices = _choices_of(row)
        facts.append(
            SportsFact(
                id=str(field_of(row, "id", (str, int))),
                athlete=field_of(row, "athlete"),
                prompt_zero_shot=field_of(row, "prompt_zero_shot"),
                prompt_one_shot=field_of(row, "prompt_one_shot"),
                choices=choices,
                answer_index=_answer_index_of(row, "answer_index", len(choices)),
            )
        )
    return facts


def load_familiarity(path: str | Path) -> list[FamiliarityItem]:
    """HP familiarity completion prompts (`topics/harry_potter/probes_familiarity.jsonl`)."""
    items = []
    for row in read_jsonl(path, "familiarity file"):
        references = field_of(row, "references", list)
        if not references or not all(isinstance(r, str) and r.strip() for r in references):
            raise CodeunlearnError(f"{row[0]}: 'references' must list non-empty strings", "fix that row")
        subtlety = row[1].get("subtlety")
        items.append(
            FamiliarityItem(
                id=str(field_of(row, "id", (str, int))),
                prompt=field_of(row, "prompt"),
                references=list(dict.fromkeys(references)),  # a repeated reference would be counted twice
                subtlety=subtlety if isinstance(subtlety, int) and not isinstance(subtlety, bool) else None,
            )
        )
    return items


def load_qa_items(path: str | Path) -> list[QAItem]:
    """Short-answer questions (`topics/sports/probes_sport_general.jsonl`: `{id, kind, question, answer, sport?}`)."""
    items = []
    for row in read_jsonl(path, "short-answer file"):
        kind = field_of(row, "kind")
        if kind not in QA_KINDS:
            raise CodeunlearnError(f"{row[0]}: kind {kind!r} is not a known kind", f"use one of {', '.join(QA_KINDS)}")
        answer = field_of(row, "answer")
        if not answer.strip():
            raise CodeunlearnError(f"{row[0]}: 'answer' is empty", "fix that row")
        items.append(
            QAItem(
                id=str(field_of(row, "id", (str, int))),
                kind=kind,
                question=field_of(row, "question"),
                answer=answer.strip(),  # scored as " " + answer: stray spaces would change its tokens
                sport=field_of(row, "sport") if row[1].get("sport") is not None else None,
            )
        )
    return items
