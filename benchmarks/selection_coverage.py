"""How well a selection rule's choice carries from the statistics text to other text, without running the model.

`forget_curves.py --statistics_cache DIR --validation_tokens V` saves the code statistics of the forget and the
retain text on the statistics (train) chunks, on V more training tokens (validation) and on the held-out text. This
script reads them back, selects codes with each rule given and prints, per rule and number of codes, the share of
code slots (tokens x stages x heads) the chosen codes take on the statistics chunks and on the comparison split, plus
the stages they sit in. A rule whose codes take many forget and few retain slots on text they were not chosen on is
worth a full curve (`forget_curves.py`); the train columns alone flatter every rule, since the codes were chosen on
them. Compare rules on `validation` (the default), so that the held-out text stays unseen until the curve.

    python benchmarks/selection_coverage.py --cache outputs/stats_s8 --topic micro --num_codes 2048 4096 8192 \\
        --rules '[{}, {"min_forget_count": 20}, {"stages": [0]}, {"pseudo_count": 5}]'

A rule is a JSON object of `SelectionRule` fields, plus two options tried here first: `stages` (only codes of these
residual stages are eligible) and `pseudo_count` (the frequency-ratio score's pseudo-count, in retain tokens; the
library uses 1).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import torch

from codeunlearn.bottleneck.config import CONFIG_NAME
from codeunlearn.tables import escape_pipes, markdown_table
from codeunlearn.unlearn.selection import SelectionRule, enrichment_scores
from codeunlearn.unlearn.statistics import CodeStatistics

SCRIPT_ONLY_KEYS = ("stages", "pseudo_count")
RULE_KEYS = {f.name for f in dataclasses.fields(SelectionRule)} - {"num_codes"}


def parse_rules(text: str) -> list[dict]:
    """The --rules JSON list, each rule checked for keys this script knows."""
    try:
        rules = json.loads(text)
    except json.JSONDecodeError as err:
        raise SystemExit(
            f"--rules is not valid JSON ({err}): pass a list of objects, e.g. '[{{}}, {{\"stages\": [0]}}]'"
        ) from None
    if not isinstance(rules, list) or not all(isinstance(r, dict) for r in rules):
        raise SystemExit("--rules must be a JSON list of objects, e.g. '[{}]'")
    for rule in rules:
        unknown = set(rule) - RULE_KEYS - set(SCRIPT_ONLY_KEYS)
        if unknown:
            raise SystemExit(f"unknown rule keys {sorted(unknown)}: use {sorted(RULE_KEYS | set(SCRIPT_ONLY_KEYS))}")
    return rules


def find_statistics(cache: Path, corpus: str, split: str, chunks: int | None) -> Path:
    """The one statistics file of `corpus` and `split` in `cache` (the largest chunk count unless `chunks` is given)."""
    stem = corpus.replace("+", "_")
    found = sorted(cache.glob(f"{stem}_{split}_*.safetensors"))
    if chunks is not None:
        found = [p for p in found if p.name.startswith(f"{stem}_{split}_{chunks}x")]
    if not found:
        raise SystemExit(
            f"no {split} statistics of {corpus} in {cache}: run forget_curves.py --statistics_cache {cache}"
        )
    return max(found, key=lambda p: int(p.name[len(stem) + len(split) + 2 :].split("x")[0]))


def rule_scores(forget: CodeStatistics, retain: CodeStatistics, layer: int, spec: dict, shape: tuple[int, int, int]):
    """Scores of every code under `spec` (-inf where ineligible); `shape` = (stages, heads, codebook size)."""
    rule = SelectionRule(**{k: v for k, v in spec.items() if k not in SCRIPT_ONLY_KEYS})
    scores = enrichment_scores(forget, retain, layer, rule)
    if "pseudo_count" in spec:
        pseudo = spec["pseudo_count"] / max(retain.tokens[layer], 1)
        rescored = torch.log((forget.frequency(layer) + pseudo) / (retain.frequency(layer) + pseudo))
        scores = torch.where(torch.isfinite(scores), rescored, scores)
    if "stages" in spec:
        stages, heads, size = shape
        stage_of = torch.arange(stages * heads * size) // (heads * size)
        scores = scores.masked_fill(~torch.isin(stage_of, torch.tensor(spec["stages"])), -math.inf)
    return scores


def slot_share(stats: CodeStatistics, layer: int, codes: torch.Tensor, slots: int) -> float:
    return float(stats.counts[layer][codes].sum()) / max(stats.tokens[layer] * slots, 1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", required=True, help="the --statistics_cache directory of forget_curves.py")
    parser.add_argument(
        "--topic", required=True, help="forget corpus name as forget_curves.py saved it (micro, hp, cyber)"
    )
    parser.add_argument("--retain", default="history+wiki")
    parser.add_argument("--train_chunks", type=int, help="pick the train statistics of this many chunks")
    parser.add_argument("--bottleneck", required=True, help="bottleneck directory (for its stage/head/codebook shape)")
    parser.add_argument("--num_codes", type=int, nargs="+", default=[2048, 4096, 8192])
    parser.add_argument(
        "--rules", default="[{}]", help="JSON list of rules (SelectionRule fields, stages, pseudo_count)"
    )
    parser.add_argument(
        "--split", choices=("validation", "heldout"), default="validation", help="the text the choice is checked on"
    )
    parser.add_argument("--out", help="also write the rows as JSON here")
    args = parser.parse_args(argv)

    cache = Path(args.cache)
    config_file = Path(args.bottleneck) / CONFIG_NAME
    if not config_file.is_file():
        raise SystemExit(f"{config_file} not found: pass the bottleneck directory the statistics were computed with")
    config = json.loads(config_file.read_text())
    rules = parse_rules(args.rules)
    stages, heads, size = config["num_stages"], config["num_heads"], config["codebook_size"]
    slots = stages * heads
    stats = {
        (corpus, split): CodeStatistics.load(
            find_statistics(cache, name, split, args.train_chunks if split == "train" else None)
        )
        for corpus, name in (("forget", args.topic), ("retain", args.retain))
        for split in ("train", args.split)
    }
    fingerprints = {s.bottleneck_fingerprint for s in stats.values()}
    if len(fingerprints) != 1:
        raise SystemExit(f"the statistics come from different bottlenecks {sorted(fingerprints)}: clear {cache}")
    tokens = {f"{c} {s}": next(iter(v.tokens.values())) for (c, s), v in stats.items()}
    print(f"statistics tokens: {tokens}")
    print()
    other = args.split
    header = ["rule", "N", "eligible", "train forget slots", "train retain slots", f"{other} forget slots"]
    header += [f"{other} retain slots", f"{other} forget/retain", "codes per stage"]
    rows, cells = [], []
    for spec in rules:
        spec = {**spec, "num_codes": max(args.num_codes)}
        for layer in sorted(stats["forget", "train"].counts):
            scores = rule_scores(stats["forget", "train"], stats["retain", "train"], layer, spec, (stages, heads, size))
            eligible = int(torch.isfinite(scores).sum())
            order = torch.topk(scores, min(eligible, spec["num_codes"])).indices
            # a rule with fewer eligible codes than some N gets one row with all of them
            for n in sorted({min(n, len(order)) for n in args.num_codes}):
                codes = order[:n]
                share = {key: slot_share(s, layer, codes, slots) for key, s in stats.items()}
                ratio = share["forget", other] / max(share["retain", other], 1e-12)
                per_stage = torch.bincount(codes // (heads * size), minlength=stages).tolist()
                rule = {k: v for k, v in spec.items() if k != "num_codes"}
                rows.append(
                    {
                        "rule": rule,
                        "layer": layer,
                        "num_codes": len(codes),
                        "eligible": eligible,
                        "slots": {f"{c} {s}": round(v, 6) for (c, s), v in share.items()},
                        "codes_per_stage": per_stage,
                    }
                )
                shares = [f"{share[key]:.2%}" for key in (("forget", "train"), ("retain", "train"))]
                shares += [f"{share['forget', other]:.2%}", f"{share['retain', other]:.2%}", f"{ratio:.1f}"]
                cells.append([escape_pipes(json.dumps(rule)), len(codes), eligible, *shares, per_stage])
    print(markdown_table(header, cells))
    if args.out:
        Path(args.out).write_text(json.dumps({"tokens": tokens, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
