"""The quantization attack: does rounding the released weights to fewer bits bring forgotten knowledge back?

Quantizing an unlearned model can undo the unlearning ("Catastrophic Failure of LLM Unlearning via Quantization",
arXiv 2410.16454: knowledge retained went from 21% to 83% with 4-bit weights): a gradient method moves the weights
by little, and rounding them to a coarse grid can put many of them back where the original model had them. Anyone
who downloads the weights can do this, and many users run 4- or 8-bit weights anyway.

`quantization_attack` measures it: on a deep copy of `ctx.model` (the model in the context is never modified), the
weight of every linear layer inside the decoder layers (`nn.Linear`, and transformers' `Conv1D` of GPT-2) is
quantized and dequantized in place for each bit width of `bits`, and the held-out forget and retain losses are
measured with the same split and scoring as `heldout_loss`. `quantize_weights_` is the quantizer on its own.

Schemes (round to nearest, the baselines that GPTQ and AWQ compare against):

- 8 bits: symmetric, one scale per output channel, `scale = max|w| / 127`, integers in [-127, 127] (what
  `torch.ao.quantization.quantize_dynamic` stores with a per-channel symmetric observer of that range);
- 2 to 7 bits: asymmetric min/max per group of `group_size` consecutive input weights of an output channel, as
  GPTQ's round-to-nearest quantizer (`Quantizer` with `sym=False`; AWQ's `pseudo_quantize_tensor` is the same on
  groups that hold both signs): the range [min(w, 0), max(w, 0)] is cut into `2**bits - 1` steps,
  `scale = (high - low) / (2**bits - 1)`, `zero = round(-low / scale)`, `q = clamp(round(w / scale) + zero, 0,
  2**bits - 1)`, `w' = (q - zero) * scale`. A last group shorter than `group_size` (an input size that is not a
  multiple of it) has its own scale and zero.

The quantization is simulated (quantize, then dequantize into the weight's own dtype): a weight-only kernel (GPTQ,
AWQ, bitsandbytes-style W4A16 / W8A16) computes the same products up to accumulation order, without the memory
saving, which does not matter here. (A dynamic int8 kernel also rounds the activations; its stored weights are these.) Embeddings, the
LM head, biases and norms stay in full precision (as in GPTQ / AWQ, and as real 4-bit checkpoints ship them), and so
does every tensor of the bottleneck itself: a codebook or SAE (and an exported model's `bottlenecks`), and the
bottleneck's downstream LoRA adapters (its `lora_A` / `lora_B`; only the base layer they wrap is quantized): the
attack rounds the transformer's own weights, which is all a gradient method changes and all a bottleneck edit
leaves as the base model had them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.attacks.heldout import FORGET, HeldoutText, facts_top1, load_heldout_text
from codeunlearn.evaluate.metrics.base import EvalContext, MetricResult

MIN_BITS, MAX_BITS = 2, 8
DEFAULT_GROUP_SIZE = 128


def check_bits(bits: Sequence[int], group_size: int = DEFAULT_GROUP_SIZE, where: str = "quantization") -> list[int]:
    """The bit widths, checked (integers in 2..8, at least one; `group_size` >= 1); one-line error otherwise."""
    widths = list(bits) if isinstance(bits, (list, tuple)) else [bits]
    bad = [b for b in widths if isinstance(b, bool) or not isinstance(b, int) or not MIN_BITS <= b <= MAX_BITS]
    if bad or not widths:
        raise CodeunlearnError(
            f"{where}: bits={widths} (quantizing weights to {MIN_BITS}..{MAX_BITS} bits)",
            f"pass bit widths between {MIN_BITS} and {MAX_BITS}, e.g. [8, 4]",
        )
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise CodeunlearnError(f"{where}: group_size={group_size!r}", "pass a positive group size, e.g. 128")
    return list(dict.fromkeys(widths))  # each width once, in the order given


def quantize_symmetric(weight: Tensor, bits: int = 8) -> Tensor:
    """Round-to-nearest symmetric quantization with one scale per row (output channel), dequantized: rows of
    `weight` (out, in) become `round(w / s) * s` with `s = max|row| / (2**(bits-1) - 1)`, in fp32. An all-zero row
    stays zero."""
    qmax = 2 ** (bits - 1) - 1
    w = weight.float()
    scale = w.abs().amax(dim=-1, keepdim=True) / qmax
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # a zero row: any scale gives zeros
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def quantize_groupwise(weight: Tensor, bits: int = 4, group_size: int = DEFAULT_GROUP_SIZE) -> Tensor:
    """Round-to-nearest asymmetric (min/max) quantization per group of `group_size` consecutive entries of each row
    of `weight` (out, in), dequantized, in fp32 (GPTQ's RTN quantizer; see the module docstring). A last group
    shorter than `group_size` is quantized on its own."""
    qmax = 2**bits - 1
    groups = []
    for w in weight.float().split(group_size, dim=-1):
        # The grid always holds 0 (GPTQ widens min/max to include it), so a zero weight stays exactly zero.
        low = w.amin(dim=-1, keepdim=True).clamp(max=0)
        high = w.amax(dim=-1, keepdim=True).clamp(min=0)
        flat = high == low  # an all-zero group: GPTQ gives it the range [-1, 1]; it stays zero either way
        low, high = torch.where(flat, -torch.ones_like(low), low), torch.where(flat, torch.ones_like(high), high)
        scale = (high - low) / qmax
        zero = torch.round(-low / scale)
        groups.append((torch.clamp(torch.round(w / scale) + zero, 0, qmax) - zero) * scale)
    return torch.cat(groups, dim=-1)


def quantize_matrix(weight: Tensor, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> Tensor:
    """`weight` (out, in) quantized with the scheme of `bits` (8: symmetric per channel; fewer: group-wise
    asymmetric) and dequantized into its own dtype."""
    if bits == MAX_BITS:
        return quantize_symmetric(weight, bits).to(weight.dtype)
    return quantize_groupwise(weight, bits, group_size).to(weight.dtype)


def _protected_modules(model: nn.Module) -> set[int]:
    """Ids of the modules (and their submodules) that belong to a bottleneck: never quantized."""
    owners = [getattr(model, name, None) for name in ("bottlenecks", "adapters")]  # BottleneckedModel or an export
    return {id(m) for owner in owners if isinstance(owner, nn.Module) for m in owner.modules()}


def quantizable_linears(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(name, module) of every `nn.Linear` / `Conv1D` inside the decoder layers of `model` (a transformers causal
    LM, a `BottleneckedModel` or an exported codeunlearn model) that `quantize_weights_` quantizes: not a
    bottleneck's own module, not a LoRA adapter's `lora_A` / `lora_B` (the base layer a LoRA wraps is included)."""
    inner = model.model if isinstance(model, BottleneckedModel) else model
    protected = _protected_modules(model)
    found = []
    for index, layer in enumerate(decoder_layers(inner)):
        skipped: set[int] = set()
        for name, module in layer.named_modules():
            if id(module) in skipped or id(module) in protected:
                skipped.update(id(m) for m in module.modules())
                continue
            if any(part.startswith("lora_") for part in name.split(".")):
                continue  # peft's adapter matrices (lora_A / lora_B and their dicts)
            if isinstance(module, (nn.Linear, Conv1D)):
                found.append((f"{index}.{name}", module))
    return found


@torch.no_grad()
def quantize_weights_(model: nn.Module, bits: int, group_size: int = DEFAULT_GROUP_SIZE) -> int:
    """Quantize and dequantize, in place, the weight of every linear layer inside the decoder layers of `model`
    (`quantizable_linears`: embeddings, LM head, biases, norms and the bottleneck's own tensors stay as they are).
    `bits` 8: symmetric, one scale per output channel; 2..7: asymmetric min/max per group of `group_size` input
    weights. Returns how many weight matrices were quantized; a one-line `CodeunlearnError` for bits outside 2..8
    or a model with none to quantize (nothing is changed then)."""
    check_bits([bits], group_size)
    linears = quantizable_linears(model)
    if not linears:
        raise CodeunlearnError(
            f"{type(model).__name__} has no nn.Linear / Conv1D weight inside its decoder layers to quantize",
            "pass a transformers causal LM whose decoder layers hold linear layers",
        )
    for _, module in linears:
        weight = module.weight
        # Conv1D stores (in, out): its output channels are columns, so quantize the transpose.
        matrix = weight.data.T if isinstance(module, Conv1D) else weight.data
        quantized = quantize_matrix(matrix, bits, group_size)
        weight.data.copy_(quantized.T if isinstance(module, Conv1D) else quantized)
    return len(linears)


def quantization_attack(
    ctx: EvalContext,
    *,
    forget_corpus: str,
    retain_corpora: Sequence[str] = (),
    bits: Sequence[int] = (8, 4),
    group_size: int = DEFAULT_GROUP_SIZE,
    heldout_fraction: float = 0.2,
    split_seed: int = 0,
    max_tokens: int | None = 8192,
    seq_len: int = 256,
    skip_positions: int = 1,
    text_field: str = "text",
    facts_path: str | None = None,
    fact_relations: Sequence[str] | None = None,
    name: str = "quantization",
    group: str = "attack",
) -> MetricResult:
    """Held-out forget and retain losses of `ctx.model` and of copies of it with weights quantized to each width of
    `bits` (`quantize_weights_`; `group_size` for widths below 8).

    Args:
        ctx: the model under test (never modified).
        forget_corpus: the topic corpus; its held-out documents are scored as `heldout_loss` scores them.
        retain_corpora: corpora whose held-out documents measure side effects (the retain loss is their mean).
        bits: bit widths, each in 2..8.
        group_size: input weights per scale below 8 bits.
        heldout_fraction, split_seed, max_tokens, seq_len, skip_positions, text_field: as in `heldout_loss`.
        facts_path, fact_relations: known_1000-schema facts (a fact topic's held-out probes) also scored with
            `fact_cloze` on every model, filtered to `fact_relations`.
        name, group: the result's name and report section.

    Scores: `forget_loss` and `retain_loss` (unquantized), and per width b `forget_loss_{b}bit`, `retain_loss_{b}bit`
    and `forget_recovery_{b}bit` = forget_loss - forget_loss_{b}bit (positive: quantizing brought knowledge back).
    Without retain corpora there are no retain scores. With `facts_path` also `facts_top1`, `facts_top1_{b}bit` and
    `facts_recovery_{b}bit` = facts_top1_{b}bit - facts_top1 (top-1 accuracy regained). Details: every loss per
    corpus, and the matrices quantized.
    """
    widths = check_bits(bits, group_size, name)
    # Refuse a model with nothing to quantize before any text is read or scored.
    matrices = len(quantizable_linears(ctx.model))
    if matrices == 0:
        raise CodeunlearnError(
            f"{name}: {type(ctx.model).__name__} has no nn.Linear / Conv1D weight inside its decoder layers",
            "pass a transformers causal LM whose decoder layers hold linear layers",
        )
    text = load_heldout_text(
        ctx, forget_corpus, retain_corpora, heldout_fraction, split_seed, seq_len, max_tokens, skip_positions,
        text_field, name,
    )  # fmt: skip

    def measure(model: nn.Module) -> dict[str, float]:
        values = text.losses(ctx, model)
        if facts_path is not None:
            values["facts_top1"] = facts_top1(ctx, model, facts_path, fact_relations)
        return values

    measured = {"none": measure(ctx.model)}
    for width in widths:
        work = copy.deepcopy(ctx.model)  # from the released weights each time, one copy at a time
        quantize_weights_(work, width, group_size)
        measured[f"{width}bit"] = measure(work)
        del work
    scores = quantization_scores(measured, widths, text)
    details = [
        {"weights": weights, "matrices": 0 if weights == "none" else matrices, "group_size": group_size, **values}
        for weights, values in measured.items()
    ]
    return MetricResult(name=name, scores=scores, n=text.tokens, details=details, group=group)


def quantization_scores(
    measured: dict[str, dict[str, float]], widths: Sequence[int], text: HeldoutText
) -> dict[str, float]:
    """The scores of `quantization_attack` from the losses (and facts' top-1 accuracy, where measured) of the released
    weights (`measured["none"]`) and of each width (`measured["{b}bit"]`)."""
    scores = {"forget_loss": measured["none"][FORGET]}
    retain = text.retain_mean(measured["none"])
    if retain is not None:
        scores["retain_loss"] = retain
    for width in widths:
        at = measured[f"{width}bit"]
        scores[f"forget_loss_{width}bit"] = at[FORGET]
        if retain is not None:
            scores[f"retain_loss_{width}bit"] = text.retain_mean(at)
        scores[f"forget_recovery_{width}bit"] = scores["forget_loss"] - at[FORGET]
    if "facts_top1" in measured["none"]:
        scores["facts_top1"] = measured["none"]["facts_top1"]
        for width in widths:
            scores[f"facts_top1_{width}bit"] = measured[f"{width}bit"]["facts_top1"]
            scores[f"facts_recovery_{width}bit"] = scores[f"facts_top1_{width}bit"] - scores["facts_top1"]
    return scores
