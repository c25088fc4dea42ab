"""Representation Misdirection for Unlearning (RMU).

Paper: Li et al. 2024, "The WMDP Benchmark: Measuring and Reducing Malicious Use With Unlearning" (ICML), method
and released code (`centerforaisafety/wmdp`, `rmu/unlearn.py`).

With h^ℓ(x) the residual stream after decoder layer ℓ (the layer's output), u a fixed random unit vector and h_ref
the frozen starting model:

    forget loss = MSE( h_θ^ℓ(x_f), c·u )               (mean over tokens and hidden dimensions)
    retain loss = α · MSE( h_θ^ℓ(x_r), h_ref^ℓ(x_r) )
    loss        = forget loss + retain loss

Only the MLPs of layers ℓ-2, ℓ-1, ℓ are trained; forwards stop at layer ℓ (nothing later affects the loss). As in the
released code, u is drawn uniformly from [0, 1)^d (`torch.rand`) and normalised, and h_ref needs no model copy: it is
the same forward with the trained tensors' starting values swapped in (`torch.func.functional_call`).

Paper hyperparameters (Zephyr-7B, 32 layers, hidden 4096): ℓ = 7, layers 5-7, only the MLP output projection
(`param_ids=[6]`, Mistral's `mlp.down_proj`), c = 6.5, α = 1200, AdamW lr 5e-5 without weight decay, warm-up,
schedule or clipping, 150 batches of 4 sequences of up to 512 tokens.

Scaled to SmolLM2-135M (30 layers, hidden 576), and why:

- **Layer.** Same relative depth: ℓ = round(7/32 · num_layers) = 7 for 30 layers, so layers 5-7 are trained
  (`layer=None` computes this for any depth; it is recorded in the result).
- **c.** The forget loss pulls h^ℓ towards c·u, so what matters is c relative to the norms h^ℓ already has, and
  those differ by model and layer (published RMU runs on Llama-3-8B use c = 30 at layer 15). With `steering_coeff`
  unset, c = `steering_norm_ratio` x the mean per-token norm of the frozen model's h^ℓ on forget text (position 0,
  the attention sink with its outsized norm, left out), measured once before training and recorded. Our choice is a
  ratio of 3: c·u then dominates the residual several times over, as RMU intends (the forget activations become
  noise to the later layers). We had no measured layer-7 norm of Zephyr to copy the paper's own ratio from, so 3 is
  our choice, not the paper's; sweep it with `--steering_norm_ratio` when comparing.
- **α.** Unchanged (1200). Both terms are mean squared errors in the same space, so with c proportional to the norm
  of h^ℓ both scale with the squared norm and with 1/hidden size alike; their balance carries over.
- **Learning rate.** 5e-5 x 4096/576 ≈ 3.5e-4 (the muP width rule used for every baseline here); constant, no weight
  decay, warm-up or clipping, as released.
- **Batches.** 150 steps of 8 chunks x 256 tokens: the 2,048 tokens per step of 4 x 512.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from transformers.pytorch_utils import Conv1D

from codeunlearn.baselines.base import MethodConfig, UnlearningMethod
from codeunlearn.bottleneck.architectures import decoder_layers, hidden_size, model_type_of
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.runtime import batches

PAPER_LAYER, PAPER_NUM_LAYERS = 7, 32
MLP_PARAMS = ("output", "all")
NORM_CHUNKS = 32  # forget chunks whose layer-ℓ norms set c; enough for a stable mean, cheap (stops at layer ℓ)


@dataclass
class RMUConfig(MethodConfig):
    """RMU: the released optimiser settings (scaled) plus layer, steering coefficient and retain weight α."""

    learning_rate: float = field(default=3.5e-4, metadata={"help": "AdamW learning rate (paper 5e-5, scaled)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay (released code: none)."})
    warmup_ratio: float = field(default=0.0, metadata={"help": "Fraction of max_steps in linear warm-up."})
    lr_scheduler: Literal["linear", "cosine", "constant"] = field(
        default="constant", metadata={"help": "Learning-rate schedule (released code: constant)."}
    )
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping (0 = none, as released)."})
    max_steps: int = field(default=150, metadata={"help": "Optimizer steps (paper: 150 batches)."})
    batch_size: int = field(default=8, metadata={"help": "Chunks per micro-batch from each corpus."})
    layer: int | None = field(
        default=None,
        metadata={"help": "Layer ℓ whose output is steered (default: round(7/32 x num_layers), the paper's depth)."},
    )
    steering_coeff: float | None = field(
        default=None,
        metadata={"help": "c; default: steering_norm_ratio x the mean token norm at layer ℓ on forget text."},
    )
    steering_norm_ratio: float = field(
        default=3.0, metadata={"help": "c relative to the mean token norm at ℓ (used when steering_coeff is unset)."}
    )
    alpha: float = field(default=1200.0, metadata={"help": "Weight α of the retain MSE (paper: 1200)."})
    mlp_params: Literal["output", "all"] = field(
        default="output",
        metadata={"help": "Train each MLP's output projection (as released) or all its weights."},
    )
    vector_seed: int = field(default=0, metadata={"help": "Seed of the random direction u."})

    def __post_init__(self) -> None:
        super().__post_init__()
        # `layer` is checked against the model's depth when it is known (`RMU.resolve_layer`); here only its sign.
        if self.layer is not None:
            check_range("layer", self.layer, self.layer >= 0, ">= 0 (a decoder layer index), or leave it out")
        if self.steering_coeff is not None:
            check_range(
                "steering_coeff",
                self.steering_coeff,
                math.isfinite(self.steering_coeff) and self.steering_coeff > 0,
                "> 0, or leave it out",
            )
        check_range(
            "steering_norm_ratio",
            self.steering_norm_ratio,
            math.isfinite(self.steering_norm_ratio) and self.steering_norm_ratio > 0,
            "> 0",
        )
        check_range("alpha", self.alpha, math.isfinite(self.alpha) and self.alpha >= 0, ">= 0 (the paper uses 1200)")
        if self.mlp_params not in MLP_PARAMS:
            raise CodeunlearnError(f"unknown mlp_params {self.mlp_params!r}", f"use one of {MLP_PARAMS}")


class _Stop(Exception):
    """Ends a forward pass right after the layer whose output was captured."""


def layer_output(model: nn.Module, layer: int, input_ids: Tensor, params: dict[str, Tensor] | None = None) -> Tensor:
    """The residual stream after decoder layer `layer` (batch, seq, hidden); the forward stops there.

    `params` replaces some of the model's tensors for this call only (`torch.func.functional_call`)."""
    captured: list[Tensor] = []

    def hook(module: nn.Module, args: Any, output: Any) -> None:
        captured.append(output[0] if isinstance(output, tuple) else output)  # tuple in transformers 4.x
        raise _Stop

    handle = decoder_layers(model)[layer].register_forward_hook(hook)
    try:
        kwargs = {"input_ids": input_ids, "use_cache": False}
        if params is None:
            model(**kwargs)
        else:
            functional_call(model, params, (), kwargs, strict=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    if not captured:
        raise RuntimeError(f"the forward pass never reached decoder layer {layer}")
    return captured[0]


def mlp_weights(model: nn.Module, layers: list[int], which: str) -> dict[str, nn.Parameter]:
    """Named parameters of the MLPs of `layers`: every weight (`all`) or the output projection's (`output`).

    The output projection is the MLP's last linear module (`down_proj` in Llama/Mistral/Qwen/Gemma/Phi-3/OLMo,
    `c_proj` in GPT-2, `dense_4h_to_h` in GPT-NeoX), whose output is what the MLP writes into the stream."""
    wanted: set[int] = set()
    all_layers = decoder_layers(model)
    for index in layers:
        mlp = getattr(all_layers[index], "mlp", None)
        if not isinstance(mlp, nn.Module):
            raise CodeunlearnError(
                f"decoder layer {index} of {model_type_of(model)} has no `mlp` module", "RMU needs a layer.mlp module"
            )
        if which == "all":
            wanted.update(id(p) for p in mlp.parameters())
        else:
            linears = [m for m in mlp.modules() if isinstance(m, (nn.Linear, Conv1D))]
            if not linears:
                raise CodeunlearnError(f"the MLP of layer {index} has no linear module", "use --mlp_params all")
            wanted.update(id(p) for p in linears[-1].parameters())
    return {name: p for name, p in model.named_parameters() if id(p) in wanted}


def random_direction(dim: int, seed: int) -> Tensor:
    """u: uniform on [0, 1)^dim, normalised to unit length (as `torch.rand` in the released code)."""
    u = torch.rand(dim, generator=torch.Generator().manual_seed(seed))
    return u / u.norm()


@torch.no_grad()
def mean_token_norm(model: nn.Module, layer: int, chunks: Tensor, batch_size: int) -> float:
    """Mean L2 norm of h^layer over every position but the first (the attention sink) of `chunks`."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for batch in batches(chunks, batch_size):
        norms = layer_output(model, layer, batch.to(device))[:, 1:].float().norm(dim=-1)
        total += float(norms.sum())
        count += norms.numel()
    return total / max(count, 1)


def default_layer(num_layers: int) -> int:
    """The paper's relative depth: layer 7 of 32."""
    return round(PAPER_LAYER / PAPER_NUM_LAYERS * num_layers)


class RMU(UnlearningMethod):
    """Steer layer-ℓ activations on forget text to c·u; keep them on retain text; train MLPs of layers ℓ-2..ℓ."""

    name = "rmu"
    config_class = RMUConfig
    config: RMUConfig

    def __init__(self, config: RMUConfig | None = None) -> None:
        super().__init__(config)
        self.layer: int | None = None
        self.control: Tensor | None = None  # c·u
        self.frozen: dict[str, Tensor] | None = None  # starting values of the trained tensors

    @property
    def needs_retain(self) -> bool:
        return self.config.alpha > 0

    def resolve_layer(self, model: nn.Module) -> int:
        num_layers = len(decoder_layers(model))
        layer = default_layer(num_layers) if self.config.layer is None else self.config.layer
        if not 0 <= layer < num_layers:
            raise CodeunlearnError(
                f"RMU layer {layer} out of range for a model with {num_layers} decoder layers",
                f"use --layer in [0, {num_layers - 1}]",
            )
        return layer

    def trained_layers(self, model: nn.Module) -> list[int]:
        layer = self.resolve_layer(model)
        return list(range(max(0, layer - 2), layer + 1))

    def trainable_parameters(self, model: nn.Module) -> dict[str, nn.Parameter]:
        return mlp_weights(model, self.trained_layers(model), self.config.mlp_params)

    def prepare(self, model: nn.Module, forget: Tensor, retain: Tensor | None) -> dict[str, Any]:
        self.layer = self.resolve_layer(model)
        device = next(model.parameters()).device
        resolved: dict[str, Any] = {"layer": self.layer, "trained_layers": self.trained_layers(model)}
        coeff = self.config.steering_coeff
        if coeff is None:
            norm = mean_token_norm(model, self.layer, forget[:NORM_CHUNKS], self.config.batch_size)
            coeff = self.config.steering_norm_ratio * norm
            resolved["mean_token_norm"] = norm
        resolved["steering_coeff"] = coeff
        self.control = (coeff * random_direction(hidden_size(model), self.config.vector_seed)).to(device)
        self.frozen = {name: p.detach().clone() for name, p in self.trainable_parameters(model).items()}
        resolved["trained_parameters"] = sorted(self.frozen)
        return resolved

    def forget_loss(self, model: nn.Module, forget: Tensor) -> Tensor:
        """MSE between the layer-ℓ activations on forget text and c·u."""
        h = layer_output(model, self.layer, forget).float()
        return F.mse_loss(h, self.control.expand_as(h))

    def retain_loss(self, model: nn.Module, retain: Tensor) -> Tensor:
        """MSE between the layer-ℓ activations on retain text and the frozen model's (unweighted)."""
        h = layer_output(model, self.layer, retain).float()
        training = model.training
        model.eval()  # the reference is a frozen model: no dropout in its forward (as the released code's)
        try:
            with torch.no_grad():
                ref = layer_output(model, self.layer, retain, params=self.frozen).float()
        finally:
            model.train(training)
        return F.mse_loss(h, ref)

    def loss(self, model: nn.Module, forget: Tensor | None, retain: Tensor | None) -> tuple[Tensor, dict[str, float]]:
        if self.control is None or self.frozen is None:
            raise CodeunlearnError("RMU.loss called before prepare()", "call prepare(model, forget, retain) first")
        forget_loss = self.forget_loss(model, forget)
        total, parts = forget_loss, {"forget_mse": float(forget_loss.detach())}
        if self.needs_retain:
            retain_mse = self.retain_loss(model, retain)
            total = total + self.config.alpha * retain_mse
            parts["retain_mse"] = float(retain_mse.detach())
        return total, parts

    def release(self) -> None:
        self.frozen = None
