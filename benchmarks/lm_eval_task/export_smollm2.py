"""Make two lm-eval-ready directories from the shipped SmolLM2-135M: the stock base model and an exported edited one.

    python benchmarks/lm_eval_task/export_smollm2.py --out outputs/smollm2-lm-eval

writes OUT/base (stock LlamaForCausalLM) and OUT/edited (`codeunlearn export` format: model_type codeunlearn, loads
with trust_remote_code). The bottleneck is deliberately tiny (layer 15, 8 heads x 64 codes, a few k-means/EMA key
steps on this folder's 16 sentences, no value training) and the edit removes the codes enriched on forget.jsonl vs
retain.jsonl: it shows that lm-eval evaluates the exported model, not what a well-trained bottleneck forgets.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import pack_documents
from codeunlearn.export.save import save_pretrained
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.modeling import load_model_and_tokenizer
from codeunlearn.train import TrainingArguments, train_bottleneck
from codeunlearn.unlearn.selection import SelectionRule, select_codes
from codeunlearn.unlearn.statistics import collect_code_statistics

HERE = Path(__file__).resolve().parent


def documents(name: str) -> list[str]:
    return [json.loads(line)["text"] for line in (HERE / f"{name}.jsonl").read_text().splitlines() if line.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--num_codes", type=int, default=48)
    args = parser.parse_args()
    start = time.perf_counter()
    model, tokenizer = load_model_and_tokenizer("smollm2-135m")
    model.save_pretrained(args.out / "base")
    tokenizer.save_pretrained(args.out / "base")
    forget = pack_documents(documents("forget"), tokenizer, seq_len=16)
    retain = pack_documents(documents("retain"), tokenizer, seq_len=16)
    bmodel = BottleneckedModel.attach(model, CodebookConfig(layers=[15], num_heads=8, codebook_size=64))
    train_args = TrainingArguments(
        output_dir=str(args.out / "train"),
        overwrite=True,  # a re-run rebuilds every file under --out, as the export below does
        key_steps=3,
        value_steps=0,
        batch_size=4,
        kmeans_init_tokens=256,
        progress=False,
        bf16=False,
    )
    train_bottleneck(bmodel, torch.cat([forget, retain]), train_args)
    stats = [
        collect_code_statistics(bmodel, chunks, 4, name, progress=False)
        for name, chunks in [("forget", forget), ("retain", retain)]
    ]
    edit = select_codes(*stats, SelectionRule(num_codes=args.num_codes, min_forget_count=1), "wizard_school")
    bmodel.apply_edit(edit)
    result = save_pretrained(bmodel, args.out / "edited", tokenizer, overwrite=True)
    print(f"edit: {edit.num_codes} codes; export verified (max |logit difference| {result.max_abs_difference:.2e})")
    print(f"wrote {args.out / 'base'} and {args.out / 'edited'} in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
