"""How much a cheaper first pass could prune the exact nearest-key search of a trained codebook.

Two first passes, each counted on held-out WikiText states at the bottleneck layer, walking the stages as the
bottleneck does (each stage searches what the earlier ones left). A key that the first pass cannot rule out is a
candidate: an exact search needs its fp32 distance. Few candidates would make a pruned exact search cheap.

- **A low-dimensional bound.** For each stage and head, the keys' top-p principal directions P bound every squared
  distance from below, |P^T (z - k)|^2 <= |z - k|^2; the candidates are the keys whose bound is at most the true
  nearest distance.
- **Dot products in bf16** (`--bf16`). The distances' GEMM in bf16 (bf16 inputs, fp32 accumulation, bf16 output)
  is cheaper than in fp32 on CPUs and GPUs with bf16 units. Its dot product z.k is off by at most
  e |z| |k| with e = 3u + 2u^2 + d 2^-24 (1.1) and u = 2^-8 (two input roundings, the output rounding, the fp32
  accumulation of d products), so a squared distance by at most 2 e |z| |k|. A key is a candidate unless its
  distance less that bound exceeds the smallest distance plus its bound: only the candidates need an fp32 re-rank.
  The script also prints the largest error it saw against that bound (must stay below 1), and times the search
  itself on the same states: the library's fp32 search (`kinds.codebook.kmeans.nearest`) against the least a bf16
  shortlist does (the GEMM and a max over the keys; then one more pass that counts the candidates).

    python benchmarks/search_bound.py --bottleneck outputs/shapes/demo_s8_c4096/bottleneck
    python benchmarks/search_bound.py --bottleneck outputs/faithful/bottleneck --bf16
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.data import load_split
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.codebook import CodebookConfig, kmeans
from codeunlearn.modeling import load_model_and_tokenizer
from codeunlearn.tables import markdown_table

if __package__:
    from . import common
else:  # run as a file: Python puts the script's own folder first on sys.path
    import common

TEXT = "retain/wikitext2_raw_test.txt"


def candidate_rows(bottleneck, z: torch.Tensor, dims: list[int]) -> list[list[str]]:
    """Rows (stage, p, mean / median / 90th percentile candidates per token and head) for code-space states z
    (N, heads, head_dim) of ordinary tokens."""
    rows = []
    codebook_size = bottleneck.config.codebook_size
    for stage in range(bottleneck.config.num_stages):
        keys = bottleneck.keys(stage).float()  # (heads, C, d)
        points = z.transpose(0, 1)  # (heads, N, d)
        exact = torch.cdist(points, keys).pow(2)
        nearest = exact.min(-1).values.unsqueeze(-1)
        _, _, directions = torch.linalg.svd(keys - keys.mean(1, keepdim=True), full_matrices=False)
        for p in dims:
            project = directions[:, :p].transpose(1, 2)  # (heads, d, p)
            bound = torch.cdist(points @ project, keys @ project).pow(2)
            # a relative tolerance: the bound and the distance are computed in different orders
            candidates = (bound <= nearest * (1 + 1e-5) + 1e-6).sum(-1).float()
            rows.append(
                [
                    str(stage + 1),
                    str(p),
                    f"{candidates.mean():.0f}",
                    f"{candidates.median():.0f}",
                    f"{candidates.quantile(0.9):.0f}",
                    f"{codebook_size:,}",
                ]
            )
        z = z - bottleneck._lookup(keys, exact.argmin(-1).T)
    return rows


# bf16's unit roundoff (8 significant bits)
BF16_ROUNDOFF = 2.0**-8


def bf16_dot_error(head_dim: int) -> float:
    """e such that a bf16 GEMM's z.k (bf16 inputs, fp32 accumulation, bf16 output) is within e |z| |k| of the exact
    one: the two input roundings (2u + u^2), the output rounding (u, of a value at most (1 + 2u) |z| |k|) and an fp32
    sum of head_dim products (10% margin on the first-order bound)."""
    u = BF16_ROUNDOFF
    return 3 * u + 2 * u * u + head_dim * 2.0**-24 * 1.1


def bf16_candidate_rows(bottleneck, z: torch.Tensor) -> list[list[str]]:
    """Rows (stage, mean / median / 90th percentile candidates per token and head, share of (token, head) pairs with
    one candidate, largest error / bound) of the bf16 first pass, for code-space states z (N, heads, head_dim)."""
    rows = []
    e = bf16_dot_error(z.shape[-1])
    for stage in range(bottleneck.config.num_stages):
        keys = bottleneck.keys(stage).float()  # (heads, C, d)
        points = z.transpose(0, 1)  # (heads, N, d)
        exact_dots = torch.bmm(points.double(), keys.double().transpose(1, 2))
        dots = torch.bmm(points.bfloat16(), keys.bfloat16().transpose(1, 2)).double()
        key_sq = keys.double().pow(2).sum(-1).unsqueeze(1)
        bound = 2 * e * points.double().norm(dim=-1, keepdim=True) * key_sq.sqrt()
        error = ((dots - exact_dots).abs() * 2 / bound.clamp_min(1e-300)).max()
        distance = key_sq - 2 * dots
        candidates = ((distance - bound) <= (distance + bound).min(-1, keepdim=True).values).sum(-1).double()
        rows.append(
            [
                str(stage + 1),
                f"{candidates.mean():.1f}",
                f"{candidates.median():.0f}",
                f"{candidates.quantile(0.9):.0f}",
                f"{(candidates == 1).double().mean():.0%}",
                f"{error:.2f}",
            ]
        )
        z = z - bottleneck._lookup(keys, kmeans.nearest(points, keys).T)
    return rows


def _augmented(points: torch.Tensor, keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bf16 operands whose batched product is z.k - |k|^2 / 2 (the nearest key has the largest): the points with
    two columns of ones, the keys with -|k|^2 / 2 split into a bf16 value and its bf16 remainder."""
    half_sq = keys.pow(2).sum(-1) / 2
    high = half_sq.bfloat16()
    low = (half_sq - high.float()).bfloat16()
    ones = torch.ones(*points.shape[:2], 2, dtype=torch.bfloat16)
    columns = torch.cat([keys.bfloat16(), -high.unsqueeze(-1), -low.unsqueeze(-1)], -1)
    return torch.cat([points.bfloat16(), ones], -1), columns.transpose(1, 2).contiguous()


def search_timings(bottleneck, z: torch.Tensor, repeats: int) -> list[list[str]]:
    """Rows (search, ms per 1,000 tokens over all stages, x the fp32 search), medians of `repeats` interleaved
    repeats: the library's fp32 search; the bf16 GEMM (with the key norms folded in) and a max over the keys, the
    least any bf16 shortlist does; that plus one more pass counting the keys within a per-token bound
    (2 e |z| max |k|, looser than the per-key bound of `bf16_candidate_rows`), the least a certified shortlist adds
    before it re-ranks the undecided pairs (not included); the bf16 GEMM alone."""
    stages = []
    for stage in range(bottleneck.config.num_stages):
        keys = bottleneck.keys(stage).float()
        points = z.transpose(0, 1).contiguous()
        widest = keys.norm(dim=-1).max(-1).values.view(-1, 1)
        stages.append((points, keys, kmeans.squared_norms(keys), *_augmented(points, keys), widest))
        z = z - bottleneck._lookup(keys, kmeans.nearest(points, keys).T)
    e = bf16_dot_error(z.shape[-1])
    chunk = kmeans.SEARCH_CHUNK

    def fp32() -> None:
        for points, keys, key_sq, *_ in stages:
            kmeans.nearest(points, keys, key_sq)

    def bf16_max() -> None:
        for _, _, _, points, keys_t, _ in stages:
            for part in points.split(chunk, dim=1):
                torch.bmm(part, keys_t).max(-1)

    def bf16_certified() -> None:
        for exact, _, _, points, keys_t, widest in stages:
            for part, fp32_part in zip(points.split(chunk, dim=1), exact.split(chunk, dim=1), strict=True):
                scores = torch.bmm(part, keys_t)
                best = scores.max(-1).values.float()
                slack = 2 * e * fp32_part.norm(dim=-1) * widest
                (scores >= (best - slack).unsqueeze(-1)).sum(-1)

    def bf16_gemm() -> None:
        for _, _, _, points, keys_t, _ in stages:
            for part in points.split(chunk, dim=1):
                torch.bmm(part, keys_t)

    searches = {
        "fp32 (the library's search)": fp32,
        "bf16 GEMM + max over keys": bf16_max,
        "bf16 GEMM + max + candidate count": bf16_certified,
        "bf16 GEMM alone": bf16_gemm,
    }
    seconds: dict[str, list[float]] = {name: [] for name in searches}
    for run in searches.values():
        run()  # warm-up
    for repeat in range(repeats):
        names = list(searches)
        for name in names[repeat % len(names) :] + names[: repeat % len(names)]:
            start = time.perf_counter()
            searches[name]()
            seconds[name].append(time.perf_counter() - start)
    base = statistics.median(seconds["fp32 (the library's search)"])
    per_thousand = 1e6 / z.shape[0]
    return [
        [name, f"{statistics.median(t) * per_thousand:.1f}", f"{base / statistics.median(t):.2f}x"]
        for name, t in seconds.items()
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bottleneck", required=True, help="a codebook bottleneck directory")
    parser.add_argument("--data_dir")
    parser.add_argument("--chunks", type=int, default=8, help="held-out 256-token chunks of WikiText")
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 16, 24], help="bound dimensions p")
    parser.add_argument("--bf16", action="store_true", help="count the bf16 first pass's candidates and time it")
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timing repeats (with --bf16)")
    args = parser.parse_args()
    if args.repeats < 1 or args.chunks < 1:
        parser.exit(2, "error: --repeats and --chunks must be at least 1 -- fix: pass a positive count\n")

    try:
        model, tokenizer = load_model_and_tokenizer(args.model)
        bmodel = attach_bottleneck(model, args.bottleneck)
    except CodeunlearnError as err:
        parser.exit(2, f"error: {err.problem} -- fix: {err.fix}\n")
    if not isinstance(bmodel.config, CodebookConfig) or len(bmodel.layers) != 1:
        parser.exit(2, f"error: {args.bottleneck} is not a one-layer codebook -- fix: pass a codebook at one layer\n")
    bmodel.clear_edits()
    data = Path(args.data_dir or common.DEFAULT_DATA_DIR) / TEXT
    _, heldout = load_split(str(data), tokenizer, 256, 0.2, seed=0, max_tokens=65536)
    (layer,) = bmodel.layers
    bottleneck = bmodel.bottleneck(layer)
    with torch.no_grad():
        states = bmodel.states_at(layer, heldout[: args.chunks])
        ordinary = states[~bottleneck.passthrough_mask(states, None)].float()
        z = bottleneck._to_code_space(ordinary).view(len(ordinary), bottleneck.config.num_heads, -1)
        if args.bf16:
            rows = bf16_candidate_rows(bottleneck, z)
            timings = search_timings(bottleneck, z, args.repeats)
        else:
            rows = candidate_rows(bottleneck, z, args.dims)
    print(f"{len(ordinary):,} held-out tokens at layer {layer}; candidates per token and head:")
    if not args.bf16:
        print(markdown_table(["stage", "p", "mean", "median", "90th percentile", "keys"], rows, "rrrrrr"))
        return
    header = ["stage", "mean", "median", "90th percentile", "pairs with one candidate", "largest error / bound"]
    print(markdown_table(header, rows, "rrrrrr"))
    print(f"\nthe search over every stage, {torch.get_num_threads()} threads, medians of {args.repeats} repeats:")
    print(markdown_table(["search", "ms per 1,000 tokens", "speed vs fp32"], timings, "lrr"))


if __name__ == "__main__":
    main()
