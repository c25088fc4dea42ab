"""`ChunkStream`: the training data as an endless, seeded, resumable stream of token chunks."""

from __future__ import annotations

import torch
from torch import Tensor

from codeunlearn.errors import CodeunlearnError


class ChunkStream:
    """An endless, seeded stream of chunks (a fresh permutation each epoch); `cursor` is its position."""

    def __init__(self, chunks: Tensor, seed: int, cursor: int = 0) -> None:
        if len(chunks) == 0:
            raise CodeunlearnError("the training corpus gave no chunks", "pass more text or a smaller --seq_len")
        self.chunks, self.seed, self.cursor = chunks, seed, cursor

    def _index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.chunks))
        generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        return int(torch.randperm(len(self.chunks), generator=generator)[offset])

    def take(self, count: int, skip: int = 0) -> Tensor:
        """The next `count` chunks after skipping `skip`; the cursor is not advanced (call `advance`)."""
        return self.chunks[[self._index(self.cursor + skip + i) for i in range(count)]]

    def advance(self, count: int) -> None:
        self.cursor += count
