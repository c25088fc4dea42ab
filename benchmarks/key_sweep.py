"""Keys-only fidelity by layer, site and codebook shape, on cached activations.

The key phase of training needs only the states at the bottleneck position, so this script runs the truncated
forward over the training chunks once, caches the states of every (layer, site) the variants ask for, and then fits
each variant's keys from the cache with exactly the schedule of `train_bottleneck`'s key phase (a k-means batch of
`kmeans_init_tokens`, then `key_steps` EMA steps of `batch_size` chunks, same seeded chunk order). Each variant is then
measured like `fidelity_sweep.py` (FVU on held-out history; held-out loss increase on history, WikiText and
microbiology) and appended to the same results file. Use it to compare layers, `residual` vs `block_output` and
codebook shapes at the cost of one truncated pass instead of one per variant.

    python benchmarks/key_sweep.py --data_dir ../shared/data --variants \\
        '[{"name": "l15_block_s4", "layers": [15], "site": "block_output", "num_stages": 4}]'
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import time
from pathlib import Path

import torch
from fidelity_sweep import CONFIG_KEYS, append_result, base_losses, load_corpora, measure
from tqdm.auto import tqdm

from codeunlearn.architectures import decoder_layers
from codeunlearn.bottlenecked import BottleneckedModel
from codeunlearn.config import BottleneckConfig
from codeunlearn.modeling import load_model_and_tokenizer
from codeunlearn.training import ChunkStream

SCHEDULE_KEYS = {"key_steps": 100, "batch_size": 8, "kmeans_init_tokens": 16384}


class _StopAfterLayer(Exception):
    pass


def key_schedule(num_chunks: int, seq_len: int, key_steps: int, batch_size: int, kmeans_init_tokens: int):
    """Chunk indices of each key step, as `train_bottleneck` draws them (seed 0)."""
    stream = ChunkStream(torch.arange(num_chunks), seed=0)
    steps = []
    for step in range(key_steps):
        count = max(batch_size, math.ceil(kmeans_init_tokens / seq_len)) if step == 0 else batch_size
        steps.append(stream.take(count))
        stream.advance(count)
    return steps


@torch.no_grad()
def cache_states(model, chunks: torch.Tensor, wanted: set[tuple[int, str]], batch_size: int) -> dict:
    """States (num_chunks, seq_len, hidden) at each wanted (layer, site), from forwards that stop at the deepest."""
    layers = decoder_layers(model)
    deepest = max(layer for layer, _ in wanted)
    cache: dict[tuple[int, str], list[torch.Tensor]] = {key: [] for key in wanted}

    def hook(index: int):
        def record(module, args, kwargs, output):
            h_in = args[0] if args else kwargs["hidden_states"]
            h_out = output[0] if isinstance(output, tuple) else output
            if (index, "residual") in cache:
                cache[(index, "residual")].append(h_out.float().cpu())
            if (index, "block_output") in cache:
                cache[(index, "block_output")].append((h_out - h_in).float().cpu())
            if index == deepest:
                raise _StopAfterLayer

        return record

    handles = [
        layers[index].register_forward_hook(hook(index), with_kwargs=True) for index in {layer for layer, _ in wanted}
    ]
    try:
        for batch in tqdm(chunks.split(batch_size), desc="cache states", unit="batch"):
            with contextlib.suppress(_StopAfterLayer):
                model(input_ids=batch, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {key: torch.cat(parts) for key, parts in cache.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument(
        "--variants",
        required=True,
        help="JSON list of {name, BottleneckConfig fields, and optionally key_steps/batch_size/kmeans_init_tokens}",
    )
    parser.add_argument("--seq_len", type=int, default=256)
    parser.add_argument("--train_tokens_per_corpus", type=int, default=100_000)
    parser.add_argument("--eval_tokens", type=int, default=8192)
    parser.add_argument("--output_dir", default="outputs/sweep2", help="holds the cached base losses")
    parser.add_argument("--results", default="outputs/sweep2/results.jsonl")
    parser.add_argument("--save_dir", help="also save each variant's bottleneck to SAVE_DIR/<name> (save_pretrained)")
    parser.add_argument(
        "--skip_measure", action="store_true", help="only fit (and save) the keys; no held-out measurement or row"
    )
    args = parser.parse_args()
    torch.manual_seed(0)

    started = time.time()
    model, tokenizer = load_model_and_tokenizer("smollm2-135m")
    train_chunks, heldout = load_corpora(
        args.data_dir, tokenizer, args.seq_len, args.train_tokens_per_corpus, args.eval_tokens
    )
    base = base_losses(model, heldout, args.output_dir, args.eval_tokens)
    variants = []
    for raw in json.loads(args.variants):
        raw = dict(raw)
        name = raw.pop("name")
        unknown = set(raw) - CONFIG_KEYS - set(SCHEDULE_KEYS)
        if unknown:
            raise SystemExit(f"variant {name}: unknown fields {sorted(unknown)}")
        config = BottleneckConfig(**{k: v for k, v in raw.items() if k in CONFIG_KEYS})
        if len(config.layers) != 1:
            raise SystemExit(f"variant {name}: one layer per variant")
        schedule = {k: raw.get(k, default) for k, default in SCHEDULE_KEYS.items()}
        steps = key_schedule(len(train_chunks), args.seq_len, **schedule)
        variants.append((name, raw, config, steps))

    used = sorted({int(i) for *_, steps in variants for batch in steps for i in batch})
    position = {chunk: row for row, chunk in enumerate(used)}
    wanted = {(config.layers[0], config.site) for _, _, config, _ in variants}
    t0 = time.time()
    states = cache_states(model, train_chunks[used], wanted, batch_size=8)
    cache_s = time.time() - t0
    print(f"loaded in {t0 - started:.0f}s; cached {len(used)} chunks at {sorted(wanted)} in {cache_s:.0f}s", flush=True)

    for name, raw, config, steps in variants:
        t1 = time.time()
        bmodel = BottleneckedModel.attach(model, config)
        bottleneck = bmodel.bottleneck(config.layers[0])
        cached = states[(config.layers[0], config.site)]
        for step, batch in enumerate(steps):
            x = cached[[position[int(i)] for i in batch]]
            if step == 0:
                bottleneck.fit_keys(x)  # k-means initialisation; the training loop then takes an EMA step too
            bottleneck.fit_keys(x)
        fit_s = time.time() - t1
        if args.save_dir:
            bmodel.save_pretrained(Path(args.save_dir) / name, overwrite=True)
        if args.skip_measure:
            print(f"{name}: keys fitted in {fit_s:.0f}s", flush=True)
            bmodel.detach()
            continue
        row = {"name": name, "config": raw, **measure(bmodel, heldout, base)}
        row.update({"train_seconds": round(fit_s, 1), "cache_seconds": round(cache_s, 1), "source": "key_sweep.py"})
        append_result(args.results, row)
        bmodel.detach()


if __name__ == "__main__":
    main()
