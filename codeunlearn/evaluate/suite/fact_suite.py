"""The evaluation suite of a written fact topic: the shipped `geography` suite pointed at the topic's held-out facts.

The shipped suite scores every known_1000 fact of the relations, so a model whose edit was selected on some of those
facts would be scored partly on its own training sentences. `codeunlearn fact-topic` therefore writes `suite.yaml`
beside the topic's files: the same metrics, but the forget / retain fact probes are the topic's held-out facts
(`probes_forget.jsonl`, `probes_retain.jsonl`, named `./FILE`: beside the suite file, so the folder can move) and the
relations are the topic's, plus a relearning attack that fine-tunes on the topic's forget training sentences and
re-scores the held-out forget facts after each step count (`facts_recovery`: top-1 accuracy regained), and the
attacks with the released weights, `bypass` (the edit switched off; for an SAE edit the error-term attack) and
`quantization` (8- and 4-bit weights), which re-score the held-out forget facts the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from codeunlearn.evaluate.suite.config import named_configs, parse_suite_config
from codeunlearn.io import atomic_write_text

SUITE_FILE = "suite.yaml"
TEMPLATE = "geography"  # the shipped suite the fact-topic suite is derived from
FORGET_FACTS, RETAIN_FACTS, REPHRASED = "geo_facts", "other_facts", "rephrased_facts"

# Fact sentences are ~10 tokens, and a topic has a few hundred: relearning packs them into short chunks (all of the
# training sentences, up to what 50 steps consume, so a small topic's sentences are seen more than once). The
# held-out fraction and seed are the commands' defaults, so the attacker's text is the training sentences the
# statistics and the baselines read and the loss is measured on the ones none of them read.
RELEARNING = {
    "name": "relearning",
    "metric": "relearning_attack",
    "params": {
        "steps": [0, 10, 25, 50],  # recovery after 50 steps, as the comparison tables report it
        "mode": "lora",
        "seq_len": 32,
        "heldout_fraction": 0.2,
        "split_seed": 0,
        "eval_tokens": 1024,
    },
    "key": "facts_recovery",  # a fact topic is forgotten or not in its held-out facts, not in a sentence loss
}
FAST_RELEARNING_STEPS = [0, 5]

# The weight attacks on the same short chunks: held-out sentences of the forget training file (split as the
# relearning attack splits it) and of the shipped retain corpora, and the held-out forget facts (the headline).
RETAIN_CORPORA = ["retain/openstax_us_history.jsonl", "retain/wikitext2_raw_test.txt"]
BYPASS = {
    "name": "bypass",
    "metric": "bypass_attack",
    "params": {"seq_len": 32, "heldout_fraction": 0.2, "split_seed": 0, "max_tokens": 4096, "error_term_steps": 20},
    "key": "facts_recovery",
}
QUANTIZATION = {
    "name": "quantization",
    "metric": "quantization_attack",
    "params": {"seq_len": 32, "heldout_fraction": 0.2, "split_seed": 0, "max_tokens": 4096, "bits": [8, 4]},
    "key": "facts_recovery_4bit",
}
FAST_WEIGHT_ATTACKS = {
    "bypass": {"max_tokens": 1024, "error_term_steps": 5},
    "quantization": {"max_tokens": 1024, "bits": [4]},
}


def fact_suite(
    topic_dir: str | Path, forget_relations: Sequence[str], forget_train: str, probes_forget: str, probes_retain: str
) -> dict[str, Any]:
    """The suite mapping for the topic written in `topic_dir`: its files named `./FILE`, beside the suite file, so the
    folder can move (or be shared) with its suite."""
    import yaml

    folder = Path(topic_dir).resolve()
    here = {name: f"./{name}" for name in (forget_train, probes_forget, probes_retain)}
    data = yaml.safe_load(named_configs()[TEMPLATE].read_text(encoding="utf-8"))
    relations = list(forget_relations)  # copied at every use below: a shared list is dumped as a YAML alias
    data["description"] = (
        f"Forgetting the held-out facts of known_1000 relations {' '.join(relations)} written by `codeunlearn "
        f"fact-topic`; side effects on held-out facts of the other relations, history, WikiText, sports, "
        "MMLU, ARC-Easy and athlete facts; fluency. " + data.get("description", "")
    ).strip()
    by_name = {spec["name"]: spec for spec in [*data["metrics"], *data.get("attacks", [])]}
    by_name[FORGET_FACTS]["params"] = {"path": here[probes_forget], "relations": list(relations)}
    by_name[RETAIN_FACTS]["params"] = {"path": here[probes_retain], "exclude_relations": list(relations)}
    by_name[REPHRASED]["params"].update(path=here[probes_forget], relations=list(relations))
    for spec in (by_name[FORGET_FACTS], by_name[RETAIN_FACTS]):
        spec.pop("max_items", None)  # held-out probes are few: score them all (--fast still caps them)
    relearning = {
        **RELEARNING,
        "params": {
            **RELEARNING["params"],
            "forget_corpus": here[forget_train],
            "facts_path": here[probes_forget],  # the held-out facts' top-1 after each step count
            "fact_relations": list(relations),
        },
    }
    weight_attacks = [
        {
            **spec,
            "params": {
                **spec["params"],
                "forget_corpus": here[forget_train],
                "retain_corpora": list(RETAIN_CORPORA),
                "facts_path": here[probes_forget],
                "fact_relations": list(relations),
            },
        }
        for spec in (BYPASS, QUANTIZATION)
    ]
    data["attacks"] = [*data.get("attacks", []), relearning, *weight_attacks]
    fast = data.setdefault("fast", {})
    fast.setdefault("metrics", {})["relearning"] = {"steps": FAST_RELEARNING_STEPS}
    fast["metrics"].update({name: dict(overrides) for name, overrides in FAST_WEIGHT_ATTACKS.items()})
    parse_suite_config(data, str(folder / SUITE_FILE))  # the template's own checks, before anything is written
    return data


def write_fact_suite(topic_dir: str | Path, forget_relations: Sequence[str], **files: str) -> Path:
    """Write `fact_suite(...)` as `topic_dir/suite.yaml` (atomically) and return its path; it loads by path with
    `codeunlearn eval --suite TOPIC/suite.yaml`."""
    import yaml

    path = Path(topic_dir) / SUITE_FILE
    data = fact_suite(topic_dir, forget_relations, **files)
    header = "# Written by `codeunlearn fact-topic`: the geography suite on this topic's held-out facts.\n"
    atomic_write_text(path, header + yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120))
    return path
