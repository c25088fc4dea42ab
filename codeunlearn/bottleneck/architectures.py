"""Where each supported architecture keeps its decoder layers, and the facts about them we need.

One table maps a `model_type` to the attribute path of its decoder-layer list. An architecture that is not in
the table fails with a one-line error instead of a guess, because wrapping the wrong module silently gives a model
that was never bottlenecked.
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from codeunlearn.errors import CodeunlearnError

# model_type -> dotted path from the *ForCausalLM module to its decoder-layer ModuleList.
DECODER_LAYER_PATHS: dict[str, str] = {
    "llama": "model.layers",
    "mistral": "model.layers",
    "mixtral": "model.layers",
    "qwen2": "model.layers",
    "qwen3": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "gemma3_text": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "olmo2": "model.layers",
    "gpt2": "transformer.h",
    "gpt_neox": "gpt_neox.layers",
}


def _resolve(module: nn.Module, dotted: str) -> nn.Module:
    root = module
    for part in dotted.split("."):
        if not hasattr(module, part):
            raise CodeunlearnError(
                f"{type(root).__name__} has no decoder layers at `{dotted}`",
                "load the model with AutoModelForCausalLM (not a base or headless class)",
            )
        module = getattr(module, part)
    return module


def model_type_of(model: nn.Module) -> str:
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type is None:
        raise CodeunlearnError(
            f"{type(model).__name__} has no `config.model_type`",
            "pass a transformers *ForCausalLM model (AutoModelForCausalLM.from_pretrained)",
        )
    return model_type


EXPORTED_MODEL_TYPE = "codeunlearn"  # `codeunlearn export` output: the stock model sits under `causal_lm`
# What an export's config.json maps to its copy of the modeling file (`codeunlearn/export/remote_code/`).
REMOTE_MODULE = "modeling_codeunlearn"
EXPORT_AUTO_MAP = {
    "AutoConfig": f"{REMOTE_MODULE}.CodeunlearnConfig",
    "AutoModelForCausalLM": f"{REMOTE_MODULE}.CodeunlearnForCausalLM",
}
# Read as a file, not imported: the export package sits above this module.
REMOTE_CODE_FILE = Path(__file__).resolve().parents[1] / "export" / "remote_code" / f"{REMOTE_MODULE}.py"


def ships_this_code(path: str | Path) -> bool:
    """Whether the model directory `path` is an export whose remote code is exactly this package's: model_type
    `codeunlearn`, an `auto_map` naming only `modeling_codeunlearn`, that file byte for byte this package's copy,
    and no code named by its tokenizer config. Only then may it be loaded with `trust_remote_code=True` unasked:
    the model_type alone says nothing about what the directory's Python file does."""
    path = Path(path)
    try:
        config = json.loads((path / "config.json").read_text())
        tokenizer_config = path / "tokenizer_config.json"
        tokenizer = json.loads(tokenizer_config.read_text()) if tokenizer_config.is_file() else {}
        copied = (path / f"{REMOTE_MODULE}.py").read_bytes()
    except (OSError, ValueError):
        return False
    return (
        isinstance(config, dict)
        and config.get("model_type") == EXPORTED_MODEL_TYPE
        and config.get("auto_map") == EXPORT_AUTO_MAP
        and not (isinstance(tokenizer, dict) and tokenizer.get("auto_map"))
        and copied == REMOTE_CODE_FILE.read_bytes()
    )


def decoder_layers_path(model: nn.Module) -> str:
    """Dotted path from `model` to its decoder-layer ModuleList (an exported codeunlearn model included)."""
    model_type = model_type_of(model)
    if model_type == EXPORTED_MODEL_TYPE and getattr(model.config, "decoder_layers_path", None):
        return f"causal_lm.{model.config.decoder_layers_path}"
    path = DECODER_LAYER_PATHS.get(model_type)
    if path is None:
        raise CodeunlearnError(
            f"unknown architecture model_type={model_type!r}",
            f"use one of {sorted(DECODER_LAYER_PATHS)} or add its layer path to "
            "codeunlearn.bottleneck.architectures.DECODER_LAYER_PATHS",
        )
    return path


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """Return the list of decoder layers of a transformers causal LM (output of layer L = residual after L)."""
    model_type = model_type_of(model)
    path = decoder_layers_path(model)
    layers = _resolve(model, path)
    if not isinstance(layers, nn.ModuleList):
        raise CodeunlearnError(
            f"{model_type}: `{path}` is a {type(layers).__name__}, not a ModuleList",
            "load the model with AutoModelForCausalLM (not a base or headless class)",
        )
    return layers


def hidden_size(model: nn.Module) -> int:
    config = model.config
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    for name in ("hidden_size", "n_embd", "d_model"):
        if hasattr(config, name):
            return int(getattr(config, name))
    raise CodeunlearnError(f"cannot find the hidden size of {model_type_of(model)}", "report this architecture")


def check_layer_indices(layers: list[int], num_layers: int) -> list[int]:
    """Validate bottleneck layer indices against the model depth; return them sorted and unique."""
    if not layers:
        raise CodeunlearnError("no bottleneck layer given", f"pass at least one index in [0, {num_layers - 1}]")
    bad = [layer for layer in layers if not 0 <= layer < num_layers]
    if bad:
        raise CodeunlearnError(
            f"layer index {bad} out of range for a model with {num_layers} decoder layers",
            f"use indices in [0, {num_layers - 1}]",
        )
    if len(set(layers)) != len(layers):
        raise CodeunlearnError(f"duplicate layer indices {layers}", "list each layer once")
    return sorted(layers)
