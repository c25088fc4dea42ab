"""The latent probe: can a linear classifier still read the topic off the edited model's hidden states?

Forget and retain text are packed into chunks of `chunk_tokens` tokens; each chunk becomes one feature vector, the
mean of the residual stream after decoder layer `layer` over the chunk's positions (position 0 is left out: its
state is a massive-activation outlier in many LMs, and a bottleneck passes it through unchanged). A logistic
regression (L2-regularised, standardized features, full-batch L-BFGS for a fixed number of iterations from zero
weights, so the fit is deterministic) is trained on chunks of the forget corpus's TRAIN documents (label 1) against
chunks of the retain corpora's TRAIN documents (label 0), balanced by seeded subsampling, and scored on chunks of
HELD-OUT documents, balanced the same way. `accuracy` (chance 0.5) is the held-out accuracy, `train_accuracy` the
fit's.

`layer=None` probes the middle decoder layer (`num_layers // 2`), or the deepest bottleneck layer of a
`BottleneckedModel` when that is deeper, so the probe always reads states the edit has acted on. The state is read
with a forward hook on the layer as the model holds it, i.e. after a bottleneck's wrapper (transformers 5's
`output_hidden_states` records the wrapped layer's own output, *before* the bottleneck). The forward stops at that
layer. Models whose architecture `codeunlearn.bottleneck.architectures` does not know fall back to `output_hidden_states`.

Topic text differs from other text in its words, so even a base model's states separate the two well: read the row
against the same probe on the base model (an edit that hides the topic brings it towards 0.5).
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch
from torch import Tensor, nn

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import DocumentSplit, load_documents, pack_documents, split_documents
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult
from codeunlearn.runtime import autocast, batches, model_device


class _Reached(Exception):
    """Raised by the hook once the probed layer has run: the later layers are not needed."""


def _layer_list(model: nn.Module) -> nn.ModuleList | None:
    inner = model.model if isinstance(model, BottleneckedModel) else model
    try:
        return decoder_layers(inner)
    except CodeunlearnError:
        return None


def _num_layers(model: nn.Module) -> int:
    layers = _layer_list(model)
    if layers is not None:
        return len(layers)
    config = getattr(model, "config", None)
    count = getattr(config, "num_hidden_layers", None)
    if not isinstance(count, int):
        raise CodeunlearnError(f"cannot tell how many layers {type(model).__name__} has", "pass layer explicitly")
    return count


def default_layer(model: nn.Module) -> int:
    """The middle decoder layer, or the deepest bottleneck layer of a BottleneckedModel when that is deeper."""
    middle = _num_layers(model) // 2
    if isinstance(model, BottleneckedModel):
        return max(middle, *model.layers)
    return middle


@torch.no_grad()
def pooled_states(ctx: EvalContext, chunks: Tensor, layer: int) -> Tensor:
    """Mean (over positions 1 ..) of the residual stream after decoder layer `layer`, one fp32 row per chunk."""
    device = model_device(ctx.model)
    layers = _layer_list(ctx.model)
    captured: list[Tensor] = []

    def hook(module: nn.Module, args: tuple, output) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Reached

    out = []
    handle = layers[layer].register_forward_hook(hook) if layers is not None else None
    try:
        for batch in batches(chunks, ctx.batch_size):
            captured.clear()
            with autocast(device, ctx.bf16):
                if handle is not None:
                    with contextlib.suppress(_Reached):
                        ctx.model(input_ids=batch.to(device), use_cache=False)
                    states = captured[0]
                else:
                    states = ctx.model(input_ids=batch.to(device), use_cache=False, output_hidden_states=True)
                    states = states.hidden_states[layer + 1]
            out.append(states[:, 1:].float().mean(1).cpu())
    finally:
        if handle is not None:
            handle.remove()
    return torch.cat(out)


def fit_logistic(features: Tensor, labels: Tensor, l2: float = 1e-2, iterations: int = 100) -> tuple[Tensor, Tensor]:
    """L2-regularised logistic regression, full batch L-BFGS from zero weights, in float64; (weights, bias)."""
    x, y = features.double(), labels.double()
    weights = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights, bias], max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        optimizer.zero_grad()
        logits = x @ weights + bias
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, y) + 0.5 * l2 * (weights**2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weights.detach(), bias.detach()


def _splits(corpus: str, heldout_fraction: float, split_seed: int, text_field: str) -> DocumentSplit:
    split = split_documents(
        Path(corpus).stem, load_documents(corpus, text_field=text_field), heldout_fraction, split_seed
    )
    if not split.heldout:
        raise CodeunlearnError(f"corpus {corpus} has no held-out documents", "use a heldout_fraction above 0")
    return split


def _sample(chunks: Tensor, count: int, generator: torch.Generator) -> Tensor:
    return chunks[torch.randperm(len(chunks), generator=generator)[:count].sort().values]


def _balanced(
    forget: list[str], retain: list[list[str]], ctx: EvalContext, chunk_tokens: int, max_chunks: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Equal numbers of forget and retain chunks (at most `max_chunks` each), seeded; retain corpora pooled."""
    forget_chunks = pack_documents(forget, ctx.tokenizer, chunk_tokens)
    retain_chunks = torch.cat([pack_documents(docs, ctx.tokenizer, chunk_tokens) for docs in retain])
    count = min(len(forget_chunks), len(retain_chunks), max_chunks)
    generator = torch.Generator().manual_seed(seed)
    return _sample(forget_chunks, count, generator), _sample(retain_chunks, count, generator)


def latent_probe(
    ctx: EvalContext,
    *,
    forget_corpus: str,
    retain_corpora: list[str],
    layer: int | None = None,
    chunk_tokens: int = 128,
    max_chunks: int = 256,
    l2: float = 1e-2,
    iterations: int = 100,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    text_field: str = "text",
    name: str = "latent_probe",
    group: str = "attack",
) -> MetricResult:
    """Held-out accuracy of a linear probe telling forget chunks from retain chunks by their mean hidden state after
    decoder layer `layer` (None: see `default_layer`). Scores `accuracy` (chance 0.5) and `train_accuracy`;
    `max_chunks` caps the chunks per class and split."""
    if not retain_corpora:
        raise CodeunlearnError(f"{name}: no retain corpus given", "pass at least one retain corpus")
    if chunk_tokens < 2 or max_chunks < 1:
        raise CodeunlearnError(f"{name}: chunk_tokens={chunk_tokens}, max_chunks={max_chunks}", "use 2+ and 1+")
    num_layers = _num_layers(ctx.model)
    layer = default_layer(ctx.model) if layer is None else layer
    if not 0 <= layer < num_layers:
        raise CodeunlearnError(f"{name}: layer {layer} out of range", f"use a layer in [0, {num_layers})")
    forget = _splits(forget_corpus, heldout_fraction, split_seed, text_field)
    retain = [_splits(corpus, heldout_fraction, split_seed, text_field) for corpus in retain_corpora]
    train = _balanced(forget.train, [r.train for r in retain], ctx, chunk_tokens, max_chunks, ctx.seed)
    test = _balanced(forget.heldout, [r.heldout for r in retain], ctx, chunk_tokens, max_chunks, ctx.seed + 1)

    def features(pair: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        x = torch.cat([pooled_states(ctx, chunks, layer) for chunks in pair])
        y = torch.cat([torch.ones(len(pair[0])), torch.zeros(len(pair[1]))])
        return x, y

    x_train, y_train = features(train)
    x_test, y_test = features(test)
    # Standardize with the training statistics only; a constant feature keeps scale 1.
    center, scale = x_train.mean(0), x_train.std(0).clamp_min(1e-6)
    weights, bias = fit_logistic((x_train - center) / scale, y_train, l2, iterations)

    def predict(x: Tensor) -> Tensor:
        return torch.sigmoid(((x - center) / scale).double() @ weights + bias)

    train_prob, test_prob = predict(x_train), predict(x_test)
    accuracy = float(((test_prob > 0.5).double() == y_test.double()).double().mean())
    train_accuracy = float(((train_prob > 0.5).double() == y_train.double()).double().mean())
    # One record per held-out chunk: its label and the probe's forget probability.
    details = [
        {"layer": layer, "label": int(label), "probability": float(p)}
        for label, p in zip(y_test, test_prob, strict=True)
    ]
    return MetricResult(
        name=name,
        scores={"accuracy": accuracy, "train_accuracy": train_accuracy},
        chance={"accuracy": 0.5, "train_accuracy": 0.5},
        n=len(y_test),
        details=details,
        group=group,
    )
