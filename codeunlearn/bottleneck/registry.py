"""The one registry of bottleneck kinds, keyed by the `kind` string a config records, in SAELens's style: each kind
is one module class (a `codeunlearn.bottleneck.base.Bottleneck`), one config class (a
`codeunlearn.bottleneck.config.BottleneckConfig`) and, if it is trained here, one `codeunlearn.train.base.Trainer`,
kept together in one folder under `codeunlearn.kinds` and registered once, in `codeunlearn.kinds.__init__` (which
`import codeunlearn` runs).

Code outside `codeunlearn.kinds` never branches on a kind's name: it asks the config (`unit_name`,
`has_activations`, `interventions` ...) or the module (`tally`, `set_edits`, `inference_tensors` ...), or looks the
kind up here, at call time (nothing below `codeunlearn.kinds` needs the registry filled when it is imported).
Adding a kind (a transcoder, say) is one folder under `codeunlearn/kinds/` and one `register_kind` line.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from codeunlearn.errors import CodeunlearnError


class Kind(NamedTuple):
    """What is registered for one kind: (module class, config class, trainer). The classes are typed loosely: this
    module imports no kind, and the config module looks kinds up here.

    Attributes:
        module_class: the kind's `Bottleneck` subclass (one per decoder layer).
        config_class: the kind's `BottleneckConfig` subclass; its `kind` is the registry key.
        trainer: the kind's `Trainer` (`codeunlearn.train.base`), or None for a kind that is only attached.
    """

    module_class: type[Any]
    config_class: type[Any]
    trainer: Any = None


BOTTLENECK_REGISTRY: dict[str, Kind] = {}


def register_kind(module_class: type[Any], config_class: type[Any], trainer: Any = None) -> None:
    """Register a kind under its config class's `kind` string."""
    BOTTLENECK_REGISTRY[config_class.kind] = Kind(module_class, config_class, trainer)


def kind_names() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(BOTTLENECK_REGISTRY)


def get_kind(kind: str) -> Kind:
    """What is registered for a kind, or a one-line error naming the known kinds."""
    if kind not in BOTTLENECK_REGISTRY:
        raise CodeunlearnError(f"unknown bottleneck kind {kind!r}", f"use one of {kind_names()}")
    return BOTTLENECK_REGISTRY[kind]


def module_class_for(kind: str) -> type[Any]:
    return get_kind(kind).module_class


def config_class_for(kind: str) -> type[Any]:
    return get_kind(kind).config_class


def trainer_for(kind: str) -> Any:
    """The kind's `Trainer`, or a one-line error naming the kinds trained here."""
    trainer = get_kind(kind).trainer if kind in BOTTLENECK_REGISTRY else None
    if trainer is None:
        trained = tuple(name for name, entry in BOTTLENECK_REGISTRY.items() if entry.trainer is not None)
        raise CodeunlearnError(f"no trainer for bottleneck kind {kind!r}", f"train one of {trained}")
    return trainer


def all_interventions() -> tuple[str, ...]:
    """Every registered kind's `Edit` interventions, in registration order."""
    return tuple(name for entry in BOTTLENECK_REGISTRY.values() for name in entry.config_class.interventions)
