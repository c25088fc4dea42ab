"""`codeunlearn fact-topic`: write the geography fact topic of known_1000 as forget/retain corpora and probes.

    codeunlearn fact-topic --known_facts ../shared/data/eval/known_1000.jsonl --output_dir outputs/geography

Forget = the `--forget_relations` facts (default P30 continent, P17 country, P36 capital), retain = every other
relation; both are split into train sentences (`forget_train.jsonl`, `retain_train.jsonl`: use them as
--forget_corpora / --retain_corpora) and held-out probes (`probes_forget.jsonl`, `probes_retain.jsonl`, in the
known_1000 schema, for the `fact_cloze` metric), with no subject shared between train and held-out, and `suite.yaml`:
the geography evaluation suite scoring those held-out facts (`codeunlearn eval --suite OUT/suite.yaml`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.errors import check_range
from codeunlearn.evaluate.metrics.facts import CORPUS_FILES, GEOGRAPHY_RELATIONS, PROBE_FILES, write_fact_topic
from codeunlearn.evaluate.suite.fact_suite import write_fact_suite
from codeunlearn.runtime import run_arguments

DESCRIPTION = "Write the geography fact topic (known_1000) as forget/retain corpora and held-out probes."


@dataclass
class FactTopicArguments:
    """Which facts, how they are split, where they go."""

    known_facts: str = field(
        metadata={"aliases": ["--known_1000"], "help": "The known_1000 facts file (shared data eval/known_1000.jsonl)."}
    )
    forget_relations: list[str] = field(
        default_factory=lambda: list(GEOGRAPHY_RELATIONS),
        metadata={"help": "Wikidata relations to forget (default: P30 P17 P36, geography); the rest are retained."},
    )
    heldout_fraction: float = field(
        default=0.5, metadata={"help": "Share of each side's facts held out as probes (split by subject)."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of the train/held-out split."})

    def __post_init__(self) -> None:
        # open at both ends: either side of the split would be empty (`write_fact_topic` says so too, later)
        check_range("heldout_fraction", self.heldout_fraction, 0 < self.heldout_fraction < 1, "in (0, 1) (e.g. 0.5)")


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn fact-topic` with command-line arguments `argv` (without the subcommand name)."""
    args, run = parse_arguments(
        (FactTopicArguments, run_arguments("output_dir", "overwrite", writes="the topic's files")),
        argv,
        "codeunlearn fact-topic",
        DESCRIPTION,
    )
    topic = write_fact_topic(
        args.known_facts,
        run.output_dir,
        forget_relations=args.forget_relations,
        heldout_fraction=args.heldout_fraction,
        seed=args.seed,
        overwrite=run.overwrite,
    )
    suite = write_fact_suite(
        run.output_dir,
        topic.forget_relations,
        forget_train=CORPUS_FILES["forget_train"],
        probes_forget=PROBE_FILES["forget_heldout"],
        probes_retain=PROBE_FILES["retain_heldout"],
    )
    counts = topic.counts()
    print(f"forget relations {' '.join(topic.forget_relations)}: ", end="")
    print(", ".join(f"{part} {count}" for part, count in counts.items()))
    print(f"wrote {run.output_dir}; evaluate with `codeunlearn eval --suite {suite} ...`")
    return 0
