"""Training a bottleneck into a frozen causal LM.

`train_bottleneck` runs the shared loop (`loop`) over the data stream (`stream`) with `TrainingArguments`
(`arguments`) and checkpoints (`checkpoints`); each kind's steps are its `Trainer` (`base`), kept in the kind's
folder (`codeunlearn.kinds.codebook.trainer`, `codeunlearn.kinds.sae.trainer`) and registered with the kind
(`codeunlearn.bottleneck.registry.trainer_for`)."""

from codeunlearn.bottleneck.registry import trainer_for
from codeunlearn.train.arguments import TrainingArguments
from codeunlearn.train.base import Trainer, TrainingRun
from codeunlearn.train.loop import check_enough_tokens, train_bottleneck
from codeunlearn.train.stream import ChunkStream

__all__ = [
    "ChunkStream",
    "Trainer",
    "TrainingArguments",
    "TrainingRun",
    "check_enough_tokens",
    "train_bottleneck",
    "trainer_for",
]
