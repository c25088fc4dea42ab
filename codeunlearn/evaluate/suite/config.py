"""Evaluation configs: which metrics a suite runs on a topic, with which data, and what the fast path shrinks.

A config is a YAML (or JSON) mapping:

    name: harry_potter
    topic: harry_potter
    description: what the suite measures
    max_items: 500                 # optional: items per probe set in a full run (a seeded sample; null: all)
    metrics:                       # run by `codeunlearn eval --suite NAME`
      - name: hp_trivia_hard       # unique; names the report row and details/<name>.jsonl
        metric: multiple_choice    # a name in codeunlearn.evaluate.suite.registry.METRICS
        group: forget              # forget | retain | general | fluency
        params: {path: topics/harry_potter/probes_trivia.jsonl, format: hp_trivia, distractor: distractor_hard}
        key: acc                   # optional: the headline score in combined tables (default: the first score)
        max_items: 1000            # optional: this metric's own item cap
    attacks:                       # run only with --attacks; group is always `attack`
      - {name: relearning, metric: relearning_attack, params: {forget_corpus: ..., steps: 20}}
    fast:                          # --fast: smaller runs of the same metrics
      max_items: 100
      params: {max_tokens: 2048}   # given to every metric that takes the parameter
      metrics: {fluency: {num_prompts: 8}}   # per-metric parameter overrides
      skip: [relearning]           # metrics left out of a fast run

Parameters named `path`, `corpus`, `corpora` or ending in `_path`, `_corpus`, `_corpora` are data files, relative
to `--data_dir` unless absolute. The named configs ship inside the package (`codeunlearn/evaluate/suite/configs/*.yaml`), so an
installed codeunlearn finds them by name; any other file is passed by path.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.suite.registry import GROUPS, check_metric_name

CONFIG_SUFFIXES = (".yaml", ".yml", ".json")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # metric names become file names (details/NAME.jsonl)
ATTACK_GROUP = "attack"
_TOP_KEYS = {"name", "topic", "description", "max_items", "metrics", "attacks", "fast"}
_SPEC_KEYS = {"name", "metric", "group", "params", "key", "max_items"}
_FAST_KEYS = {"max_items", "params", "metrics", "skip"}


@dataclass(frozen=True)
class MetricSpec:
    """One metric of a suite: which registered function runs, under what name, in which report section.

    Attributes:
        metric: registered metric name (`codeunlearn.evaluate.suite.registry.METRICS`).
        name: unique name in the suite (report rows, `details/<name>.jsonl`).
        group: report section: forget, retain, general, fluency or attack.
        params: keyword arguments of the metric function (data paths relative to --data_dir).
        key: headline score for one-row-per-model tables (None: the metric's first score).
        max_items: items scored by this metric (None: the suite's cap).
    """

    metric: str
    name: str
    group: str
    params: dict[str, Any] = field(default_factory=dict)
    key: str | None = None
    max_items: int | None = None


@dataclass(frozen=True)
class FastOverrides:
    """What `--fast` changes: a smaller item cap, smaller parameters, metrics left out."""

    max_items: int | None = None
    params: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    skip: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class SuiteConfig:
    """A named evaluation suite: metrics (always run), attacks (`--attacks`) and the fast-path overrides."""

    name: str
    topic: str
    metrics: list[MetricSpec]
    attacks: list[MetricSpec] = field(default_factory=list)
    description: str = ""
    max_items: int | None = None
    fast: FastOverrides = field(default_factory=FastOverrides)
    source: str = ""

    def specs(self, attacks: bool = False, fast: bool = False) -> list[MetricSpec]:
        """The metrics one run executes, in order: metrics, then attacks (last, since an attack may change weights
        in place); a fast run leaves out `fast.skip`."""
        chosen = [*self.metrics, *(self.attacks if attacks else [])]
        return [s for s in chosen if not (fast and s.name in self.fast.skip)]


# A data path written `./x` or `../x` is beside the suite file (a topic folder carries its own suite); any other
# relative path is inside --data_dir (the shared data).
SUITE_RELATIVE = ("./", "../")


def is_data_param(key: str) -> bool:
    """Whether a metric parameter names data files (inside --data_dir, or beside the suite file: `SUITE_RELATIVE`)."""
    return key in ("path", "corpus", "corpora") or key.endswith(("_path", "_corpus", "_corpora"))


def data_files(config: SuiteConfig) -> list[tuple[str, str]]:
    """(metric name, relative or absolute path) of every data file the suite reads, attacks included."""
    out = []
    for spec in [*config.metrics, *config.attacks]:
        for key, value in spec.params.items():
            if is_data_param(key):
                out += [(spec.name, str(v)) for v in (value if isinstance(value, list) else [value])]
    return out


def named_configs() -> dict[str, Path]:
    """The configs shipped inside the package, by name."""
    folder = resources.files("codeunlearn.evaluate.suite") / "configs"
    return {
        Path(entry.name).stem: Path(str(entry))
        for entry in sorted(folder.iterdir(), key=lambda e: e.name)
        if entry.name.endswith(CONFIG_SUFFIXES)
    }


def load_suite_config(name_or_path: str | Path) -> SuiteConfig:
    """A shipped suite by name (`harry_potter`), or a suite config file by path; validated."""
    text = str(name_or_path)
    named = named_configs()
    if text in named:
        return parse_suite_config(_read(named[text]), str(named[text]))
    path = Path(text)
    if path.suffix in CONFIG_SUFFIXES:
        if not path.is_file():
            raise CodeunlearnError(f"suite config file not found: {path}", "check the path")
        return parse_suite_config(_read(path), str(path))
    raise CodeunlearnError(
        f"unknown evaluation suite {text!r}", f"use one of {', '.join(named)} or a .yaml suite config file"
    )


def _read(path: Path) -> Any:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        first = " ".join(str(err).split())
        raise CodeunlearnError(f"suite config {path} does not parse ({first})", "fix its syntax") from None


def parse_suite_config(data: Any, source: str = "suite config") -> SuiteConfig:
    """Validate a parsed config mapping; every mistake is one line naming the key to fix."""
    where = f"suite config {source}"
    _mapping(data, where)
    _known_keys(data, _TOP_KEYS, where)
    name = _string(data.get("name", Path(source).stem), "name", where)
    topic = _string(data.get("topic", name), "topic", where)
    description = _string(data.get("description", ""), "description", where, allow_empty=True)
    max_items = _items(data.get("max_items"), "max_items", where)
    metrics = _specs(data.get("metrics"), "metrics", where, required=True)
    attacks = _specs(data.get("attacks") or [], "attacks", where, required=False)
    names = [s.name for s in [*metrics, *attacks]]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise CodeunlearnError(
            f"{where}: metric names {repeated} appear more than once", "give every metric a unique name"
        )
    fast = _fast(data.get("fast") or {}, set(names), where)
    return SuiteConfig(name, topic, metrics, attacks, description, max_items, fast, source)


def _specs(value: Any, section: str, where: str, required: bool) -> list[MetricSpec]:
    if value is None or (required and value == []):
        raise CodeunlearnError(f"{where}: no `{section}` listed", f"add a `{section}:` list of metrics")
    if not isinstance(value, list):
        raise CodeunlearnError(f"{where}: `{section}` is not a list", f"write `{section}:` as a list of metrics")
    return [_spec(item, f"{where}, {section}[{i}]", section == "attacks") for i, item in enumerate(value)]


def _spec(item: Any, where: str, attack: bool) -> MetricSpec:
    _mapping(item, where)
    _known_keys(item, _SPEC_KEYS, where)
    if "metric" not in item:
        raise CodeunlearnError(f"{where}: no `metric`", "name a registered metric, e.g. `metric: heldout_loss`")
    metric = _string(item["metric"], "metric", where)
    check_metric_name(metric, where)
    name = _string(item.get("name", metric), "name", where)
    if not NAME_PATTERN.match(name):
        raise CodeunlearnError(f"{where}: name {name!r} is not a plain file name", "use letters, digits, _ . and -")
    where = f"{where} ({name})"
    if attack:
        group = _string(item.get("group", ATTACK_GROUP), "group", where)
        if group != ATTACK_GROUP:
            raise CodeunlearnError(f"{where}: an attack's group is {group!r}", f"use group `{ATTACK_GROUP}` or omit it")
    else:
        if "group" not in item:
            raise CodeunlearnError(f"{where}: no `group`", f"add `group:` with one of {', '.join(GROUPS[:-1])}")
        group = _string(item["group"], "group", where)
        if group not in GROUPS[:-1]:
            raise CodeunlearnError(
                f"{where}: group {group!r} is not a metric group",
                f"use one of {', '.join(GROUPS[:-1])} (attacks go under `attacks:`)",
            )
    params = item.get("params") or {}
    _mapping(params, f"{where}: params")
    key = item.get("key")
    if key is not None:
        key = _string(key, "key", where)
    return MetricSpec(metric, name, group, dict(params), key, _items(item.get("max_items"), "max_items", where))


def _fast(value: Any, names: set[str], where: str) -> FastOverrides:
    where = f"{where}, fast"
    _mapping(value, where)
    _known_keys(value, _FAST_KEYS, where)
    params = value.get("params") or {}
    _mapping(params, f"{where}: params")
    per_metric = value.get("metrics") or {}
    _mapping(per_metric, f"{where}: metrics")
    for metric_name, overrides in per_metric.items():
        _mapping(overrides, f"{where}: metrics.{metric_name}")
    skip = value.get("skip") or []
    if not isinstance(skip, list) or not all(isinstance(s, str) for s in skip):
        raise CodeunlearnError(f"{where}: `skip` is not a list of metric names", "write `skip: [name, ...]`")
    unknown = sorted((set(per_metric) | set(skip)) - names)
    if unknown:
        raise CodeunlearnError(
            f"{where}: names {unknown} are not metrics of this suite", f"use names from {sorted(names)}"
        )
    return FastOverrides(_items(value.get("max_items"), "max_items", where), dict(params), dict(per_metric), skip)


def _mapping(value: Any, where: str) -> None:
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise CodeunlearnError(f"{where} is not a mapping of names to values", "write `name: value` entries")


def _known_keys(value: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise CodeunlearnError(f"{where}: unknown keys {unknown}", f"use only {sorted(allowed)}")


def _string(value: Any, key: str, where: str, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise CodeunlearnError(f"{where}: `{key}` must be a non-empty string, got {value!r}", f"fix `{key}`")
    return value


def _items(value: Any, key: str, where: str) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise CodeunlearnError(f"{where}: `{key}` must be a positive integer or null, got {value!r}", f"fix `{key}`")
    return value
