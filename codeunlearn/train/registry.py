"""How each bottleneck kind trains, keyed by the same `kind` string as `codeunlearn.bottleneck.registry` (as
SAELens keeps a training-class registry beside its SAE-class registry): `train_bottleneck` runs the shared loop
(data stream, resume, metrics, checkpoints, the final save) and hands the steps to the kind's `Trainer`."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from codeunlearn.errors import CodeunlearnError

if TYPE_CHECKING:
    from codeunlearn.bottleneck.model import BottleneckedModel
    from codeunlearn.train.arguments import TrainingArguments
    from codeunlearn.train.loop import TrainingRun


class Trainer:
    """One kind's training: its step count, its steps, how a checkpoint holds it and how it ends."""

    def total_steps(self, args: TrainingArguments) -> int:
        """Steps of a whole run."""
        raise NotImplementedError

    def init_from(self, bmodel: BottleneckedModel, path: Path, args: TrainingArguments) -> int:
        """Start from the trained bottleneck at `path` (`--init_from`); returns the step the run continues at."""
        raise CodeunlearnError("init_from is for codebook bottlenecks", "drop init_from for an SAE run")

    def train(self, run: TrainingRun, step: int) -> int:
        """Train from `step` to `run.end`, logging and checkpointing through `run`; returns the step reached."""
        raise NotImplementedError

    def save_bottleneck(self, bmodel: BottleneckedModel, path: Path) -> None:
        """Write the exact training state of the bottleneck into a checkpoint's directory `path` (config and
        `bottleneck_state` tensors, which `TrainingRun` loads back on resume)."""
        bmodel.save_pretrained(path, overwrite=True, with_edits=False)

    def finish(self, bmodel: BottleneckedModel) -> None:
        """Turn the trained bottleneck into what its saved directory holds (after the last step)."""


TRAINER_REGISTRY: dict[str, Trainer] = {}


def register_trainer(kind: str, trainer: Trainer) -> None:
    TRAINER_REGISTRY[kind] = trainer


def trainer_for(kind: str) -> Trainer:
    if kind not in TRAINER_REGISTRY:
        raise CodeunlearnError(f"no trainer for bottleneck kind {kind!r}", f"train one of {tuple(TRAINER_REGISTRY)}")
    return TRAINER_REGISTRY[kind]
