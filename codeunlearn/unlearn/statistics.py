"""`CodeStatistics`: how often each code (VQ) or feature (SAE) fires at each bottleneck layer on a corpus.

Computed with forward passes that stop right after the deepest bottleneck layer (no later layer, no LM head).
Tokens left unquantized (position 0, massive activations) are not counted. For an SAE, a feature fires on a token
when its activation is positive; the summed and the largest activation of every feature are kept as well (for
the mean-activation-difference score and the clamp scales).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from codeunlearn import distributed
from codeunlearn.bottleneck.config import DEFAULT_KIND
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import corpus_fingerprint
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_save_tensors, atomic_write_text, load_tensors
from codeunlearn.runtime import autocast, batches, model_device

SUM_SUFFIX = ".activation_sum"
MAX_SUFFIX = ".activation_max"


@dataclass
class CodeStatistics:
    """Per layer: firing count of every code id (or SAE feature) and the number of counted tokens; for an SAE also
    every feature's summed and largest activation."""

    counts: dict[int, Tensor]
    tokens: dict[int, int]
    corpus: str = ""
    bottleneck_fingerprint: str = ""
    activation_sums: dict[int, Tensor] = field(default_factory=dict)  # float64, SAE only
    activation_max: dict[int, Tensor] = field(default_factory=dict)  # float32, SAE only
    kind: str = DEFAULT_KIND
    corpus_fingerprint: str = ""  # hash of the packed token ids counted (`statistics_cache.corpus_fingerprint`)

    def frequency(self, layer: int) -> Tensor:
        """Fraction of quantized tokens on which each code fires (a code owns one stage/head slot)."""
        return self.counts[layer].double() / max(self.tokens[layer], 1)

    def mean_activation(self, layer: int) -> Tensor:
        """SAE: every feature's activation averaged over all counted tokens (0 where it does not fire)."""
        return self._sums(layer) / max(self.tokens[layer], 1)

    def mean_firing_activation(self, layer: int) -> Tensor:
        """SAE: every feature's mean activation on the tokens where it fires (0 if it never fires)."""
        return self._sums(layer) / self.counts[layer].clamp_min(1).double()

    def _sums(self, layer: int) -> Tensor:
        if layer not in self.activation_sums:
            raise CodeunlearnError(
                f"statistics of {self.corpus!r} hold no activations (codebook statistics)",
                "compute them with an SAE bottleneck (codeunlearn stats)",
            )
        return self.activation_sums[layer]

    def save(self, path: str | Path) -> None:
        path = Path(path)
        tensors = {str(layer): c for layer, c in self.counts.items()}
        tensors.update({f"{layer}{SUM_SUFFIX}": t for layer, t in self.activation_sums.items()})
        tensors.update({f"{layer}{MAX_SUFFIX}": t for layer, t in self.activation_max.items()})
        atomic_save_tensors(tensors, path)
        summary = {
            "corpus": self.corpus,
            "bottleneck_fingerprint": self.bottleneck_fingerprint,
            "kind": self.kind,
            "corpus_fingerprint": self.corpus_fingerprint,
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

        def by_layer(suffix: str) -> dict[int, Tensor]:
            return {int(k[: -len(suffix)]): v for k, v in tensors.items() if k.endswith(suffix)}

        return cls(
            counts={int(k): v for k, v in tensors.items() if "." not in k},
            tokens={int(k): int(v) for k, v in meta["tokens"].items()},
            corpus=meta.get("corpus", ""),
            bottleneck_fingerprint=meta.get("bottleneck_fingerprint", ""),
            activation_sums=by_layer(SUM_SUFFIX),
            activation_max=by_layer(MAX_SUFFIX),
            kind=meta.get("kind", DEFAULT_KIND),
            corpus_fingerprint=meta.get("corpus_fingerprint", ""),
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
    """Count code firings (SAE: feature firings and activation sums) of `chunks` (num_chunks, seq_len) at every
    bottleneck layer; what a batch adds is each bottleneck's `tally` of its output. Data-parallel, each process
    counts its share of `chunks` and every process returns the sums over all of them (integer counts: exactly
    what one process counts)."""
    if len(chunks) == 0:
        raise CodeunlearnError(f"corpus {corpus!r} gave no chunks", "use more text or a smaller --seq_len")
    if distributed.world_size() > 1:  # hashing the bottleneck costs a read of every key
        distributed.check_same_everywhere(
            "the bottleneck or the chunks to count",
            bmodel.fingerprint() + corpus_fingerprint(chunks),
            "launch every process with the same command line and the same corpus files",
        )
    layers = bmodel.layers
    counts = {layer: torch.zeros(bmodel.num_features(layer), dtype=torch.long) for layer in layers}
    tokens = dict.fromkeys(layers, 0)
    sums: dict[int, Tensor] = {}
    maxima: dict[int, Tensor] = {}
    if bmodel.config.has_activations:
        sums = {layer: torch.zeros(bmodel.num_features(layer), dtype=torch.float64) for layer in layers}
        maxima = {layer: torch.zeros(bmodel.num_features(layer)) for layer in layers}

    def observe(layer: int, states: Tensor, result: Any) -> None:
        tally = bmodel.bottleneck(layer).tally(result)
        counts[layer] += tally.counts
        tokens[layer] += tally.tokens
        if tally.activation_sum is not None:
            sums[layer] += tally.activation_sum
        if tally.activation_max is not None:
            maxima[layer] = torch.maximum(maxima[layer], tally.activation_max)

    device = model_device(bmodel)
    with autocast(device, bf16):
        for batch in batches(distributed.share(chunks), batch_size, desc=f"stats {corpus}", progress=progress):
            bmodel.run_to_deepest(batch.to(device), observe)
    for layer in layers:  # data-parallel: every process ends with the counts of all the chunks
        distributed.all_sum_(counts[layer])
        tokens[layer] = distributed.all_sum(tokens[layer])
        if sums:
            distributed.all_sum_(sums[layer])
            distributed.all_max_(maxima[layer])
    return CodeStatistics(counts, tokens, corpus, bmodel.fingerprint(), sums, maxima, kind=bmodel.config.kind)
