"""Sharding the frozen base model over the processes (FSDP2, `torch.distributed.fsdp.fully_shard`), for a base
model whose weights do not fit one device next to the training state.

Asked for by an `accelerate` FSDP launch (`distributed_type: FSDP`, e.g. configs/accelerate/fsdp.yaml, which sets
`ACCELERATE_USE_FSDP`). Each decoder layer of the base model is one FSDP unit and the root (embeddings, final norm,
head) another, so a process holds 1/N of the base weights and gathers one layer at a time during a forward. The
bottleneck stays whole on every process (its parameters are `ignored_params`): its k-means fit and EMA updates write
whole tensors, reduced as in plain data-parallel training (`codeunlearn.distributed`), and its gradients are
averaged by hand (`average_gradients`). accelerate's own FSDP `prepare` is not used because it shards every
parameter of the model it is given, the bottleneck's included.

A sharded forward is a collective: every process must run as many forwards as the others, so the passes that read
a share of the chunks pad the shorter shares with forwards whose results are dropped (`lockstep`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence

import torch
from accelerate.utils import parse_flag_from_env
from torch import Tensor, nn

from codeunlearn import distributed
from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.model import BottleneckedModel, BottleneckLayer

FSDP_ENV = "ACCELERATE_USE_FSDP"


def requested() -> bool:
    """Whether the launch asked for FSDP (`accelerate launch` with an FSDP config sets `ACCELERATE_USE_FSDP`)."""
    return parse_flag_from_env(FSDP_ENV)


def is_sharded(model: nn.Module) -> bool:
    """Whether `model` (a `BottleneckedModel` or a base model) holds FSDP-sharded weights."""
    from torch.distributed.fsdp import FSDPModule

    root = model.model if isinstance(model, BottleneckedModel) else model
    return isinstance(root, FSDPModule)


def shard_frozen_base(bmodel: BottleneckedModel, device: torch.device) -> tuple[int, int]:
    """Shard the base model of `bmodel` over the process group, layer by layer, onto `device`; the bottleneck stays
    whole. Returns (base parameters this process holds, base parameters in all)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    whole = [p for bn in bmodel.bottlenecks.values() for p in bn.parameters()]
    whole += list(bmodel.adapter_parameters().values())
    with torch.no_grad():
        for param in whole:  # as DDP does: every process starts from process 0's (randomly initialised adapters)
            distributed.broadcast_(param.data)
    kept = set(whole)
    for layer in decoder_layers(bmodel.model):
        inner = layer.layer if isinstance(layer, BottleneckLayer) else layer
        fully_shard(inner, mesh=mesh, ignored_params={p for p in inner.parameters() if p in kept})
    fully_shard(bmodel.model, mesh=mesh, ignored_params=kept)
    bmodel.to(device)  # the bottleneck and every buffer: fully_shard moved only the base weights
    held = total = 0
    for param in bmodel.model.parameters():
        if param in kept:
            continue
        local = param.to_local() if hasattr(param, "to_local") else param
        held += local.numel()
        total += param.numel()
    return held, total


def lockstep(model: nn.Module, batches: Iterable[Tensor], count: int, seq_len: int) -> Iterator[tuple[Tensor, bool]]:
    """`(batch, True)` for each of this process's `count` `batches`; when `model` is sharded, then one chunk of
    zeros of `seq_len` tokens, `(filler, False)`, until every process has run as many forwards as the process with
    the most batches (the caller drops those results). Every process must call it at the same point: when sharded it
    starts with a collective."""
    if not is_sharded(model):
        yield from ((batch, True) for batch in batches)
        return
    most = int(distributed.all_max_(torch.tensor([count], dtype=torch.long)).item())
    yield from ((batch, True) for batch in batches)
    filler = torch.zeros((1, seq_len), dtype=torch.long)
    for _ in range(most - count):
        yield filler, False


def average_gradients(parameters: Sequence[nn.Parameter]) -> None:
    """Average the gradients of the (unsharded) trainable `parameters` over the processes, in place: what DDP does
    for a model that is not wrapped in DDP."""
    for param in parameters:
        if param.grad is not None:
            distributed.all_sum_(param.grad)
            param.grad /= distributed.world_size()
