"""Batching and precision for forward passes.

bf16 autocast of the frozen model is opt-in (`bf16=True`): it is 3-4x faster on GPUs and on CPUs with bf16 matmul
kernels (AMX / AVX512-BF16), but 6-50x *slower* on AVX2-only CPUs. Bottleneck distances always stay fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor
from tqdm.auto import tqdm


def autocast(device: torch.device | str, enabled: bool = True) -> contextlib.AbstractContextManager:
    device_type = torch.device(device).type
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device_type, dtype=torch.bfloat16)


def batches(chunks: Tensor, batch_size: int, desc: str | None = None, progress: bool = True) -> Iterator[Tensor]:
    """Yield consecutive batches of packed chunks, with a progress bar when `desc` is given."""
    starts = range(0, len(chunks), batch_size)
    bar = tqdm(starts, desc=desc, unit="batch", disable=not progress or desc is None, leave=False)
    for start in bar:
        yield chunks[start : start + batch_size]


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device
