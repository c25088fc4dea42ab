"""Nearest-key search and chunked k-means for multi-head codebooks, in fp32.

Why not `vector_quantize_pytorch.kmeans`: it builds the whole (heads, points, codes) distance tensor at once (8 x
65,536 x 4,096 fp32 = 8.6 GB for the default codebook), and its search is a `cdist`. Here the distances of a chunk of
points are one batched GEMM over every head (`baddbmm`, the keys read in place as (heads, dim, codes)), so the search
runs at the speed of the GEMM; the update step is the same as the library's (empty codes keep their key).

Data-parallel: each process passes its own share of the points (`codeunlearn.distributed.share`, rank order). The
starting keys are the same global draw of points as one process would make, and each iteration's sums and counts
are summed over the processes, so every process ends with the same keys, and those of one process holding all the
points up to the rounding of the summed floats.

Distances stay fp32: in bf16 the nearest-code search picks essentially random codes (FINDINGS.md).
"""

from __future__ import annotations

import torch
from torch import Tensor

from codeunlearn import distributed

# Points per GEMM chunk: the (heads, chunk, codes) distance block of 8 heads x 512 x 4,096 codes is 64 MiB.
SEARCH_CHUNK = 512


def squared_norms(keys: Tensor, excluded: Tensor | None = None) -> Tensor:
    """(heads, codes) squared key norms; excluded codes get +inf so that no search picks them."""
    key_sq = keys.float().pow(2).sum(-1)
    return key_sq if excluded is None else key_sq.masked_fill(excluded, float("inf"))


def nearest(points: Tensor, keys: Tensor, key_sq: Tensor | None = None, chunk: int = SEARCH_CHUNK) -> Tensor:
    """Index of the nearest key of every point, per head.

    points (heads, n, dim), keys (heads, codes, dim), key_sq (heads, codes) from `squared_norms` -> (heads, n) long.
    ||x - k||^2 = ||x||^2 - 2 x.k + ||k||^2, and ||x||^2 does not change the argmin.
    """
    keys = keys.float()
    key_sq = squared_norms(keys) if key_sq is None else key_sq
    keys_t = keys.transpose(1, 2)  # a view: the GEMM reads the keys transposed, no copy
    bias = key_sq.unsqueeze(1)
    out = [torch.baddbmm(bias, part.float(), keys_t, alpha=-2.0).argmin(-1) for part in points.split(chunk, dim=1)]
    if not out:
        return torch.zeros(points.shape[0], 0, dtype=torch.long, device=points.device)
    return torch.cat(out, dim=1)


def _flat_ids(assign: Tensor, num_codes: int) -> Tensor:
    """(heads, n) codes -> flat ids head * num_codes + code, (heads * n,)."""
    return (assign + torch.arange(assign.shape[0], device=assign.device).unsqueeze(1) * num_codes).reshape(-1)


def _scatter_means(points: Tensor, assign: Tensor, num_codes: int) -> tuple[Tensor, Tensor]:
    """Per head: the sum of the points assigned to each code and their count."""
    heads, _, dim = points.shape
    flat = _flat_ids(assign, num_codes)
    sums = torch.zeros(heads * num_codes, dim, dtype=torch.float32, device=points.device)
    sums.index_add_(0, flat, points.reshape(-1, dim).float())
    counts = torch.bincount(flat, minlength=heads * num_codes).to(torch.float32)
    return sums.view(heads, num_codes, dim), counts.view(heads, num_codes)


def kmeans(points: Tensor, num_codes: int, iters: int, generator: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """Lloyd's k-means, separately per head.

    points (heads, n, dim): this process's share, n >= num_codes over all processes. The keys start at distinct
    random points (the same for every head's slice of a token, drawn with `generator` among all processes' points);
    each iteration assigns every point to its nearest key and moves each key to the mean of its points (a key with
    no point stays where it is). Returns (keys (heads, codes, dim), counts (heads, codes) of the last assignment
    over all processes, this process's assignment (heads, n)).
    """
    heads, n, dim = points.shape
    sizes = distributed.gather_rows(torch.tensor([n]))
    total = int(sizes.sum())
    if total < num_codes:
        raise ValueError(f"k-means needs at least {num_codes} points, got {total}")
    start = torch.randperm(total, generator=generator)[:num_codes].to(points.device)
    offset = int(sizes[: distributed.rank()].sum())
    mine = (start >= offset) & (start < offset + n)
    keys = torch.zeros(heads, num_codes, dim, dtype=torch.float32, device=points.device)
    keys[:, mine] = points[:, start[mine] - offset].float()
    distributed.all_sum_(keys)  # every starting point comes from exactly one process; the others add zeros
    assign = nearest(points, keys)
    for _ in range(iters):
        sums, counts = _scatter_means(points, assign, num_codes)
        distributed.all_sum_(sums)
        distributed.all_sum_(counts)
        filled = counts > 0
        keys = torch.where(filled.unsqueeze(-1), sums / counts.clamp_min(1).unsqueeze(-1), keys)
        assign = nearest(points, keys)
    counts = torch.bincount(_flat_ids(assign, num_codes), minlength=heads * num_codes).view(heads, num_codes)
    return keys, distributed.all_sum_(counts.to(torch.float32)), assign


def lookup(table: Tensor, assign: Tensor) -> Tensor:
    """table (heads, codes, dim), assign (heads, n) -> (heads, n, dim)."""
    return torch.gather(table, 1, assign.unsqueeze(-1).expand(-1, -1, table.shape[-1]))


def fit_residual_codebooks(
    points: Tensor, num_stages: int, num_codes: int, iters: int, seed: int
) -> tuple[list[Tensor], list[Tensor], Tensor]:
    """Residual quantization fitted stage by stage: stage s runs k-means on what stages < s left over.

    points (heads, n, dim), this process's share. Returns the keys and counts of every stage (the same on every
    process) and the final residual of this share (heads, n, dim), whose energy over the points' variance is the
    training FVU.
    """
    generator = torch.Generator().manual_seed(seed)
    residual = points.float().clone()
    keys_per_stage, counts_per_stage = [], []
    for _ in range(num_stages):
        keys, counts, assign = kmeans(residual, num_codes, iters, generator)
        residual -= lookup(keys, assign)
        keys_per_stage.append(keys)
        counts_per_stage.append(counts)
    return keys_per_stage, counts_per_stage, residual
