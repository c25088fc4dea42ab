"""`codeunlearn train`: attach a bottleneck to a frozen model and train it on the train split of general text.

    codeunlearn train --layers 15 --corpora ../shared/data/retain/openstax_us_history.jsonl \\
        ../shared/data/retain/wikitext2_raw_test.txt --output_dir outputs/run

With no other flags this is the faithful recipe (`configs/faithful_smollm2.yaml`): 8 residual stages x 8 heads x
4,096 codes whose keys are fitted by k-means on the states of 65,536 tokens. The bottleneck is trained on general
text only (`--corpora` and `--retain_corpora`), never on a topic it will be asked to forget: `--forget_corpora` is
refused here (statistics and selection read the topic later).

An SAE instead of a codebook (`--bottleneck sae`, same as `--kind sae`), saved as one sae-lens directory per layer:

    codeunlearn train --bottleneck sae --layers 15 --sae_architecture topk --sae_expansion_factor 8 --sae_k 32 \\
        --corpora ../shared/data/demo/retain_wikitext.txt --sae_steps 2000 --output_dir outputs/sae

Writes OUTPUT/bottleneck (the trained bottleneck), OUTPUT/metrics.jsonl, OUTPUT/checkpoints/ and
OUTPUT/run_args.json (every argument of this run: `codeunlearn train --config OUTPUT/run_args.json --resume`
resumes it), and last OUTPUT/training_curves.png and .svg, drawn from metrics.jsonl: the loss, FVU, (SAE) L0,
codes used in each step's batch and dead codes or features over the logged steps
(`codeunlearn.figures.training_curves_from_file` redraws them from any metrics.jsonl).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codeunlearn import distributed, figures
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.cli.arguments import BottleneckArguments, parse_arguments, to_flat_dict
from codeunlearn.data import DataArguments, corpus_fingerprint, read_corpora
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_write_text
from codeunlearn.modeling import ModelArguments
from codeunlearn.train import TrainingArguments, check_enough_tokens, train_bottleneck, trainer_for
from codeunlearn.unlearn.statistics import collect_code_statistics
from codeunlearn.unlearn.statistics_cache import save_retain_statistics

DESCRIPTION = (
    "Train a codebook (or, with --bottleneck sae, an SAE) into chosen decoder layers of a frozen causal LM "
    "(train split of every corpus)."
)


@dataclass
class RetainStatisticsArguments:
    """The retain side of every later edit, counted once when the bottleneck is trained."""

    retain_statistics_tokens: int = field(
        default=32768,
        metadata={
            "help": "Tokens per training corpus (train split) whose code firings are counted after training and kept "
            "in the bottleneck directory as its retain statistics (0: none; `forget` then needs --retain_corpora)."
        },
    )


DATACLASSES = (ModelArguments, DataArguments, BottleneckArguments, TrainingArguments, RetainStatisticsArguments)


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn train` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, bottleneck_args, training_args, retain_args = parse_arguments(
        DATACLASSES, argv, "codeunlearn train", DESCRIPTION
    )
    if retain_args.retain_statistics_tokens < 0:
        raise CodeunlearnError(
            f"retain_statistics_tokens={retain_args.retain_statistics_tokens}", "use 0 (none) or a token count"
        )
    config = bottleneck_args.to_config()  # validates the shape before anything slow
    if data_args.forget_corpora:
        raise CodeunlearnError(
            "train fits the bottleneck on general text only, but --forget_corpora was given",
            "pass general text with --corpora (or --retain_corpora); the topic is read later by stats/forget",
        )
    corpora = read_corpora(list(dict.fromkeys([*data_args.corpora, *data_args.retain_corpora])), data_args)
    model, tokenizer = model_args.load(training_args.progress)
    chunks = corpora.pack(tokenizer, "train")
    bmodel = BottleneckedModel.attach(model, config)  # checks the layers and the shape against the model
    check_enough_tokens(chunks, training_args)
    print(f"training on {len(chunks)} chunks x {chunks.shape[1]} tokens (train split of {', '.join(corpora.sources)})")
    if distributed.world_size() > 1:
        world, size = distributed.world_size(), training_args.batch_size
        print(f"data-parallel: {world} processes x batch_size {size} = {world * size} chunks per step")
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    if distributed.is_main_process() and not training_args.resume:  # written first: what `--resume` reads back
        atomic_write_text(
            output_dir / "run_args.json",
            json.dumps(to_flat_dict(model_args, data_args, bottleneck_args, training_args, retain_args), indent=1)
            + "\n",
        )
    metrics = train_bottleneck(bmodel, chunks, training_args)
    if metrics:
        last = {k: v for k, v in metrics[-1].items() if not isinstance(v, dict)}
        print("final metrics: " + ", ".join(f"{k}={v}" for k, v in last.items()))
    stop = training_args.stop_after_steps
    total = trainer_for(config.kind).total_steps(training_args)
    if stop is None or stop >= total:
        print(f"wrote {output_dir / 'bottleneck'} (layers {bmodel.layers}, {bmodel.config.describe()})")
        if retain_args.retain_statistics_tokens:
            cap = min(
                retain_args.retain_statistics_tokens, data_args.max_tokens or retain_args.retain_statistics_tokens
            )
            stats_chunks = corpora.pack(tokenizer, "train", cap)
            stats = collect_code_statistics(
                bmodel,
                stats_chunks,
                training_args.batch_size,
                corpus=corpora.name,
                progress=training_args.progress,
                bf16=training_args.bf16,
            )
            stats.corpus_fingerprint = corpus_fingerprint(stats_chunks)
            if distributed.is_main_process():
                path = save_retain_statistics(stats, output_dir / "bottleneck")
                print(f"retain statistics on {stats_chunks.numel():,} tokens: {path}")
    else:
        print(f"stopped at step {stop} of {total}; continue with --resume")
    metrics_path = output_dir / "metrics.jsonl"
    if distributed.is_main_process() and metrics_path.is_file():  # after every result: a drawing error is a note
        drawn = figures.draw_or_note("training curves", figures.training_curves_from_file, metrics_path)
        if drawn is not None:
            print(f"wrote {output_dir / figures.TRAINING_CURVES_NAME}.png and .svg ({', '.join(drawn['panels'])})")
    return 0
