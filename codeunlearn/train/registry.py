"""How each bottleneck kind trains, keyed by the same `kind` string as `codeunlearn.bottleneck.registry` (as
SAELens keeps a training-class registry beside its SAE-class registry): `train_bottleneck` runs the shared loop
(data stream, resume, metrics, checkpoints, the final save) and hands the steps to the kind's `Trainer`
(`codeunlearn.train.base`), registered in `codeunlearn.train.__init__`."""

from __future__ import annotations

from codeunlearn.errors import CodeunlearnError
from codeunlearn.train.base import Trainer

TRAINER_REGISTRY: dict[str, Trainer] = {}


def register_trainer(kind: str, trainer: Trainer) -> None:
    TRAINER_REGISTRY[kind] = trainer


def trainer_for(kind: str) -> Trainer:
    if kind not in TRAINER_REGISTRY:
        raise CodeunlearnError(f"no trainer for bottleneck kind {kind!r}", f"train one of {tuple(TRAINER_REGISTRY)}")
    return TRAINER_REGISTRY[kind]
