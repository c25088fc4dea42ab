"""Gradient unlearning baselines, run on the same data and measured the same way as bottleneck edits.

One module per method, each with its config dataclass (the paper's hyperparameters scaled to SmolLM2-135M):

    ga         gradient ascent on the forget NLL                           (Jang et al. 2023; TOFU)
    grad_diff  forget ascent + retain descent                              (Liu et al. 2022; TOFU)
    npo        Negative Preference Optimization, optional retain term      (Zhang et al. 2024)
    rmu        Representation Misdirection for Unlearning                  (Li et al. 2024, WMDP)

plus the shared loop (`trainer.train_baseline`) and the relearning attack (`relearn.relearn`).

    from codeunlearn.baselines import make_method, BaselineTrainingArguments, train_baseline
    method = make_method("npo", beta=0.1, retain_weight=1.0)
    result = train_baseline(model, method, forget_chunks, retain_chunks, BaselineTrainingArguments("out/npo"))
"""

from __future__ import annotations

from typing import Any

from codeunlearn.baselines.base import MethodConfig, UnlearningMethod
from codeunlearn.baselines.ga import GAConfig, GradientAscent
from codeunlearn.baselines.grad_diff import GradDiff, GradDiffConfig
from codeunlearn.baselines.npo import NPO, NPOConfig
from codeunlearn.baselines.rmu import RMU, RMUConfig
from codeunlearn.baselines.trainer import BaselineResult, BaselineTrainingArguments, train_baseline
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.attacks.relearn import RelearnConfig, RelearnCurve, relearn

METHODS: dict[str, type[UnlearningMethod]] = {cls.name: cls for cls in (GradientAscent, GradDiff, NPO, RMU)}


def method_class(name: str) -> type[UnlearningMethod]:
    """The method registered under `name` (ga, grad_diff, npo, rmu)."""
    if name not in METHODS:
        raise CodeunlearnError(f"unknown baseline method {name!r}", f"use one of {', '.join(METHODS)}")
    return METHODS[name]


def make_method(name: str, **overrides: Any) -> UnlearningMethod:
    """A method with its default config, fields in `overrides` replaced (validated by the config)."""
    cls = method_class(name)
    try:
        config = cls.config_class(**overrides)
    except TypeError as err:  # an unknown field name
        raise CodeunlearnError(f"{name}: {err}", f"use fields of {cls.config_class.__name__}") from None
    return cls(config)


__all__ = [
    "METHODS",
    "NPO",
    "RMU",
    "BaselineResult",
    "BaselineTrainingArguments",
    "GAConfig",
    "GradDiff",
    "GradDiffConfig",
    "GradientAscent",
    "MethodConfig",
    "NPOConfig",
    "RMUConfig",
    "RelearnConfig",
    "RelearnCurve",
    "UnlearningMethod",
    "make_method",
    "method_class",
    "relearn",
    "train_baseline",
]
