"""Run an evaluation suite on one model: every metric of the config in order, timed, seeded, with progress lines.

Parameters reach a metric function in this order, later ones winning: `shared` values (the split settings of the
command line, given only to metrics that take them), the config's `params`, and in a fast run the config's `fast`
parameters (global ones only to metrics that take them, then the per-metric ones). Data paths are taken inside
`data_dir`. Every metric is resolved and its parameters checked against its signature before the first one runs,
so a typo or a missing file ends the run in seconds rather than after half an hour of scoring.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import random
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult
from codeunlearn.evaluate.suite.config import SUITE_RELATIVE, MetricSpec, SuiteConfig, is_data_param
from codeunlearn.evaluate.suite.registry import resolve_metric

REPORT_VERSION = 1


@dataclass
class PlannedMetric:
    """A metric ready to run: its spec, function, final keyword arguments and item cap."""

    spec: MetricSpec
    function: Callable[..., MetricResult]
    params: dict[str, Any]
    max_items: int | None


@dataclass
class MetricOutcome:
    """What running one planned metric gave: its result, or the one-line error it failed with (`keep_going`).

    Attributes:
        name: the metric's name in the config.
        seconds: wall time.
        result: the result (None when it failed).
        failure: the one-line error (None when it ran).
        params / max_items: what it ran with.
        headline: the config's headline key (None: the result's first score).
    """

    name: str
    seconds: float
    result: MetricResult | None = None
    failure: str | None = None
    params: dict[str, Any] = field(default_factory=dict)
    max_items: int | None = None
    headline: str | None = None


@dataclass
class SuiteReport:
    """What one suite run measured on one model.

    Attributes:
        model: one line describing the model under test.
        config: suite name; `topic` and `config_source` say which topic and file.
        results: one `MetricResult` per metric, in run order.
        seconds: wall time of each metric, by name.
        params: the keyword arguments each metric ran with (data paths resolved), by name.
        item_caps: the item cap each metric ran with (None: every item), by name.
        headline: the score key one-row-per-model tables show for each metric, by name.
        failures: metrics that raised (with `keep_going`), name -> one-line error; they have no result.
        seed / fast / attacks / max_items: how the run was made (max_items: the caller's override of every cap).
    """

    model: str
    config: str
    topic: str
    results: list[MetricResult]
    seconds: dict[str, float]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)
    item_caps: dict[str, int | None] = field(default_factory=dict)
    headline: dict[str, str] = field(default_factory=dict)
    failures: dict[str, str] = field(default_factory=dict)
    seed: int = 0
    fast: bool = False
    attacks: bool = False
    max_items: int | None = None
    config_source: str = ""

    def result(self, name: str) -> MetricResult:
        """The result of the metric called `name`."""
        for result in self.results:
            if result.name == name:
                return result
        raise KeyError(name)

    def headline_key(self, result: MetricResult) -> str | None:
        """The score of `result` that summary tables show: the config's `key`, else its first score."""
        key = self.headline.get(result.name)
        if key in result.scores:
            return key
        return next(iter(result.scores), None)

    def to_dict(self, with_details: bool = True) -> dict[str, Any]:
        """A JSON-ready dict (non-finite numbers become None); `with_details=False` drops per-item records."""
        metrics = []
        for result in self.results:
            record = {
                "name": result.name,
                "group": result.group,
                "scores": result.scores,
                "chance": result.chance,
                "n": result.n,
                "seconds": self.seconds.get(result.name),
                "params": self.params.get(result.name, {}),
                "max_items": self.item_caps.get(result.name),
                "headline": self.headline_key(result),
            }
            if with_details:
                record["details"] = result.details
            metrics.append(record)
        return json_safe(
            {
                "kind": "codeunlearn-suite-report",
                "version": REPORT_VERSION,
                "model": self.model,
                "config": self.config,
                "config_source": self.config_source,
                "topic": self.topic,
                "seed": self.seed,
                "fast": self.fast,
                "attacks": self.attacks,
                "max_items": self.max_items,
                "total_seconds": sum(self.seconds.values()),
                "metrics": metrics,
                "failures": self.failures,
            }
        )

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SuiteReport:
        """Read back `to_dict` output (details may be absent)."""
        results = [
            MetricResult(
                name=m["name"],
                scores=m["scores"],
                chance=m.get("chance") or {},
                n=m.get("n", 0),
                details=m.get("details") or [],
                group=m.get("group", "general"),
            )
            for m in data["metrics"]
        ]
        return cls(
            model=data.get("model", "?"),
            config=data.get("config", "?"),
            topic=data.get("topic", ""),
            results=results,
            seconds={m["name"]: m["seconds"] for m in data["metrics"] if m.get("seconds") is not None},
            params={m["name"]: m.get("params") or {} for m in data["metrics"]},
            item_caps={m["name"]: m.get("max_items") for m in data["metrics"]},
            headline={m["name"]: m["headline"] for m in data["metrics"] if m.get("headline")},
            failures=dict(data.get("failures") or {}),
            seed=data.get("seed", 0),
            fast=bool(data.get("fast", False)),
            attacks=bool(data.get("attacks", False)),
            max_items=data.get("max_items"),
            config_source=data.get("config_source", ""),
        )


def json_safe(value: Any) -> Any:
    """Replace NaN/inf by None (strict JSON) and tuples by lists, recursively."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def plan_suite(
    config: SuiteConfig,
    data_dir: str | Path | None,
    attacks: bool = False,
    fast: bool = False,
    shared: dict[str, Any] | None = None,
) -> list[PlannedMetric]:
    """Resolve every metric of the run, merge its parameters, check them against the function's signature and
    check that its data files exist. Raises a one-line `CodeunlearnError` on the first problem."""
    planned = []
    for spec in config.specs(attacks, fast):
        function = resolve_metric(spec.metric)
        accepted = _parameters(function)
        params = {k: v for k, v in (shared or {}).items() if k in accepted}
        params.update(spec.params)
        if fast:
            params.update({k: v for k, v in config.fast.params.items() if k in accepted})
            params.update(config.fast.metrics.get(spec.name, {}))
        params = {
            k: _data_path(v, data_dir, config.source, spec, k) if is_data_param(k) else v for k, v in params.items()
        }
        # The config names the result and its section; a function without these parameters is renamed afterwards.
        params.update({k: v for k, v in (("name", spec.name), ("group", spec.group)) if k in accepted})
        _check_signature(function, params, spec)
        cap = spec.max_items or config.max_items
        if fast and config.fast.max_items is not None:
            cap = config.fast.max_items if cap is None else min(cap, config.fast.max_items)
        planned.append(PlannedMetric(spec, function, params, cap))
    return planned


def run_suite(
    ctx: EvalContext,
    config: SuiteConfig,
    data_dir: str | Path | None,
    attacks: bool = False,
    fast: bool = False,
    shared: dict[str, Any] | None = None,
    description: str = "",
    verbose: bool = True,
    keep_going: bool = False,
) -> SuiteReport:
    """Run `config`'s metrics (and attacks with `attacks=True`) on `ctx.model`; `fast` applies the config's fast
    overrides. `ctx.max_items`, when set, caps every metric (the command line's --max_items) over the config.

    Every metric starts from the same seeded random state (`ctx.seed`), so its result does not depend on which
    metrics ran before it, and a rerun with the same seed gives the same report. Prints one line per metric with
    its wall time unless `verbose=False`. With `keep_going`, a metric that raises is recorded in
    `SuiteReport.failures` (its traceback printed unless it is a `CodeunlearnError`) and the run goes on, so one
    failing attack at the end does not cost the results of a long run."""
    planned = plan_suite(config, data_dir, attacks, fast, shared)
    outcomes = [
        run_planned(ctx, item, f"[{index}/{len(planned)}]", verbose, keep_going)
        for index, item in enumerate(planned, 1)
    ]
    return assemble_report(ctx, config, outcomes, description, attacks, fast)


def run_planned(
    ctx: EvalContext, item: PlannedMetric, label: str, verbose: bool = True, keep_going: bool = False
) -> MetricOutcome:
    """Run one planned metric on `ctx.model` from the seeded random state of `ctx.seed` (so its result does not depend
    on what ran before it, or on which process runs it). `label` starts its progress lines (e.g. `[3/12]`). With
    `keep_going`, an exception becomes the outcome's `failure` (a `CodeunlearnError` as its one line, anything else
    as its repr with the traceback printed)."""
    name = item.spec.name
    cap = ctx.max_items if ctx.max_items is not None else item.max_items
    metric_ctx = dataclasses.replace(ctx, max_items=cap)
    if verbose:
        print(f"{label} {name} ({item.spec.metric}, {item.spec.group}) ...", flush=True)
    seed_everything(ctx.seed)
    start = time.perf_counter()
    try:
        result = item.function(metric_ctx, **item.params)
        if not isinstance(result, MetricResult):
            raise TypeError(f"metric {item.spec.metric} returned {type(result).__name__}, not MetricResult")
    except Exception as err:
        if not keep_going:
            raise
        failure = " ".join(str(err).split()) if isinstance(err, CodeunlearnError) else repr(err)
        if not isinstance(err, CodeunlearnError):  # a bug: its traceback is what a fix needs
            traceback.print_exc()
        print(f"{label} {name} FAILED: {failure}", file=sys.stderr, flush=True)
        return MetricOutcome(name, time.perf_counter() - start, failure=failure)
    seconds = time.perf_counter() - start
    result.name, result.group = name, item.spec.group
    if item.spec.key is not None and item.spec.key not in result.scores:  # after a long run, a typo must not cost it
        print(f"warning: {name} has no score {item.spec.key!r}; its first score is its headline", flush=True)
    if verbose:
        shown = ", ".join(f"{k} {v:.4f}" for k, v in list(result.scores.items())[:4] if isinstance(v, float))
        print(f"{label} {name}: {shown} (n={result.n}) in {seconds:.1f} s", flush=True)
    return MetricOutcome(name, seconds, result, None, item.params, cap, item.spec.key)


def assemble_report(
    ctx: EvalContext,
    config: SuiteConfig,
    outcomes: list[MetricOutcome],
    description: str = "",
    attacks: bool = False,
    fast: bool = False,
) -> SuiteReport:
    """The report of `outcomes` (in the config's order) of a run of `config` on `ctx`."""
    report = SuiteReport(
        model=description,
        config=config.name,
        topic=config.topic,
        results=[],
        seconds={},
        seed=ctx.seed,
        fast=fast,
        attacks=attacks,
        max_items=ctx.max_items,
        config_source=config.source,
    )
    for outcome in outcomes:
        report.seconds[outcome.name] = outcome.seconds
        if outcome.result is None:
            report.failures[outcome.name] = outcome.failure or "failed"
            continue
        report.results.append(outcome.result)
        report.params[outcome.name] = outcome.params
        report.item_caps[outcome.name] = outcome.max_items
        if outcome.headline is not None:
            report.headline[outcome.name] = outcome.headline
    return report


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (metrics that sample or attack with SGD draw from them)."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # numpy is optional for codeunlearn itself
        pass


def _parameters(function: Callable[..., Any]) -> set[str]:
    return {
        p.name
        for p in inspect.signature(function).parameters.values()
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _check_signature(function: Callable[..., Any], params: dict[str, Any], spec: MetricSpec) -> None:
    signature = inspect.signature(function)
    try:
        signature.bind(None, **params)  # the context is the one positional argument
    except TypeError as err:
        known = sorted(_parameters(function) - {"ctx", "name", "group"})
        raise CodeunlearnError(
            f"metric {spec.name} ({spec.metric}): {err}", f"fix its params; {spec.metric} takes {', '.join(known)}"
        ) from None


def _data_path(value: Any, data_dir: str | Path | None, source: str, spec: MetricSpec, key: str) -> Any:
    """Where a data parameter points: `./x` or `../x` beside the suite file (`source`), other relative paths inside
    --data_dir, absolute paths as they are."""
    if value is None:
        return None
    if isinstance(value, list):
        return [_data_path(v, data_dir, source, spec, key) for v in value]
    if not isinstance(value, str):
        raise CodeunlearnError(f"metric {spec.name}: {key}={value!r} is not a path", f"fix `{key}` in the suite config")
    path = Path(value).expanduser()
    if value.startswith(SUITE_RELATIVE):
        path = Path(source).parent / path
    elif not path.is_absolute():
        if data_dir is None:
            raise CodeunlearnError(
                f"metric {spec.name}: {key}={value} is relative and no data directory was given",
                "pass --data_dir pointing at the shared data folder (e.g. ../shared/data)",
            )
        path = Path(data_dir) / path
    if not path.exists():
        raise CodeunlearnError(
            f"metric {spec.name}: data file not found: {path}",
            "pass --data_dir pointing at the shared data folder, or fix the path in the suite config",
        )
    return str(path)
