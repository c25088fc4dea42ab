"""`codeunlearn train`: attach a bottleneck to a frozen model and train it on the train split of corpora.

    codeunlearn train --layers 15 --corpora ../shared/data/demo/retain_wikitext.txt \\
        --key_steps 60 --value_steps 150 --output_dir outputs/run

An SAE instead of a codebook (`--bottleneck sae`, same as `--kind sae`), saved as one sae-lens directory per layer:

    codeunlearn train --bottleneck sae --layers 15 --sae_architecture topk --sae_expansion_factor 8 --sae_k 32 \\
        --corpora ../shared/data/demo/retain_wikitext.txt --sae_steps 2000 --output_dir outputs/sae

Writes OUTPUT/bottleneck (the trained bottleneck), OUTPUT/metrics.jsonl, OUTPUT/checkpoints/ and
OUTPUT/run_args.json (every argument of this run: `codeunlearn train --config OUTPUT/run_args.json --resume`
resumes it).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from codeunlearn.bottlenecked import BottleneckedModel
from codeunlearn.cli.arguments import BottleneckArguments, DataArguments, ModelArguments, parse_arguments, to_flat_dict
from codeunlearn.cli.common import load_base, read_corpora
from codeunlearn.io import atomic_write_text
from codeunlearn.training import TrainingArguments, train_bottleneck

DESCRIPTION = (
    "Train a codebook (or, with --bottleneck sae, an SAE) into chosen decoder layers of a frozen causal LM "
    "(train split of every corpus)."
)
DATACLASSES = (ModelArguments, DataArguments, BottleneckArguments, TrainingArguments)


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn train` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, bottleneck_args, training_args = parse_arguments(
        DATACLASSES, argv, "codeunlearn train", DESCRIPTION
    )
    config = bottleneck_args.to_config()  # validates the shape before anything slow
    corpora = read_corpora(data_args.all_corpora(), data_args)
    model, tokenizer = load_base(model_args, training_args.progress)
    chunks = corpora.pack(tokenizer, "train")
    print(f"training on {len(chunks)} chunks x {chunks.shape[1]} tokens (train split of {', '.join(corpora.sources)})")
    bmodel = BottleneckedModel.attach(model, config)
    output_dir = Path(training_args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Written first, so that an interrupted run can be resumed from it (`--resume`).
    atomic_write_text(
        output_dir / "run_args.json",
        json.dumps(to_flat_dict(model_args, data_args, bottleneck_args, training_args), indent=1) + "\n",
    )
    metrics = train_bottleneck(bmodel, chunks, training_args)
    if metrics:
        last = {k: v for k, v in metrics[-1].items() if not isinstance(v, dict)}
        print("final metrics: " + ", ".join(f"{k}={v}" for k, v in last.items()))
    stop = training_args.stop_after_steps
    total = training_args.steps_for(config.kind)
    if config.kind == "sae":
        shape = f"{config.sae_architecture} SAE, {bmodel.config.sae_width} features"
    else:
        shape = f"{config.codebook_size} codes x {config.num_heads} heads"
    if stop is None or stop >= total:
        print(f"wrote {output_dir / 'bottleneck'} (layers {bmodel.layers}, {shape})")
    else:
        print(f"stopped at step {stop} of {total}; continue with --resume")
    return 0
