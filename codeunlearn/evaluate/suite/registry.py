"""Metric names an evaluation config may use, and the functions behind them (imported only when a suite runs).

Every metric is `fn(ctx: EvalContext, **params) -> MetricResult` (`codeunlearn.evaluate.metrics.base`). The table maps a
config's `metric:` name to `"module:function"`; modules are imported lazily, so loading and validating a config
never imports torch-heavy metric code, and a metric module that fails to import only fails the suites that use it.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from codeunlearn.errors import CodeunlearnError

METRICS: dict[str, str] = {
    # text loss on held-out documents (this package)
    "heldout_loss": "codeunlearn.evaluate.suite.text_loss:heldout_loss",
    # probes scored by log-likelihood
    "multiple_choice": "codeunlearn.evaluate.metrics.choice:multiple_choice",
    "lettered_choice": "codeunlearn.evaluate.metrics.choice:lettered_choice",
    "mmlu": "codeunlearn.evaluate.metrics.choice:mmlu",
    "arc_easy": "codeunlearn.evaluate.metrics.choice:arc_easy",
    "fact_cloze": "codeunlearn.evaluate.metrics.cloze:fact_cloze",
    "sports_cloze": "codeunlearn.evaluate.metrics.cloze:sports_cloze",
    "short_answer": "codeunlearn.evaluate.metrics.qa:short_answer",
    # generation
    "familiarity": "codeunlearn.evaluate.metrics.familiarity:familiarity",
    "fluency": "codeunlearn.evaluate.metrics.fluency:fluency",
    # robustness attacks (`eval --attacks`)
    "rephrased_facts": "codeunlearn.evaluate.attacks.rephrase:rephrased_facts",
    "padding_attack": "codeunlearn.evaluate.attacks.padding:padding_attack",
    "latent_probe": "codeunlearn.evaluate.attacks.latent_probe:latent_probe",
    "relearning_attack": "codeunlearn.evaluate.attacks.relearning:relearning_attack",
    # attacks with the released weights: the edit switched off, the weights quantized
    "bypass_attack": "codeunlearn.evaluate.attacks.bypass:bypass_attack",
    "quantization_attack": "codeunlearn.evaluate.attacks.quantization:quantization_attack",
}

# Report sections, in the order the report shows them.
GROUPS: tuple[str, ...] = ("forget", "retain", "general", "fluency", "attack")


def check_metric_name(name: str, where: str = "evaluation config") -> None:
    """One-line error for a metric name that is not registered."""
    if name not in METRICS:
        raise CodeunlearnError(f"{where}: unknown metric {name!r}", f"use one of {', '.join(sorted(METRICS))}")


def resolve_metric(name: str) -> Callable[..., Any]:
    """The function registered as `name` (imports its module now)."""
    check_metric_name(name)
    module_name, _, function_name = METRICS[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise CodeunlearnError(
            f"metric {name!r} lives in {module_name}, which does not import ({err})",
            "install codeunlearn with its dependencies, or drop the metric from the evaluation config",
        ) from None
    function = getattr(module, function_name, None)
    if not callable(function):
        raise CodeunlearnError(
            f"metric {name!r}: {module_name} has no function {function_name}",
            "update codeunlearn or drop the metric from the evaluation config",
        )
    return function
