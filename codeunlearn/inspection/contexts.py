"""The top contexts of a unit: its strongest firings kept while a corpus streams by, then cut out as token windows.

`TopFirings` keeps, per watched unit, the k strongest firings seen so far (strength and where: chunk and position),
merging each batch in with `torch.topk`, so memory is units x k whatever the corpus size. `context_window` cuts the
tokens around one firing out of the packed chunks afterwards, within its chunk: what the model read before it (the
left side is the model's whole view of the firing token, up to the window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor


@dataclass
class Context:
    """A window of tokens around one firing.

    Attributes:
        tokens: the window's tokens as text (each the text it adds to the decoded window).
        firing: index in `tokens` of the token the unit fires on.
        strength: how strongly it fires there (`Bottleneck.strength_meaning`).
        chunk: packed chunk the window comes from.
        position: the firing token's position in that chunk.
    """

    tokens: list[str]
    firing: int
    strength: float
    chunk: int
    position: int

    @property
    def token(self) -> str:
        """The firing token's text."""
        return self.tokens[self.firing]

    def to_dict(self) -> dict[str, Any]:
        return {
            "tokens": self.tokens,
            "firing": self.firing,
            "token": self.token,
            "strength": self.strength,
            "chunk": self.chunk,
            "position": self.position,
        }


class TopFirings:
    """The `k` strongest firings of each of `num_units` units over a stream of batches.

    Strengths follow `Bottleneck.firing_strength`: -inf where a unit does not fire, so a unit that fired fewer than
    k times keeps -inf entries, which `firings` leaves out."""

    def __init__(self, num_units: int, k: int) -> None:
        self.k = k
        self.strength = torch.full((num_units, k), float("-inf"))
        self.location = torch.full((num_units, k), -1, dtype=torch.long)

    def update(self, strength: Tensor, locations: Tensor) -> None:
        """Merge a batch in: `strength` (N, U) of N tokens at flat `locations` (N,) (chunk * seq_len + position)."""
        if self.k == 0 or len(strength) == 0:
            return
        values, index = strength.float().topk(min(self.k, len(strength)), dim=0)  # (k', U): a batch's best first
        merged = torch.cat([self.strength, values.T.cpu()], dim=1)
        where = torch.cat([self.location, locations.to(index.device)[index].T.cpu()], dim=1)
        self.strength, order = merged.topk(self.k, dim=1)
        self.location = where.gather(1, order)

    def firings(self, unit_index: int) -> list[tuple[float, int]]:
        """(strength, flat location) of a unit's kept firings, strongest first."""
        return [
            (float(s), int(loc))
            for s, loc in zip(self.strength[unit_index], self.location[unit_index], strict=True)
            if torch.isfinite(s)
        ]


def token_texts(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token of `ids` adds to their decoded string, so the pieces join to what the reader would see:
    a token decoded alone loses its leading space with SentencePiece tokenizers and shows half a character where a
    multi-byte character spans tokens. Where a longer decode does not extend the shorter one, the token is decoded
    alone."""
    pieces, previous = [], ""
    for end in range(1, len(ids) + 1):
        text = tokenizer.decode(ids[:end], clean_up_tokenization_spaces=False)
        if text.startswith(previous):
            pieces.append(text[len(previous) :])
        else:
            pieces.append(tokenizer.decode(ids[end - 1 : end], clean_up_tokenization_spaces=False))
        previous = text
    return pieces


def context_window(
    chunks: Tensor, location: int, strength: float, tokenizer: Any, left: int = 8, right: int = 4
) -> Context:
    """The window of `left` tokens before and `right` tokens after the firing at flat `location` of `chunks`
    (num_chunks, seq_len), clipped to its chunk."""
    seq_len = chunks.shape[1]
    chunk, position = divmod(location, seq_len)
    start, stop = max(0, position - left), min(seq_len, position + right + 1)
    ids = chunks[chunk, start:stop].tolist()
    return Context(token_texts(tokenizer, ids), position - start, strength, chunk, position)
