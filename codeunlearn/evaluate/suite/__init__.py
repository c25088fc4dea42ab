"""The evaluation suite behind `codeunlearn eval --suite`: named metric configs run on any model, written as
report.json / report.md / PNG figures, and one-row-per-model tables of several reports.

One job per module:

- `registry`: metric name -> `"module:function"` (imported only when a suite runs).
- `config`: `SuiteConfig` / `MetricSpec` loaded and validated from YAML; the named configs ship in `configs/`.
- `text_loss`: `heldout_loss`, next-token loss on a corpus's held-out documents (the same split as `stats`).
- `models`: `load_model_for_eval` for a base model, a bottleneck directory, an export or any HF model directory,
  with the base model that fluency is measured under.
- `runner`: `run_suite(ctx, config, data_dir, attacks, fast)` -> `SuiteReport`, seeded and timed per metric.
- `parallel`: `run_suites`, the same runs with their metrics dealt across the processes of a launch.
- `report`: `write_report` (report.json, report.md, details/, plots/), `load_report`, `combine_reports`.
- `plots`: matplotlib figures (a bar chart per section, the forget-vs-retain trade-off scatter).

    from codeunlearn.evaluate.metrics.base import EvalContext
    from codeunlearn.evaluate.suite import load_model_for_eval, load_suite_config, run_suite, write_report

    loaded = load_model_for_eval("outputs/demo/edited")
    ctx = EvalContext(loaded.model, loaded.tokenizer, reference_model=loaded.reference)
    report = run_suite(ctx, load_suite_config("harry_potter"), "../shared/data", fast=True,
                       description=loaded.description)
    write_report(report, "outputs/eval/hp")

Names are imported lazily, so `import codeunlearn.evaluate.suite` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "METRICS": "codeunlearn.evaluate.suite.registry",
    "GROUPS": "codeunlearn.evaluate.suite.registry",
    "resolve_metric": "codeunlearn.evaluate.suite.registry",
    "MetricSpec": "codeunlearn.evaluate.suite.config",
    "SuiteConfig": "codeunlearn.evaluate.suite.config",
    "load_suite_config": "codeunlearn.evaluate.suite.config",
    "named_configs": "codeunlearn.evaluate.suite.config",
    "heldout_loss": "codeunlearn.evaluate.suite.text_loss",
    "EvalModel": "codeunlearn.evaluate.suite.models",
    "BaseModelView": "codeunlearn.evaluate.suite.models",
    "load_model_for_eval": "codeunlearn.evaluate.suite.models",
    "base_model_run": "codeunlearn.evaluate.suite.models",
    "SuiteReport": "codeunlearn.evaluate.suite.runner",
    "plan_suite": "codeunlearn.evaluate.suite.runner",
    "run_suite": "codeunlearn.evaluate.suite.runner",
    "SuiteModel": "codeunlearn.evaluate.suite.parallel",
    "run_suites": "codeunlearn.evaluate.suite.parallel",
    "write_report": "codeunlearn.evaluate.suite.report",
    "load_report": "codeunlearn.evaluate.suite.report",
    "combine_reports": "codeunlearn.evaluate.suite.report",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'codeunlearn.evaluate.suite' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
