"""Linear-projection export: a *different method* from the codebook bottleneck, folded into the stock weights.

Given an orthonormal basis U (k x d) of feature directions and a decoder layer L, the directions are projected out
of every write into the residual stream up to and including layer L: the token (and position) embeddings and each
layer's attention-output and MLP-output projections, W <- (I - U^T U) W. The residual stream is the sum of these
writes and normalisation layers only read it, so at every point up to the output of layer L the stream has no
component along U, while later layers and the unembedding are the base model's. `projection_hooks` computes the
same model with hooks on the writers instead of changed weights (to check a fold). The result keeps the stock
architecture and `model_type`, so it loads with plain `from_pretrained`, no remote code.

Architectures whose layers normalise their output *before* adding it to the stream (Gemma 2/3, OLMo 2:
post-attention/post-feedforward norms) cannot be folded this way and are refused. Tied input/output embeddings are
untied, so the unembedding stays the base model's.

The directions come from data with `mean_difference_directions` (the difference of mean layer-L states on forget
vs retain text, then, for rank > 1, the directions along which forget states carry the most extra energy), from an
SAE edit with `sae_edit_directions` (the decoder rows of the features it selected at layer L), or from any other
source as a (k, d) tensor. Taken from an SAE edit, the result is still this linear method, not the edit: the edit
changes its features only where they fire (and its gate is on), the projection removes their span from every token.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from codeunlearn import __version__
from codeunlearn.bottleneck.architectures import check_layer_indices, decoder_layers, hidden_size, model_type_of
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.bottleneck.registry import config_class_for
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import mean_loss
from codeunlearn.evaluate.loss_table import add_deltas
from codeunlearn.export.card import EVAL_REPORT_NAME, LINEAR_METHOD, LINEAR_SPEC_NAME, write_model_card
from codeunlearn.export.save import VERIFY_TOLERANCE, probe_tokens
from codeunlearn.io import atomic_directory, atomic_write_text, load_tensors, stamp_checksums
from codeunlearn.runtime import batches, model_device

# model_type -> (embedding modules from the *ForCausalLM root, modules of each decoder layer that write the stream)
RESIDUAL_WRITERS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "llama": (("model.embed_tokens",), ("self_attn.o_proj", "mlp.down_proj")),
    "mistral": (("model.embed_tokens",), ("self_attn.o_proj", "mlp.down_proj")),
    "qwen2": (("model.embed_tokens",), ("self_attn.o_proj", "mlp.down_proj")),
    "qwen3": (("model.embed_tokens",), ("self_attn.o_proj", "mlp.down_proj")),
    "gemma": (("model.embed_tokens",), ("self_attn.o_proj", "mlp.down_proj")),
    "phi3": (("model.embed_tokens",), ("self_attn.o_proj", "mlp.down_proj")),
    "olmo": (("model.embed_tokens",), ("self_attn.o_proj", "mlp.down_proj")),
    "gpt2": (("transformer.wte", "transformer.wpe"), ("attn.c_proj", "mlp.c_proj")),
    "gpt_neox": (("gpt_neox.embed_in",), ("attention.dense", "mlp.dense_4h_to_h")),
}
NOT_FOLDABLE = {
    "gemma2": "its layers normalise their outputs before adding them to the residual stream",
    "gemma3_text": "its layers normalise their outputs before adding them to the residual stream",
    "olmo2": "its layers normalise their outputs before adding them to the residual stream",
    "mixtral": "its MoE experts write the residual stream through fused expert weights",
}


class _Stop(Exception):
    """Ends a forward pass once the wanted layer's states are captured."""


def _check_foldable(model: nn.Module) -> tuple[tuple[str, ...], tuple[str, ...]]:
    model_type = model_type_of(model)
    if model_type in NOT_FOLDABLE:
        raise CodeunlearnError(
            f"the linear-projection export cannot be folded into {model_type} ({NOT_FOLDABLE[model_type]})",
            "use the bottleneck export (codeunlearn export --mode bottleneck)",
        )
    if model_type not in RESIDUAL_WRITERS:
        raise CodeunlearnError(
            f"no residual-stream writers known for model_type={model_type!r}",
            f"use one of {sorted(RESIDUAL_WRITERS)} or the bottleneck export",
        )
    return RESIDUAL_WRITERS[model_type]


def check_directions(directions: Tensor, dim: int) -> Tensor:
    """Validate a (k, d) basis and return it orthonormalised in float64 (QR keeps the span)."""
    if directions.dim() == 1:
        directions = directions.unsqueeze(0)
    if directions.dim() != 2 or directions.shape[1] != dim or not 1 <= directions.shape[0] <= dim:
        raise CodeunlearnError(
            f"directions have shape {tuple(directions.shape)}, expected (k, {dim}) with 1 <= k <= {dim}",
            "pass a (k, hidden_size) tensor of feature directions",
        )
    if not torch.isfinite(directions).all():
        raise CodeunlearnError("directions contain NaN or inf", "recompute them")
    q, r = torch.linalg.qr(directions.double().T)
    if bool((r.diagonal().abs() < 1e-8 * max(float(r.abs().max()), 1e-30)).any()):
        raise CodeunlearnError("the directions are linearly dependent (or zero)", "pass independent directions")
    return q.T.contiguous()


# ------------------------------------------------------------------------------------------------ directions


@torch.no_grad()
def layer_states(model: nn.Module, chunks: Tensor, layer: int, batch_size: int = 8) -> Tensor:
    """Residual-stream states after decoder layer `layer`, (tokens, d) in fp32, position 0 left out (the attention
    sink's state is huge and content-free). The forward stops at `layer`."""
    layers = decoder_layers(model)
    check_layer_indices([layer], len(layers))
    captured: list[Tensor] = []

    def capture(module: nn.Module, args: tuple, output: Any) -> None:
        h = output[0] if isinstance(output, tuple) else output
        captured.append(h[:, 1:].reshape(-1, h.shape[-1]).float().cpu())
        raise _Stop

    handle = layers[layer].register_forward_hook(capture)
    device = model_device(model)
    try:
        for batch in batches(chunks, batch_size):
            with contextlib.suppress(_Stop):
                model(input_ids=batch.to(device), use_cache=False)
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.zeros(0, hidden_size(model))


def mean_difference_directions(forget_states: Tensor, retain_states: Tensor, rank: int = 1) -> Tensor:
    """An orthonormal (rank, d) basis of topic directions from layer states of forget and retain text.

    The first direction is the difference of the mean states (forget minus retain), normalised. Further directions
    are the top eigenvectors, orthogonal to the first, of E_forget[(h - m)(h - m)^T] - E_retain[(h - m)(h - m)^T]
    with m the retain mean: the directions along which forget text carries the most energy that retain text lacks.
    """
    if len(forget_states) == 0 or len(retain_states) == 0:
        raise CodeunlearnError("no forget or retain states to derive directions from", "pass longer corpora")
    if rank < 1 or rank > forget_states.shape[1]:
        raise CodeunlearnError(f"rank must be in [1, {forget_states.shape[1]}], got {rank}", "use e.g. --rank 1")
    forget, retain = forget_states.double(), retain_states.double()
    retain_mean = retain.mean(0)
    difference = forget.mean(0) - retain_mean
    if float(difference.norm()) == 0.0:
        raise CodeunlearnError("forget and retain states have the same mean", "pass corpora that differ")
    directions = [difference / difference.norm()]
    if rank > 1:
        f, r = forget - retain_mean, retain - retain_mean
        extra = f.T @ f / len(f) - r.T @ r / len(r)
        u = directions[0].unsqueeze(1)
        complement = torch.eye(len(u), dtype=extra.dtype) - u @ u.T
        _, vectors = torch.linalg.eigh(complement @ extra @ complement)  # ascending eigenvalues
        directions += list(vectors.T.flip(0)[: rank - 1])
    return check_directions(torch.stack(directions), forget_states.shape[1])


def sae_edit_directions(bmodel: BottleneckedModel, edit: Edit, layer: int | None = None) -> tuple[Tensor, int]:
    """The directions an SAE edit names at one layer: the decoder rows (W_dec) of its selected features there, a
    (k, d) fp32 tensor (orthonormalised by QR when folded), and that layer. `layer=None` takes the edit's only
    layer; an edit with features at several layers needs one named."""
    if not bmodel.config.has_activations or not config_class_for(edit.kind).has_activations:
        raise CodeunlearnError(
            "linear mode takes directions from an SAE edit (the decoder rows of its features)",
            "pass an SAE bottleneck and an edit selected from it, or --directions / corpora",
        )
    bmodel.check_edit(edit)  # made for this SAE: fingerprint, layers and feature ids
    layers = sorted(layer for layer, codes in edit.layers.items() if codes.codes)
    if layer is None and len(layers) != 1:
        raise CodeunlearnError(f"edit {edit.topic!r} has features at layers {layers}", "pass --layer L to pick one")
    layer = layers[0] if layer is None else layer
    if layer not in layers:
        raise CodeunlearnError(f"edit {edit.topic!r} has no features at layer {layer}", f"use a layer of {layers}")
    features = torch.tensor(edit.layers[layer].codes, dtype=torch.long)
    decoder = bmodel.bottleneck(layer).sae.W_dec.detach()
    return decoder[features.to(decoder.device)].float().cpu(), layer


def read_directions(path: str | Path) -> Tensor:
    """The (k, d) tensor `directions` of a safetensors file."""
    tensors = load_tensors(path, "directions file")
    if "directions" not in tensors:
        raise CodeunlearnError(f"{path} has no tensor named `directions`", "save a (k, hidden) tensor as `directions`")
    return tensors["directions"]


def directions_from_sae_edit(
    model: nn.Module, bottleneck_dir: str | Path, edit: Edit, layer: int | None = None
) -> tuple[Tensor, int]:
    """`sae_edit_directions` with the edit's SAE attached to `model` for the reading and detached again, so that
    nothing but the projection is folded afterwards."""
    bmodel = attach_bottleneck(model, bottleneck_dir)
    try:
        return sae_edit_directions(bmodel, edit, layer)
    finally:
        bmodel.detach()


# ------------------------------------------------------------------------------------------------ folding


def _untie_output_embeddings(model: nn.Module) -> None:
    """Give the LM head its own copy of a tied embedding matrix (it must keep reading the unprojected one)."""
    output, inputs = model.get_output_embeddings(), model.get_input_embeddings()
    if output is not None and output.weight is inputs.weight:
        output.weight = nn.Parameter(inputs.weight.detach().clone(), requires_grad=False)
    for config in (model.config, model.config.get_text_config()):
        if getattr(config, "tie_word_embeddings", False):
            config.tie_word_embeddings = False
    if hasattr(model, "all_tied_weights_keys"):  # transformers 5 keeps the tie map on the model
        model.all_tied_weights_keys = {}


@torch.no_grad()
def fold_projection(model: nn.Module, directions: Tensor, layer: int) -> None:
    """Project `directions` (k, d) out of every residual-stream write up to and including decoder layer `layer`,
    in place (in float64, cast back to each weight's dtype)."""
    embeddings, writers = _check_foldable(model)
    layers = decoder_layers(model)
    check_layer_indices([layer], len(layers))
    basis = check_directions(directions, hidden_size(model))
    _untie_output_embeddings(model)

    def project(vectors: Tensor) -> Tensor:  # rows are vectors in the stream: v <- v - (v U^T) U
        u = basis.to(vectors.device)
        v = vectors.double()
        return (v - (v @ u.T) @ u).to(vectors.dtype)

    for name in embeddings:
        module = model.get_submodule(name)
        module.weight.copy_(project(module.weight))  # (vocab or positions, d): one stream vector per row
    for index in range(layer + 1):
        for name in writers:
            module = layers[index].get_submodule(name)
            if isinstance(module, Conv1D):  # y = x W + b with W (in, d): rows of W are stream vectors
                module.weight.copy_(project(module.weight))
            else:  # nn.Linear: y = W x + b with W (d, in): columns are stream vectors
                module.weight.copy_(project(module.weight.T).T)
            if module.bias is not None:
                module.bias.copy_(project(module.bias.unsqueeze(0)).squeeze(0))


@contextlib.contextmanager
def projection_hooks(model: nn.Module, directions: Tensor, layer: int) -> Iterator[None]:
    """Project `directions` out of the output of every residual-stream writer up to layer `layer` with forward hooks:
    the model `fold_projection` builds, computed without touching a weight (to check a fold against)."""
    embeddings, writers = _check_foldable(model)
    layers = decoder_layers(model)
    check_layer_indices([layer], len(layers))  # before indexing: a layer past the end is one line, not IndexError
    basis = check_directions(directions, hidden_size(model))

    def project(module: nn.Module, args: tuple, output: Tensor) -> Tensor:
        u = basis.to(device=output.device)
        return (output.double() - (output.double() @ u.T) @ u).to(output.dtype)

    modules = [model.get_submodule(name) for name in embeddings]
    modules += [layers[index].get_submodule(name) for index in range(layer + 1) for name in writers]
    handles = [module.register_forward_hook(project) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def fold_checked(model: nn.Module, directions: Tensor, layer: int) -> None:
    """`fold_projection`, then a check that the folded weights give the logits `projection_hooks` gives on probe
    tokens (a fold that does not reproduce the projection is a bug, reported before anything is written)."""
    probe = probe_tokens(model.get_input_embeddings().weight.shape[0]).to(model_device(model))
    with projection_hooks(model, directions, layer):
        hooked = model(input_ids=probe, use_cache=False).logits.float()
    fold_projection(model, directions, layer)
    folded = model(input_ids=probe, use_cache=False).logits.float()
    if not torch.allclose(folded, hooked, rtol=1e-4, atol=1e-4 * max(float(hooked.abs().max()), 1.0)):
        raise CodeunlearnError(
            "the folded weights do not reproduce the projection", "report this as a bug; nothing was written"
        )


def fold_with_losses(
    model: nn.Module, directions: Tensor, layer: int, heldout: dict[str, Tensor], batch_size: int = 8
) -> list[dict[str, Any]]:
    """`fold_checked`, measuring held-out forget and retain loss before and after: the loss-table rows of the base
    model and of the projection, with changes against the base row (`codeunlearn.evaluate.loss_table`)."""

    def row(name: str) -> dict[str, Any]:
        losses = {k: mean_loss(model, v, batch_size, 0, None, False) for k, v in heldout.items()}
        return {"row": name, "codes_removed": None, "forget_loss": losses["forget"], "retain_loss": losses["retain"]}

    rows = [row("base")]
    fold_checked(model, directions, layer)
    rows.append(row(f"linear projection (layer {layer}, rank {len(directions)})"))
    add_deltas(rows, reference="base")
    return rows


# ------------------------------------------------------------------------------------------------ saving


def save_linear_export(
    model: nn.Module,
    tokenizer: Any,
    output_dir: str | Path,
    directions: Tensor,
    layer: int,
    overwrite: bool = False,
    directions_method: str = "given",
    provenance: dict[str, Any] | None = None,
    eval_report: dict[str, Any] | None = None,
    verify: bool = True,
    license: str | None = None,
) -> Path:
    """Save a model whose weights `fold_projection` already changed, with its stock `model_type` (plain
    `save_pretrained`), the tokenizer, `codeunlearn_linear.json` (the directions and how they were made), the eval
    report if given, and a model card labelling the method. Atomic: a temp directory renamed into place, after
    (with `verify`) reloading it with plain `AutoModelForCausalLM.from_pretrained` and comparing logits."""
    if tokenizer is None:
        raise CodeunlearnError(
            "no tokenizer to export", "pass the base model's tokenizer (codeunlearn export --tokenizer NAME_OR_DIR)"
        )
    basis = check_directions(directions, hidden_size(model))
    spec = {
        "method": LINEAR_METHOD,
        "codeunlearn_version": __version__,
        "base_model": str(getattr(model.config, "_name_or_path", "") or ""),
        "base_model_type": model_type_of(model),
        "layer": int(layer),
        "rank": int(basis.shape[0]),
        "directions_method": directions_method,
        "directions": basis.tolist(),
        **(provenance or {}),
    }
    with atomic_directory(output_dir, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        stamp_checksums(tmp)  # transformers writes no checksum; our loaders check this one
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / LINEAR_SPEC_NAME, json.dumps(spec, indent=1) + "\n")
        if eval_report is not None:
            atomic_write_text(tmp / EVAL_REPORT_NAME, json.dumps(eval_report, indent=1) + "\n")
        write_model_card(tmp, license=license)
        if verify:
            verify_stock_export(model, tmp)
    return Path(output_dir)


@torch.no_grad()
def verify_stock_export(model: nn.Module, path: str | Path, what: str = "linear export") -> float:
    """Reload `path` (a stock-architecture export: `what`) with plain `AutoModelForCausalLM` (no remote code) and
    compare its logits with `model`'s on probe tokens; returns the max |difference| or raises `CodeunlearnError`."""
    from transformers import AutoModelForCausalLM

    dtype = next(model.parameters()).dtype
    device = model_device(model)
    loaded = AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype).to(device).eval()
    if type(loaded) is not type(model):
        raise CodeunlearnError(
            f"{path} loads as {type(loaded).__name__}, not {type(model).__name__}", "report this as a bug"
        )
    tokens = probe_tokens(model.get_input_embeddings().weight.shape[0]).to(device)
    expected = model(input_ids=tokens, use_cache=False).logits.float()
    difference = float((loaded(input_ids=tokens, use_cache=False).logits.float() - expected).abs().max())
    tolerance = VERIFY_TOLERANCE if dtype == torch.float32 else 1e-2
    if not difference <= tolerance * max(float(expected.abs().max()), 1.0):
        raise CodeunlearnError(
            f"the reloaded {what} differs from the model in memory (max |logit difference| {difference:.3g})",
            "report this as a bug; the directory was not written",
        )
    return difference
