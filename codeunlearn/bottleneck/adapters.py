"""Downstream LoRA adapters (peft) that learn to read the quantized stream.

The layers after a bottleneck were trained on exact residual states; small LoRA adapters on them, trained with the
bottleneck's values against the base model's next-token distribution, absorb part of the quantization error. The
base weights stay untouched (LoRA adds a separate low-rank path), the adapters are saved with the bottleneck, and
disabling the bottleneck disables them too, so the disabled model is still exactly the base model.
"""

from __future__ import annotations

import torch
from peft import LoraConfig, inject_adapter_in_model
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn
from transformers.pytorch_utils import Conv1D

from codeunlearn.bottleneck.architectures import DECODER_LAYER_PATHS, decoder_layers, model_type_of

ADAPTER_PREFIX = "adapters."


def adapter_target_names(model: nn.Module, first_layer: int) -> list[str]:
    """Full names of the linear modules inside decoder layers with index >= first_layer."""
    path = DECODER_LAYER_PATHS[model_type_of(model)]
    names = []
    for index, layer in enumerate(decoder_layers(model)):
        if index < first_layer:
            continue
        for name, module in layer.named_modules():
            if isinstance(module, (nn.Linear, Conv1D)):
                names.append(f"{path}.{index}.{name}")
    return names


def inject_adapters(model: nn.Module, rank: int, first_layer: int, seed: int = 0) -> None:
    """Add LoRA adapters (B initialised to zero, so the model is unchanged until trained). A is drawn from `seed`
    (the global generator is left as it was), so the same config gives the same adapters in every run and process."""
    targets = adapter_target_names(model, first_layer)
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=targets, bias="none")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        inject_adapter_in_model(config, model)


def adapter_layers(model: nn.Module) -> list[BaseTunerLayer]:
    return [m for m in model.modules() if isinstance(m, BaseTunerLayer)]


def set_adapters_enabled(model: nn.Module, enabled: bool) -> None:
    for module in adapter_layers(model):
        module.enable_adapters(enabled)


def adapter_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if "lora_" in name}


def adapter_state(model: nn.Module) -> dict[str, Tensor]:
    return {ADAPTER_PREFIX + name: p.detach() for name, p in adapter_parameters(model).items()}
