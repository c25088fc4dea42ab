"""Fidelity sweep: train bottleneck variants on a frozen model (default SmolLM2-135M), measure what each costs.

Prints one row per variant: bits/token, FVU on ordinary tokens and on all tokens, the held-out next-token loss
increase (nat/token) over the base model on every evaluated corpus, and the training seconds. Variants train on the
train split of `--train_corpora` only (default: the general text, U.S. history and WikiText), so the topic corpora
(microbiology, cyber, Harry Potter) measure the cost on text the bottleneck never saw.

    python benchmarks/fidelity_sweep.py --data_dir ../shared/data --variants '[{"name": "faithful", "layers": [15]}]'
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from codeunlearn.bottleneck.config import BottleneckConfig
from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import load_split, shuffled_chunks
from codeunlearn.evaluate.evaluation import bottleneck_fidelity, mean_loss
from codeunlearn.modeling import load_model_and_tokenizer
from codeunlearn.train import TrainingArguments, train_bottleneck

CORPORA = {
    "history": "retain/openstax_us_history.jsonl",
    "wiki": "retain/wikitext2_raw_test.txt",
    "micro": "topics/biology/corpus_openstax_microbiology.jsonl",
    "cyber": "topics/cyber/corpus_owasp_wstg.jsonl",
    "hp": "topics/harry_potter/corpus_wikipedia_plot_summaries.txt",
}
GENERAL = ("history", "wiki")
CONFIG_KEYS = {
    "layers",
    "site",
    "num_heads",
    "codebook_size",
    "num_stages",
    "massive_norm_factor",
    "ema_decay",
    "dead_code_threshold",
    "adapter_rank",
    "kmeans_iters",
}


def load_corpora(
    data_dir: str, tokenizer, seq_len: int, train_tokens: int, eval_tokens: int, train_names: list[str]
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The shuffled training mix of the train corpora's train splits, and `eval_tokens` held-out tokens per corpus."""
    train_parts, heldout = [], {}
    for name, rel in CORPORA.items():
        train, held = load_split(str(Path(data_dir) / rel), tokenizer, seq_len, 0.2, seed=0, max_tokens=train_tokens)
        if name in train_names:
            train_parts.append(train)
        heldout[name] = held[: max(1, eval_tokens // seq_len)]
    return shuffled_chunks(train_parts, seed=0), heldout


def base_losses(model, heldout: dict[str, torch.Tensor], output_dir: str, eval_tokens: int) -> dict[str, float]:
    """Base-model held-out losses, cached in output_dir (they depend only on the data and eval_tokens)."""
    base_file = Path(output_dir) / f"base_ce_{eval_tokens}_{'_'.join(heldout)}.json"
    if base_file.is_file():
        return json.loads(base_file.read_text())
    base = {name: mean_loss(model, chunks, skip_positions=1) for name, chunks in heldout.items()}
    base_file.parent.mkdir(parents=True, exist_ok=True)
    base_file.write_text(json.dumps(base))
    return base


def measure(bmodel: BottleneckedModel, heldout: dict[str, torch.Tensor], base: dict[str, float]) -> dict:
    """FVU on held-out history and the held-out loss increase over the base model on every corpus."""
    fid = bottleneck_fidelity(bmodel, heldout["history"])
    losses = {name: mean_loss(bmodel, chunks, skip_positions=1) for name, chunks in heldout.items()}
    return {
        "bits_per_token": bmodel.config.bits_per_token,
        "fvu_ordinary": round(sum(f.fvu_ordinary for f in fid) / len(fid), 4),
        "fvu_all": round(sum(f.fvu_all for f in fid) / len(fid), 4),
        "delta_ce": {name: round(losses[name] - base[name], 4) for name in heldout},
        "relative_delta_ce": {name: round((losses[name] - base[name]) / base[name], 4) for name in heldout},
        "base_ce": {name: round(base[name], 4) for name in heldout},
        "heldout_tokens": {name: chunks.numel() for name, chunks in heldout.items()},
    }


def append_result(path: str, row: dict) -> None:
    print(json.dumps(row), flush=True)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        handle.write(json.dumps(row) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--model", default="smollm2-135m", help="base model (name, directory or .gguf)")
    parser.add_argument(
        "--variants", required=True, help="JSON list of {name, BottleneckConfig and TrainingArguments fields}"
    )
    parser.add_argument(
        "--train_corpora", nargs="+", choices=sorted(CORPORA), default=list(GENERAL), help="Corpora trained on."
    )
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--train_tokens_per_corpus", type=int, default=200_000)
    parser.add_argument("--eval_tokens", type=int, default=16_384)
    parser.add_argument("--output_dir", default="outputs/fidelity_sweep")
    parser.add_argument("--results", default="outputs/fidelity_sweep/results.jsonl")
    args = parser.parse_args()
    torch.manual_seed(0)

    started = time.time()
    model, tokenizer = load_model_and_tokenizer(args.model)
    train_chunks, heldout = load_corpora(
        args.data_dir, tokenizer, args.seq_len, args.train_tokens_per_corpus, args.eval_tokens, args.train_corpora
    )
    print(f"loaded in {time.time() - started:.0f}s; train chunks {len(train_chunks)}", flush=True)
    base = base_losses(model, heldout, args.output_dir, args.eval_tokens)
    print("base CE", base, flush=True)
    for variant in json.loads(args.variants):
        variant = dict(variant)
        name = variant.pop("name")
        parent = variant.pop("continue_from", None)
        trained = variant.pop("load", None)
        if trained:  # measure a bottleneck trained elsewhere (e.g. by `codeunlearn train`) on the same held-out text
            bmodel = attach_bottleneck(model, trained)
            bmodel.clear_edits()
            row = {"name": name, "config": {"load": trained}, **measure(bmodel, heldout, base)}
            append_result(args.results, row)
            bmodel.detach()
            continue
        if parent:
            # Reuse a finished key phase: copy its checkpoints and resume into the value phase.
            shutil.copytree(f"{args.output_dir}/{parent}/checkpoints", f"{args.output_dir}/{name}/checkpoints")
            variant["resume"] = True
        config = BottleneckConfig.from_dict({k: v for k, v in variant.items() if k in CONFIG_KEYS})
        targs = TrainingArguments(
            output_dir=f"{args.output_dir}/{name}", **{k: v for k, v in variant.items() if k not in CONFIG_KEYS}
        )
        bmodel = BottleneckedModel.attach(model, config)
        t0 = time.time()
        train_bottleneck(bmodel, train_chunks, targs)
        train_s = time.time() - t0
        row = {
            "name": name,
            "config": variant,
            "train_corpora": args.train_corpora,
            **measure(bmodel, heldout, base),
            "train_seconds": round(train_s, 1),
        }
        append_result(args.results, row)
        bmodel.detach()


if __name__ == "__main__":
    main()
