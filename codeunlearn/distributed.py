"""Data parallelism across processes (`accelerate launch`, `torchrun`): joining the process group, which share of
the data this process reads, and the reductions after which every process holds the same result.

The passes that read a corpus (statistics, held-out losses, the k-means fit of a codebook) split their chunks into
contiguous shares, one per process in rank order, and reduce what they count: sums of integer counts are exact, so
2 processes count exactly what 1 process counts. Outside a process group every function here is the identity.

Only `join` creates the group (through accelerate, which also picks the device); the library reads it through
`torch.distributed`, so a function called from any data-parallel program reduces over that program's group.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import Tensor

from codeunlearn.errors import CodeunlearnError

LAUNCH_FIX = (
    "launch with `accelerate launch --config_file configs/accelerate/FILE.yaml $(which codeunlearn) ...` "
    "(docs/multi-gpu.md), or run one process without WORLD_SIZE set"
)
_alone = False  # inside `alone()`: this process acts as a run of its own


def requested_world_size() -> int:
    """The number of processes the launcher asked for (`WORLD_SIZE`; 1 when not launched)."""
    return int(os.environ.get("WORLD_SIZE", "1") or 1)


def join(**accelerator_kwargs) -> Accelerator:
    """The `Accelerator` of this run, joined to the launcher's process group.

    On a machine without a GPU, accelerate joins `torchrun`'s group only when told to use the CPU; it is told so
    here, so `torchrun --nproc_per_node N` works as `accelerate launch` does. A launch that asks for several
    processes but leaves this one outside any group would run N copies of the same job writing the same files: it
    is refused."""
    if requested_world_size() > 1 and not torch.cuda.is_available():
        accelerator_kwargs.setdefault("cpu", True)
    try:
        accelerator = Accelerator(**accelerator_kwargs)
    except (ValueError, RuntimeError) as err:  # no rendezvous address, unreachable peers
        raise CodeunlearnError(
            f"launched with WORLD_SIZE={requested_world_size()} but the process group could not be joined "
            f"({' '.join(str(err).split())})",
            LAUNCH_FIX,
        ) from None
    if requested_world_size() != accelerator.num_processes:
        raise CodeunlearnError(
            f"launched with WORLD_SIZE={requested_world_size()} but this process joined a group of "
            f"{accelerator.num_processes}",
            LAUNCH_FIX,
        )
    return accelerator


def device() -> torch.device:
    """The device this process computes on: its own GPU under a launcher (accelerate assigns it), the first GPU in a
    single process, else the CPU."""
    from accelerate import PartialState

    return PartialState().device


def world_size() -> int:
    if _alone:
        return 1
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    if _alone:
        return 0
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


@contextlib.contextmanager
def alone() -> Iterator[None]:
    """Inside, this process acts as a run of its own (`world_size()` 1, `rank()` 0): the library's shares and
    reductions are the identity, so work dealt whole to this process (one metric of an evaluation suite) reads all
    of its data and waits on no other process. The group stays joined; collectives after it span the group again."""
    global _alone
    before, _alone = _alone, True
    try:
        yield
    finally:
        _alone = before


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    """Wait until every process gets here (e.g. all have checked an output directory before one writes to it)."""
    if world_size() > 1:
        dist.barrier()


def leave(wait: bool) -> None:
    """Tear down the process group, if one was joined, before the interpreter exits. With `wait` (a command that
    ended normally) every process first waits for the others: a process that finished its share early and exited
    while the others still held the group open has been seen to abort at exit (gloo, "terminate called without an
    active exception") after writing correct results. A failed command does not wait, since another process may
    never get there."""
    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def share(items: Tensor) -> Tensor:
    """This process's contiguous share of `items` (along dim 0): rank r of W reads `tensor_split(W)[r]`, so the
    shares concatenated in rank order are `items` (the first `len % W` shares hold one item more)."""
    return items.tensor_split(world_size())[rank()] if world_size() > 1 else items


def _device() -> torch.device:
    """Where the group's collectives run: the process's GPU for NCCL, the CPU for gloo."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _in_place(tensor: Tensor, collective: Callable[[Tensor], Any]) -> Tensor:
    """Run `collective` on `tensor` where the group's collectives run (the process's GPU for NCCL), writing the
    result back into `tensor`."""
    if world_size() == 1:
        return tensor
    moved = tensor.to(_device())
    collective(moved)
    if moved is not tensor:
        tensor.copy_(moved)
    return tensor


def _all_reduce(tensor: Tensor, op: dist.ReduceOp) -> Tensor:
    return _in_place(tensor, lambda moved: dist.all_reduce(moved, op=op))


def all_sum_(tensor: Tensor) -> Tensor:
    """Sum `tensor` over every process, in place (returns it)."""
    return _all_reduce(tensor, dist.ReduceOp.SUM)


def all_max_(tensor: Tensor) -> Tensor:
    """Element-wise maximum of `tensor` over every process, in place (returns it)."""
    return _all_reduce(tensor, dist.ReduceOp.MAX)


def broadcast_(tensor: Tensor, source: int = 0) -> Tensor:
    """Overwrite `tensor` on every process with process `source`'s, in place (returns it)."""
    return _in_place(tensor, lambda moved: dist.broadcast(moved, src=source))


def all_sum(value: float | int) -> float | int:
    """A Python number summed over every process (float64, so integer counts stay exact)."""
    if world_size() == 1:
        return value
    total = all_sum_(torch.tensor([value], dtype=torch.float64))
    return type(value)(total.item())


def gather_rows(part: Tensor) -> Tensor:
    """Every process's `part` (same trailing shape, any number of rows), concatenated in rank order on every
    process: the inverse of `share`."""
    if world_size() == 1:
        return part
    sizes = torch.tensor([len(part)], dtype=torch.long)
    everyone = [torch.zeros_like(sizes).to(_device()) for _ in range(world_size())]
    dist.all_gather(everyone, sizes.to(_device()))
    lengths = [int(s) for s in everyone]
    padded = torch.zeros((max(lengths), *part.shape[1:]), dtype=part.dtype, device=_device())
    padded[: len(part)] = part.to(_device())
    gathered = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, lengths, strict=True)]).to(part.device)


def all_gather_objects(value: Any) -> list[Any]:
    """Every process's picklable `value`, in rank order, on every process (one process: `[value]`). For results
    that are not tensors of one shape (e.g. the metric results of an evaluation suite); NCCL pickles them through
    the process's GPU."""
    if world_size() == 1:
        return [value]
    gathered: list[Any] = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def check_same_everywhere(what: str, value: str, fix: str) -> None:
    """Refuse to go on when the processes disagree on `value` (e.g. a config or a corpus fingerprint): they would
    train or count different things while reducing as if they were one run."""
    if world_size() == 1:
        return
    digest = hashlib.sha256(value.encode()).digest()[:8]
    mine = torch.tensor(list(digest), dtype=torch.float64)
    low, high = mine.clone(), mine.clone()
    _all_reduce(low, dist.ReduceOp.MIN)
    _all_reduce(high, dist.ReduceOp.MAX)
    if not torch.equal(low, high):
        raise CodeunlearnError(f"the {world_size()} processes disagree on {what}", fix)


def all_mean(values: Tensor, dim: int) -> Tensor:
    """The mean of `values` along `dim` over every process's rows (one process: exactly `values.mean(dim)`)."""
    if world_size() == 1:
        return values.mean(dim)
    count = all_sum(values.shape[dim])
    return all_sum_(values.sum(dim)) / max(count, 1)
