"""Speed of an edited bottlenecked model in use against its base model, side by side in one run.

Two measurements on the same prompts, each for the base model (bottleneck disabled) and the edited model:

  prefill  one forward pass over --batch_size x --seq_len prompt tokens (logits of every position, no cache);
  decode   greedy generation of --new_tokens tokens with the KV cache after that prefill (generate; the prefill
           share is subtracted using the prefill timing of the same repeat, so this is the per-token decode cost).

Repeats interleave base and edited runs in a rotated order; medians of --repeats are reported with the ratio
edited / base throughput (1.0 = as fast as the base model). fp32 unless --bf16.

    python benchmarks/inference_speed.py --bottleneck outputs/faithful/bottleneck --edit outputs/forget_micro/edit.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import time
from pathlib import Path

import torch

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.data import load_documents, pack_documents
from codeunlearn.modeling import load_model_and_tokenizer
from codeunlearn.runtime import autocast
from codeunlearn.tables import markdown_table

if __package__:
    from . import common
else:  # run as a file: Python puts the script's own folder first on sys.path
    import common

TEXT = "retain/wikitext2_raw_test.txt"


def prompts(tokenizer, args) -> torch.Tensor:
    docs = load_documents(str(Path(args.data_dir or common.DEFAULT_DATA_DIR) / TEXT))
    chunks = pack_documents(docs[-20:], tokenizer, args.seq_len, args.batch_size * args.seq_len)
    return chunks[: args.batch_size]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bottleneck", required=True, help="bottleneck directory (its saved edits stay active)")
    parser.add_argument("--edit", nargs="*", default=[], help="edit files applied on top")
    parser.add_argument("--data_dir")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--output", help="JSON file for the timings")
    args = parser.parse_args()

    model, tokenizer = load_model_and_tokenizer(args.model)
    bmodel = attach_bottleneck(model, args.bottleneck)
    for path in args.edit:
        bmodel.apply_edit(Edit.load(path))
    ids = prompts(tokenizer, args)
    mask = torch.ones_like(ids)
    codes = sum(e.num_codes for e in bmodel.edits)

    def mode(edited: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if edited else bmodel.disabled()

    def prefill(edited: bool) -> float:
        with torch.no_grad(), autocast("cpu", args.bf16), mode(edited):
            start = time.perf_counter()
            model(input_ids=ids, attention_mask=mask, use_cache=False)
            return time.perf_counter() - start

    def generate(edited: bool) -> float:
        with torch.no_grad(), autocast("cpu", args.bf16), mode(edited):
            start = time.perf_counter()
            out = model.generate(
                ids,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                use_cache=True,
                pad_token_id=tokenizer.pad_token_id,
            )
            assert out.shape[1] == args.seq_len + args.new_tokens
            return time.perf_counter() - start

    prefill(False), prefill(True), generate(False), generate(True)  # warm-up: kernels, caches
    times: dict[str, list[float]] = {k: [] for k in ("prefill base", "prefill edited", "decode base", "decode edited")}
    runs = [("base", False), ("edited", True)]
    for repeat in range(args.repeats):
        for name, edited in runs[repeat % 2 :] + runs[: repeat % 2]:
            p = prefill(edited)
            g = generate(edited)
            times[f"prefill {name}"].append(p)
            # generate runs the prefill once more, then new_tokens - 1 cached decoding steps
            times[f"decode {name}"].append(max(g - p, 1e-9))
        print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()), flush=True)
    median = {k: statistics.median(v) for k, v in times.items()}
    prompt_tokens = ids.numel()
    decoded = args.batch_size * (args.new_tokens - 1)
    result = {
        "machine": f"{common.machine_summary()}; {'bf16' if args.bf16 else 'fp32'}",
        "bottleneck": args.bottleneck,
        "shape": f"{bmodel.config.num_stages} stages x {bmodel.config.num_heads} heads x {bmodel.config.codebook_size}",
        "codes_removed": codes,
        "prefill_tokens_per_s": {
            "base": prompt_tokens / median["prefill base"],
            "edited": prompt_tokens / median["prefill edited"],
        },
        "decode_tokens_per_s": {"base": decoded / median["decode base"], "edited": decoded / median["decode edited"]},
        "seconds": times,
    }
    result["prefill_ratio"] = median["prefill base"] / median["prefill edited"]
    result["decode_ratio"] = median["decode base"] / median["decode edited"]
    print(speed_table(result, args))
    if args.output:
        Path(args.output).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output).write_text(json.dumps(result, indent=1) + "\n")


def speed_table(result: dict, args) -> str:
    """Tokens per second of prefill and decoding, base and edited model, and their ratios."""
    prefill, decode = result["prefill_tokens_per_s"], result["decode_tokens_per_s"]
    header = [
        "model",
        f"prefill tok/s ({args.batch_size} x {args.seq_len})",
        f"decode tok/s ({args.batch_size} x {args.new_tokens - 1} cached steps)",
    ]
    rows = [
        ["base", f"{prefill['base']:,.0f}", f"{decode['base']:,.1f}"],
        [
            f"edited ({result['codes_removed']:,} codes removed)",
            f"{prefill['edited']:,.0f}",
            f"{decode['edited']:,.1f}",
        ],
        ["edited / base", f"{result['prefill_ratio']:.2f}x", f"{result['decode_ratio']:.2f}x"],
    ]
    return markdown_table(header, rows)


if __name__ == "__main__":
    main()
