"""Do an edit's codes fire on the topic's names and places, and its random control's not? Read from an
`inspect.json` (`codeunlearn inspect`): for the edit's units and the control's, the share of their top forget-text
contexts whose firing token lies in a word of a fixed list (the whole word around the token, so "warts" in
"Hogwarts" counts), and the words they fire on most.

    python benchmarks/inspect_topic_words.py outputs/demo/inspect/inspect.json --top 20

The list is fixed here, before any page was read: Harry Potter's characters, houses, schools and places, leaving
out names that are also common words ("Black", "Tom", "Drive", "Stone", "Burrow"). It is the demo's topic; pass
`--words FILE` (one word per line) for another.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from codeunlearn.tables import escape_pipes, markdown_table

HARRY_POTTER_NAMES_AND_PLACES = """
harry potter hermione granger ron weasley weasleys ginny dumbledore albus voldemort riddle snape severus hagrid
draco malfoy malfoys lucius narcissa sirius lupin remus neville longbottom luna lovegood cedric diggory dobby
kreacher hedwig buckbeak dursley dursleys dudley vernon petunia quirrell quirinus lockhart gilderoy umbridge dolores
moody bellatrix lestrange pettigrew wormtail grindelwald fawkes nagini slughorn mcgonagall minerva flitwick
trelawney krum fleur delacour tonks kingsley shacklebolt aberforth ariana scrimgeour griphook ollivander filch
peeves myrtle crabbe goyle cho chang seamus dean thomas lavender brown oliver wood hogwarts hogsmeade gryffindor
gryffindors slytherin slytherins hufflepuff ravenclaw azkaban gringotts diagon knockturn privet grimmauld godric
durmstrang beauxbatons hogwart hermione's harry's ron's
"""

# A word: letters, digits, apostrophes and hyphens joined without a space.
WORD_CHARS = re.compile(r"[\w'’-]")


def whole_word(tokens: list[str], firing: int) -> str:
    """The word the firing token belongs to, rebuilt from the window's token texts (a token that starts with a
    space or a non-word character starts a new word)."""
    start = firing
    while start > 0 and tokens[start][:1] and WORD_CHARS.match(tokens[start][:1]) and tokens[start - 1].strip():
        if not WORD_CHARS.match(tokens[start - 1][-1:]):
            break
        start -= 1
    end = firing + 1
    while end < len(tokens) and tokens[end][:1] and WORD_CHARS.match(tokens[end][:1]):
        end += 1
    word = "".join(tokens[start:end]).strip()
    return re.sub(r"^[^\w]+|[^\w]+$", "", word).lower().removesuffix("'s").removesuffix("’s")


def unit_words(unit: dict[str, Any]) -> list[str]:
    """The words the unit fires on in its top forget-text contexts."""
    return [whole_word(c["tokens"], c["firing"]) for c in unit["forget"]["contexts"]]


def summarize(units: list[dict[str, Any]], names: set[str]) -> dict[str, Any]:
    """How many top forget contexts the units have, how many fire in a listed word, and the commonest words."""
    words = [w for unit in units for w in unit_words(unit)]
    hits = sum(w in names for w in words)
    return {
        "units": len(units),
        "units_firing_on_forget": sum(bool(unit["forget"]["contexts"]) for unit in units),
        "contexts": len(words),
        "in_list": hits,
        "share": hits / len(words) if words else 0.0,
        "units_with_a_listed_word": sum(any(w in names for w in unit_words(unit)) for unit in units),
        "common_words": Counter(words).most_common(15),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inspect_json", type=Path, help="inspect.json written by `codeunlearn inspect`")
    parser.add_argument("--top", type=int, default=20, help="edit units by score, and as many control units")
    parser.add_argument("--words", type=Path, help="file of names, one per line (default: Harry Potter's)")
    args = parser.parse_args(argv)
    if not args.inspect_json.is_file():
        print(f"error: {args.inspect_json} not found -- fix: pass the inspect.json of a `codeunlearn inspect` run")
        return 2
    report = json.loads(args.inspect_json.read_text())
    text = args.words.read_text() if args.words else HARRY_POTTER_NAMES_AND_PLACES
    names = {w.strip().lower() for w in text.split() if w.strip()}
    units = report["units"]
    edit = sorted((u for u in units if u["group"] == "edit"), key=lambda u: -(u["score"] or 0.0))
    control = [u for u in units if u["group"] == "control"]
    print(f"{args.inspect_json}: {len(edit)} edit units, {len(control)} control units; {len(names)} listed words")
    groups = (
        (f"edit, top {args.top} by score", edit[: args.top]),
        (f"control, first {args.top}", control[: args.top]),
        (f"edit, all {len(edit)}", edit),
        (f"control, all {len(control)}", control),
    )
    header = ["units", "contexts (top forget-text firings)", "in a listed word", "share", "units with one"]
    rows = [summary_row(label, summarize(group, names)) for label, group in groups]
    print(markdown_table([*header, "words fired on most"], rows, align="lrrrrl"))
    return 0


def summary_row(label: str, s: dict[str, Any]) -> list[str]:
    """A group's row: its contexts, those in a listed word, and the words its units fire on most (a `|` escaped)."""
    common = ", ".join(f"{w or '(no word)'} {n}" for w, n in s["common_words"][:10])
    counts = [str(s["contexts"]), str(s["in_list"]), f"{s['share']:.0%}"]
    return [label, *counts, f"{s['units_with_a_listed_word']} of {s['units']}", escape_pipes(common)]


if __name__ == "__main__":
    sys.exit(main())
