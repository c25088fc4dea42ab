"""`CodeStatistics`: how often each code fires at each bottleneck layer on a corpus.

Computed with forward passes that stop right after the deepest bottleneck layer (no later layer, no LM head).
Tokens left unquantized (position 0, massive activations) are not counted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from codeunlearn.bottlenecked import BottleneckedModel
from codeunlearn.codebook import QuantizeOutput
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_save_tensors, atomic_write_text, load_tensors
from codeunlearn.runtime import autocast, batches, model_device


def flat_code_ids(codes: Tensor, num_heads: int, codebook_size: int) -> Tensor:
    """(..., S, H) codes -> flat ids (stage * H + head) * C + code; -1 stays -1."""
    stages = codes.shape[-2]
    offsets = torch.arange(stages * num_heads, device=codes.device).view(stages, num_heads) * codebook_size
    return torch.where(codes >= 0, codes + offsets, codes)


@dataclass
class CodeStatistics:
    """Per layer: firing count of every code id and the number of quantized tokens seen."""

    counts: dict[int, Tensor]
    tokens: dict[int, int]
    corpus: str = ""
    bottleneck_fingerprint: str = ""

    def frequency(self, layer: int) -> Tensor:
        """Fraction of quantized tokens on which each code fires (a code owns one stage/head slot)."""
        return self.counts[layer].double() / max(self.tokens[layer], 1)

    def save(self, path: str | Path) -> None:
        path = Path(path)
        atomic_save_tensors({str(layer): c for layer, c in self.counts.items()}, path)
        summary = {
            "corpus": self.corpus,
            "bottleneck_fingerprint": self.bottleneck_fingerprint,
            "tokens": {str(k): v for k, v in self.tokens.items()},
            "codes_seen": {str(k): int((c > 0).sum()) for k, c in self.counts.items()},
        }
        atomic_write_text(path.with_suffix(".json"), json.dumps(summary, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> CodeStatistics:
        path = Path(path)
        tensors = load_tensors(path, "code statistics")
        meta_path = path.with_suffix(".json")
        if not meta_path.is_file():
            raise CodeunlearnError(f"statistics summary {meta_path} is missing", "re-run codeunlearn stats")
        meta = json.loads(meta_path.read_text())
        return cls(
            counts={int(k): v for k, v in tensors.items()},
            tokens={int(k): int(v) for k, v in meta["tokens"].items()},
            corpus=meta.get("corpus", ""),
            bottleneck_fingerprint=meta.get("bottleneck_fingerprint", ""),
        )


@torch.no_grad()
def collect_code_statistics(
    bmodel: BottleneckedModel,
    chunks: Tensor,
    batch_size: int = 8,
    corpus: str = "",
    progress: bool = True,
    bf16: bool = False,
) -> CodeStatistics:
    """Count code firings of `chunks` (num_chunks, seq_len) at every bottleneck layer."""
    if len(chunks) == 0:
        raise CodeunlearnError(f"corpus {corpus!r} gave no chunks", "use more text or a smaller --seq_len")
    config = bmodel.config
    counts = {layer: torch.zeros(config.codes_per_layer, dtype=torch.long) for layer in bmodel.layers}
    tokens = dict.fromkeys(bmodel.layers, 0)

    def observe(layer: int, states: Tensor, result: QuantizeOutput) -> None:
        ids = flat_code_ids(result.codes, config.num_heads, config.codebook_size)
        ids = ids[~result.passthrough].flatten().cpu()
        counts[layer] += torch.bincount(ids, minlength=config.codes_per_layer)
        tokens[layer] += int((~result.passthrough).sum())

    device = model_device(bmodel)
    with autocast(device, bf16):
        for batch in batches(chunks, batch_size, desc=f"stats {corpus}", progress=progress):
            bmodel.run_to_deepest(batch.to(device), observe)
    return CodeStatistics(counts, tokens, corpus, bmodel.fingerprint())
