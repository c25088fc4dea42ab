"""Loss-based evaluation: mean next-token loss on held-out chunks, and reconstruction fidelity of the bottleneck
(codebook: FVU; SAE: L0, FVU, dead features and the "CE loss recovered" splice).

Losses skip the first `skip_positions` targets of every chunk: packed chunks start mid-document, so the first
tokens have almost no context and would add the same large constant to every model.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from codeunlearn import distributed
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.codebook.bottleneck import QuantizeOutput, flat_code_ids
from codeunlearn.kinds.sae.bottleneck import SAEOutput
from codeunlearn.runtime import autocast, batches, model_device


@torch.no_grad()
def token_losses(
    model: nn.Module, chunks: Tensor, batch_size: int = 8, desc: str | None = None, bf16: bool = False
) -> Tensor:
    """Per-token next-token cross-entropy, (num_chunks, seq_len - 1), in fp32. Data-parallel, each process
    computes its share of `chunks` and every process returns all the rows, in order."""
    device = model_device(model)
    out = [torch.zeros(0, chunks.shape[1] - 1)]
    with autocast(device, bf16):
        for batch in batches(distributed.share(chunks), batch_size, desc=desc):
            batch = batch.to(device)
            logits = model(input_ids=batch, use_cache=False).logits[:, :-1].float()
            out.append(F.cross_entropy(logits.transpose(1, 2), batch[:, 1:], reduction="none").cpu())
    return distributed.gather_rows(torch.cat(out))


def next_token_nll(model: nn.Module, chunks: Tensor) -> Tensor:
    """Mean next-token cross-entropy (nat/token) of `model` on packed chunks, differentiable."""
    logits = model(input_ids=chunks, use_cache=False).logits[:, :-1].float()
    return F.cross_entropy(logits.transpose(1, 2), chunks[:, 1:])


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
    if bmodel.config.has_activations:
        raise CodeunlearnError("bottleneck_fidelity measures codebooks", "use sae_quality for an SAE bottleneck")
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


@dataclass
class SAEQuality:
    """How well an SAE reconstructs its layer's states on a corpus (counted tokens: passthrough ones excluded)."""

    layer: int
    l0: float  # features active per token
    fvu: float  # fraction of variance unexplained by the reconstruction (no error term)
    dead_features: int  # features that never fire on the corpus
    num_features: int
    tokens: int


@torch.no_grad()
def sae_quality(bmodel: BottleneckedModel, chunks: Tensor, batch_size: int = 8, bf16: bool = False) -> list[SAEQuality]:
    """L0, FVU and dead features of every SAE of `bmodel` on `chunks` (the unedited SAEs)."""
    if not bmodel.config.has_activations:
        raise CodeunlearnError("sae_quality measures SAE bottlenecks", "use bottleneck_fidelity for a codebook")
    sums = {layer: dict.fromkeys(("err", "sq", "l0", "n"), 0.0) for layer in bmodel.layers}
    totals = {layer: torch.zeros(bmodel.bottleneck(layer).sae.cfg.d_in, dtype=torch.float64) for layer in bmodel.layers}
    fired = {layer: torch.zeros(bmodel.num_features(layer), dtype=torch.bool) for layer in bmodel.layers}

    def observe(layer: int, states: Tensor, result: SAEOutput) -> None:
        ordinary = ~result.passthrough
        x, acts = states.float()[ordinary], result.acts[ordinary]
        recon = bmodel.bottleneck(layer).decode(acts)
        s = sums[layer]
        s["err"] += float(((x - recon) ** 2).sum())
        s["sq"] += float((x.double() ** 2).sum())
        s["l0"] += float((acts > 0).sum())
        s["n"] += len(x)
        totals[layer] += x.double().sum(0).cpu()
        fired[layer] |= (acts > 0).any(0).cpu()

    saved = list(bmodel.edits)
    bmodel.clear_edits()
    device = model_device(bmodel)
    try:
        with autocast(device, bf16):
            for batch in batches(chunks, batch_size):
                bmodel.run_to_deepest(batch.to(device), observe)
    finally:
        for edit in saved:
            bmodel.apply_edit(edit)
    out = []
    for layer, s in sums.items():
        n = max(s["n"], 1.0)
        variance = s["sq"] - float((totals[layer] ** 2).sum()) / n  # sum of squared deviations from the mean
        out.append(
            SAEQuality(
                layer=layer,
                l0=s["l0"] / n,
                fvu=s["err"] / max(variance, 1e-12),
                dead_features=int((~fired[layer]).sum()),
                num_features=bmodel.num_features(layer),
                tokens=int(s["n"]),
            )
        )
    return out


@torch.no_grad()
def sae_loss_recovered(
    bmodel: BottleneckedModel, chunks: Tensor, batch_size: int = 8, skip_positions: int = 0, bf16: bool = False
) -> dict[str, float]:
    """The usual "CE loss recovered" of the SAEs (no edits): mean next-token loss of the base model, with every SAE's
    bare reconstruction spliced in (no error term), with the states zero-ablated, and with the error term kept;
    recovered = (zero-ablation - spliced) / (zero-ablation - base)."""
    saved = list(bmodel.edits)
    bmodel.clear_edits()
    try:
        with bmodel.disabled():
            base = mean_loss(bmodel, chunks, batch_size, skip_positions, bf16=bf16)
        with bmodel.splice("reconstruction"):
            spliced = mean_loss(bmodel, chunks, batch_size, skip_positions, bf16=bf16)
        with bmodel.splice("zero_ablation"):
            zero = mean_loss(bmodel, chunks, batch_size, skip_positions, bf16=bf16)
        with bmodel.splice("error_term"):
            error_term = mean_loss(bmodel, chunks, batch_size, skip_positions, bf16=bf16)
    finally:
        for edit in saved:
            bmodel.apply_edit(edit)
    return {
        "base": base,
        "spliced": spliced,
        "zero_ablation": zero,
        "with_error_term": error_term,
        "delta_spliced": spliced - base,
        "recovered": (zero - spliced) / (zero - base) if zero != base else float("nan"),
    }
