"""The bottleneck kinds, keyed by the `kind` string a config records, in SAELens's style: each kind is one module
class (a `codeunlearn.bottleneck.base.Bottleneck`) and one config class (a
`codeunlearn.bottleneck.config.BottleneckConfig`), registered once in `codeunlearn.bottleneck.__init__`.

Code above this folder never branches on a kind's name: it asks the config (`unit_name`, `has_activations`,
`interventions` ...) or the module (`tally`, `set_edits`, `inference_tensors` ...), or looks the kind up here.
Adding a kind (a transcoder, say) is a module and a config class in this folder and one `register_kind` line.
"""

from __future__ import annotations

from typing import Any

from codeunlearn.errors import CodeunlearnError

# This module imports no kind (the config module looks kinds up here), so the classes are typed loosely:
# (a `Bottleneck` subclass, a `BottleneckConfig` subclass).
KindClasses = tuple[type[Any], type[Any]]
BOTTLENECK_REGISTRY: dict[str, KindClasses] = {}


def register_kind(module_class: type[Any], config_class: type[Any]) -> None:
    """Register a kind under its config class's `kind` string."""
    BOTTLENECK_REGISTRY[config_class.kind] = (module_class, config_class)


def kind_names() -> tuple[str, ...]:
    """The registered kinds, in registration order."""
    return tuple(BOTTLENECK_REGISTRY)


def get_kind(kind: str) -> KindClasses:
    """(module class, config class) of a kind, or a one-line error naming the known kinds."""
    if kind not in BOTTLENECK_REGISTRY:
        raise CodeunlearnError(f"unknown bottleneck kind {kind!r}", f"use one of {kind_names()}")
    return BOTTLENECK_REGISTRY[kind]


def module_class_for(kind: str) -> type[Any]:
    return get_kind(kind)[0]


def config_class_for(kind: str) -> type[Any]:
    return get_kind(kind)[1]


def all_interventions() -> tuple[str, ...]:
    """Every registered kind's `Edit` interventions, in registration order."""
    return tuple(name for _, config_class in BOTTLENECK_REGISTRY.values() for name in config_class.interventions)
