"""Training a bottleneck into a frozen causal LM.

`train_bottleneck` runs the shared loop (`loop`) over the data stream (`stream`) with `TrainingArguments`
(`arguments`) and checkpoints (`checkpoints`); each kind's steps are its `Trainer` (`base`), registered here by kind
string (`registry`): `codebook` (k-means keys, EMA steps, value training), `sae` (sae-lens training passes)."""

from codeunlearn.bottleneck.config import CodebookConfig, SAEConfig
from codeunlearn.train.arguments import TrainingArguments
from codeunlearn.train.base import Trainer, TrainingRun
from codeunlearn.train.codebook import CodebookTrainer
from codeunlearn.train.loop import check_enough_tokens, train_bottleneck
from codeunlearn.train.registry import register_trainer, trainer_for
from codeunlearn.train.sae import SAETrainer
from codeunlearn.train.stream import ChunkStream

register_trainer(CodebookConfig.kind, CodebookTrainer())
register_trainer(SAEConfig.kind, SAETrainer())

__all__ = [
    "ChunkStream",
    "Trainer",
    "TrainingArguments",
    "TrainingRun",
    "check_enough_tokens",
    "register_trainer",
    "train_bottleneck",
    "trainer_for",
]
