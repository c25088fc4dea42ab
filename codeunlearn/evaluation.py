"""Loss-based evaluation: mean next-token loss on held-out chunks, and reconstruction fidelity of the bottleneck.

Losses skip the first `skip_positions` targets of every chunk: packed chunks start mid-document, so the first
tokens have almost no context and would add the same large constant to every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codeunlearn.bottlenecked import BottleneckedModel
from codeunlearn.codebook import QuantizeOutput
from codeunlearn.runtime import autocast, batches, model_device
from codeunlearn.statistics import flat_code_ids


@torch.no_grad()
def token_losses(
    model: nn.Module, chunks: Tensor, batch_size: int = 8, desc: str | None = None, bf16: bool = False
) -> Tensor:
    """Per-token next-token cross-entropy, (num_chunks, seq_len - 1), in fp32."""
    device = model_device(model)
    out = []
    with autocast(device, bf16):
        for batch in batches(chunks, batch_size, desc=desc):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            out.append(F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").cpu())
    return torch.cat(out)


def mean_loss(
    model: nn.Module,
    chunks: Tensor,
    batch_size: int = 8,
    skip_positions: int = 0,
    desc: str | None = None,
    bf16: bool = False,
) -> float:
    """Mean next-token loss (nat/token) over `chunks`."""
    return float(token_losses(model, chunks, batch_size, desc, bf16)[:, skip_positions:].mean())


@dataclass
class Fidelity:
    """Reconstruction quality of one bottleneck layer on a corpus."""

    layer: int
    fvu_ordinary: float  # fraction of variance unexplained on quantized (ordinary) tokens
    fvu_all: float  # the same, over every token (passthrough tokens reconstruct exactly)
    passthrough_fraction: float
    codes_used: int


@torch.no_grad()
def bottleneck_fidelity(
    bmodel: BottleneckedModel, chunks: Tensor, batch_size: int = 8, bf16: bool = False
) -> list[Fidelity]:
    """FVU of each bottleneck on ordinary tokens and on all tokens (massive-activation tokens carry most of the
    variance, so an all-token FVU alone flatters the quantizer)."""
    sums: dict[int, dict[str, float]] = {
        layer: dict.fromkeys(("err_o", "var_o", "err_a", "var_a", "n", "pass"), 0.0) for layer in bmodel.layers
    }
    used: dict[int, set[int]] = {layer: set() for layer in bmodel.layers}
    states_mean = {layer: bmodel.bottleneck(layer).mean for layer in bmodel.layers}

    def observe(layer: int, states: Tensor, result: QuantizeOutput) -> None:
        x, y = states.float(), result.output.float()
        err = ((x - y) ** 2).sum(-1)
        var = ((x - states_mean[layer]) ** 2).sum(-1)
        ordinary = ~result.passthrough
        s = sums[layer]
        s["err_o"] += float(err[ordinary].sum())
        s["var_o"] += float(var[ordinary].sum())
        s["err_a"] += float(err.sum())
        s["var_a"] += float(var.sum())
        s["n"] += err.numel()
        s["pass"] += float(result.passthrough.sum())
        config = bmodel.config
        ids = flat_code_ids(result.codes, config.num_heads, config.codebook_size)
        used[layer].update(ids[ordinary].flatten().unique().tolist())

    device = model_device(bmodel)
    with autocast(device, bf16):
        for batch in batches(chunks, batch_size):
            bmodel.run_to_deepest(batch.to(device), observe)
    return [
        Fidelity(
            layer=layer,
            fvu_ordinary=s["err_o"] / max(s["var_o"], 1e-12),
            fvu_all=s["err_a"] / max(s["var_a"], 1e-12),
            passthrough_fraction=s["pass"] / max(s["n"], 1),
            codes_used=len(used[layer]),
        )
        for layer, s in sums.items()
    ]
