"""`codeunlearn relearn`: the relearning attack on an unlearned model, as a recovery curve.

    codeunlearn relearn --model_name_or_path outputs/baselines/npo/model \\
        --forget_corpora ../shared/data/topics/biology/corpus_openstax_microbiology.jsonl \\
        --retain_corpora ../shared/data/retain/wikitext2_raw_test.txt --steps 50 --eval_steps 0 10 25 50 \\
        --output_dir outputs/relearn/npo
    codeunlearn relearn --bottleneck_dir outputs/run/edited --forget_corpora ... --mode lora --output_dir ...

The model is a base model or a baseline's OUTPUT/model (`--model_name_or_path`), with an edited bottleneck on top when
`--bottleneck_dir` is given (the bottleneck itself is never trained). It is fine-tuned (all weights, or LoRA adapters
with `--mode lora`) on at most `--relearn_tokens` tokens of the forget corpus's TRAIN split (default: what the steps
consume, so no chunk is seen twice), and the forget loss is
measured on its HELD-OUT split (different documents; same --heldout_fraction / --split_seed as every command) at
each of `--eval_steps`, with the held-out retain loss when --retain_corpora are given. Writes OUTPUT/relearn.json and
OUTPUT/relearn.md.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from codeunlearn.bottleneck.loading import load_bottlenecked
from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.cli.common import check_output_file, check_skip_positions
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.errors import check_range
from codeunlearn.evaluate.attacks.relearn import RelearnConfig, relearn
from codeunlearn.io import atomic_write_text
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import run_arguments

DESCRIPTION = (
    "Relearning attack: fine-tune a (baseline-unlearned or bottleneck-edited) model on a slice of forget text and "
    "measure the held-out forget loss as it recovers."
)
RESULT_NAME = "relearn.json"


RelearnOutputArguments = run_arguments("output_dir", "overwrite", writes=f"{RESULT_NAME} and relearn.md")


@dataclass
class RelearnRunArguments:
    """What is attacked, with how much text, and where the curve goes."""

    bottleneck_dir: str | None = field(
        default=None, metadata={"help": "An (edited) bottleneck directory to load on top of the model."}
    )
    relearn_tokens: int | None = field(
        default=None,
        metadata={
            "help": "Tokens of the forget train split the attacker fine-tunes on (default: steps x batch_size x "
            "seq_len, fresh text at every step; a smaller slice is cycled)."
        },
    )

    def __post_init__(self) -> None:
        if self.relearn_tokens is not None:  # fewer than one chunk's worth still gives one chunk
            check_range("relearn_tokens", self.relearn_tokens, self.relearn_tokens >= 1, ">= 1, or leave it out")


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn relearn` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, run_args, outputs, config = parse_arguments(
        (ModelArguments, DataArguments, RelearnRunArguments, RelearnOutputArguments, RelearnConfig),
        argv,
        "codeunlearn relearn",
        DESCRIPTION,
    )
    check_skip_positions(config.skip_positions, data_args.seq_len)
    output_dir = Path(outputs.output_dir)
    for name in (RESULT_NAME, "relearn.md"):
        check_output_file(output_dir / name, outputs.overwrite)
    forget_corpora = read_corpora(data_args.forget_corpora, data_args, "forget_corpora")
    retain_corpora = (
        read_corpora(data_args.retain_corpora, data_args, "retain_corpora") if data_args.retain_corpora else None
    )
    if run_args.bottleneck_dir is not None:
        model, tokenizer = load_bottlenecked(run_args.bottleneck_dir, model_args, config.progress)
    else:
        model, tokenizer = model_args.load(config.progress)
    relearn_tokens = run_args.relearn_tokens
    if relearn_tokens is None:
        relearn_tokens = config.steps * config.batch_size * data_args.seq_len
    relearn_chunks = forget_corpora.pack(tokenizer, "train", max_tokens=relearn_tokens)
    forget_heldout = forget_corpora.pack(tokenizer, "heldout")
    retain_heldout = retain_corpora.pack(tokenizer, "heldout") if retain_corpora is not None else None
    print(
        f"relearning ({config.mode}) on {relearn_chunks.numel():,} forget-train tokens for {config.steps} steps; "
        f"held-out forget {forget_heldout.numel():,} tokens"
    )
    curve = relearn(model, relearn_chunks, forget_heldout, config, retain_chunks=retain_heldout, in_place=True)
    target = model_args.model_name_or_path + (f" + {run_args.bottleneck_dir}" if run_args.bottleneck_dir else "")
    report = {
        "model": target,
        "forget_corpora": forget_corpora.sources,
        "retain_corpora": [] if retain_corpora is None else retain_corpora.sources,
        "data": asdict(data_args),
        "curve": curve.to_dict(),
    }
    markdown = "\n\n".join(
        [
            "# codeunlearn relearn",
            f"`{target}`: {config.mode} fine-tuning ({curve.trainable_parameters:,} parameters) on "
            f"{curve.slice_tokens:,} tokens of the forget train split, {curve.train_seconds:.1f} s of training. "
            f"Held-out tokens: forget {forget_heldout.numel():,}"
            + ("" if retain_heldout is None else f", retain {retain_heldout.numel():,}")
            + f" (split_seed {data_args.split_seed}, heldout_fraction {data_args.heldout_fraction}).",
            curve.markdown(),
            "Losses: mean next-token cross-entropy (nat/token) on held-out documents. Recovered: forget-loss drop "
            "since step 0.",
        ]
    )
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / RESULT_NAME, json.dumps(report, indent=1) + "\n")
    atomic_write_text(output_dir / "relearn.md", markdown + "\n")
    print(curve.markdown())
    print(f"wrote {output_dir / RESULT_NAME} and {output_dir / 'relearn.md'}")
    return 0
