"""How much a low-dimensional lower bound could prune the exact nearest-key search of a trained codebook.

For each stage and head, the keys' top-p principal directions P give a lower bound on every squared distance,
|P^T (z - k)|^2 <= |z - k|^2. An exact search that first computes the bound (p of the head's dimensions) needs the
full distance only for the keys whose bound is at most the true nearest distance: the candidates. The script counts
them on held-out WikiText states at the bottleneck layer, walking the stages as the bottleneck does (each stage
searches what the earlier ones left). Few candidates would make a pruned exact search cheap; candidates near the
codebook size mean the bound prunes nothing.

    python benchmarks/search_bound.py --bottleneck outputs/shapes/demo_s8_c4096/bottleneck
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.data import load_split
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.codebook import CodebookConfig
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--bottleneck", required=True, help="a codebook bottleneck directory")
    parser.add_argument("--data_dir")
    parser.add_argument("--chunks", type=int, default=8, help="held-out 256-token chunks of WikiText")
    parser.add_argument("--dims", type=int, nargs="+", default=[8, 16, 24], help="bound dimensions p")
    args = parser.parse_args()

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
        rows = candidate_rows(bottleneck, z, args.dims)
    print(f"{len(ordinary):,} held-out tokens at layer {layer}; candidates per token and head:")
    print(markdown_table(["stage", "p", "mean", "median", "90th percentile", "keys"], rows, "rrrrrr"))


if __name__ == "__main__":
    main()
