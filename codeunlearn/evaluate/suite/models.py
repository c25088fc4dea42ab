"""Load any model directory for evaluation, with the base model that fluency is measured under.

`load_model_for_eval(path_or_name)` recognises, in this order:

- a shipped name (`smollm2-135m`, `gemma3-270m`) or a `.gguf` file: a base model (it is its own reference);
- an exported directory (`config.json` with model_type `codeunlearn`, from `codeunlearn export`): loaded with
  `trust_remote_code=True`; its reference is the same files loaded with `bottleneck_enabled=False`, which is exactly
  the base model it was built on;
- a bottleneck directory (`bottleneck_config.json`, codebook or SAE, edited or not; also a `train` output folder or a
  sae-lens SAE folder): attached to the base model `base_model` names, its saved edits active, and evaluated as the
  `BottleneckedModel` itself (the attacks know it: relearning never trains the bottleneck, the latent probe reads
  the deepest bottleneck layer); its reference is the same module with every bottleneck (and adapter) switched off
  (`BaseModelView`), so no second copy is loaded;
- any other `transformers` model directory or name (e.g. a gradient baseline's `OUTPUT/model`): loaded with
  `from_pretrained`; its reference is `base_model`, loaded separately (None when it is the base model itself).

Remote code: only an export whose modeling file is byte for byte this package's own (model_type `codeunlearn`,
`bottleneck.architectures.ships_this_code`) is loaded with `trust_remote_code=True` unasked; an export of another
version, or one whose file was altered, needs the flag. Any other directory whose config.json or
tokenizer_config.json names code of its own (`auto_map`) is refused unless the caller passes
`trust_remote_code=True` (`eval --suite --trust_remote_code`):
loading it would run that directory's Python.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer

from codeunlearn.bottleneck.architectures import EXPORTED_MODEL_TYPE, ships_this_code
from codeunlearn.bottleneck.config import CONFIG_NAME, DEFAULT_KIND
from codeunlearn.bottleneck.loading import is_bottleneck_source, load_bottlenecked, resolve_bottleneck_dir
from codeunlearn.errors import CodeunlearnError
from codeunlearn.modeling import SHIPPED_MODEL, SHIPPED_MODELS, ModelArguments, load_model_and_tokenizer
from codeunlearn.runtime import ticker

EXPORT_MODEL_TYPE = EXPORTED_MODEL_TYPE  # `codeunlearn export`'s model_type: its remote code is ours
TRUST_FLAG = "--trust_remote_code"


class EvalModel(NamedTuple):
    """A model ready for `EvalContext`.

    Attributes:
        model: the causal LM under test (`model(input_ids=...).logits`): a `BottleneckedModel` for a bottleneck
            directory, a transformers model otherwise.
        tokenizer: its tokenizer (a pad token set).
        description: one line saying what was loaded, for the report.
        reference: the base model for metrics measured under it (fluency perplexity); None when `model` is the base.
    """

    model: nn.Module
    tokenizer: Any
    description: str
    reference: nn.Module | None


class BaseModelView(nn.Module):
    """The base model inside a `BottleneckedModel`: every forward and `generate` call runs under
    `bmodel.disabled()` (bottlenecks pass their layer's output through untouched, adapters off).

    It shares the weights of the bottlenecked model, so it costs no memory; only calls made through this view see
    the base model (calling a submodule directly, e.g. `view.bmodel.model.model(...)`, would not).
    """

    # Read-only attributes that metrics read off a transformers model; forwarded to the wrapped model.
    _FORWARDED = frozenset(
        {"config", "generation_config", "device", "dtype", "get_input_embeddings", "get_output_embeddings"}
    )

    def __init__(self, bmodel: nn.Module) -> None:
        super().__init__()
        self.bmodel = bmodel

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        with self.bmodel.disabled():
            return self.bmodel.model(*args, **kwargs)

    def generate(self, *args: Any, **kwargs: Any) -> Any:
        with self.bmodel.disabled():
            return self.bmodel.model.generate(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in BaseModelView._FORWARDED:
                return getattr(self.bmodel.model, name)
            raise


def base_model_run(loaded: EvalModel) -> tuple[nn.Module, contextlib.AbstractContextManager]:
    """What to evaluate as the base model of `loaded`, and the context to evaluate it in.

    For a bottleneck directory this is the `BottleneckedModel` itself inside `disabled()`: every entry point (forward,
    hooks on its layers, a deep copy for the relearning attack) then sees the base model, not only calls through
    `BaseModelView`. Otherwise it is the reference model (or the model itself when it is the base)."""
    if isinstance(loaded.reference, BaseModelView):
        return loaded.reference.bmodel, loaded.reference.bmodel.disabled()
    return loaded.reference if loaded.reference is not None else loaded.model, contextlib.nullcontext()


def model_kind(path_or_name: str) -> str:
    """`base`, `export`, `bottleneck` or `model` (see the module docstring); a missing local path is an error."""
    if path_or_name in SHIPPED_MODELS or path_or_name.endswith(".gguf"):
        return "base"
    path = Path(path_or_name)
    if path.is_dir():
        config = _read_config(path)
        if config.get("model_type") == EXPORT_MODEL_TYPE:
            return "export"
        if is_bottleneck_source(path):
            return "bottleneck"
        if config:
            return "model"
        raise CodeunlearnError(
            f"{path} is not a model directory (no config.json, {CONFIG_NAME} or SAE)",
            "pass a model directory, an exported or bottleneck directory, or smollm2-135m",
        )
    if path_or_name.startswith((".", "/", "~")) or path.exists():
        raise CodeunlearnError(f"model not found: {path_or_name}", "check the path")
    return "model"  # a Hub name: from_pretrained decides


def load_model_for_eval(
    path_or_name: str,
    base_model: str | None = SHIPPED_MODEL,
    gguf_file: str | None = None,
    dtype: str = "float32",
    progress: bool = True,
    trust_remote_code: bool = False,
    device: torch.device | str | None = None,
) -> EvalModel:
    """Load `path_or_name` for evaluation (see the module docstring for what it may be), on `device` (default: the
    CPU), its reference model too.

    Args:
        path_or_name: the model under test.
        base_model: the base model: what a bottleneck directory is attached to, and the reference of a plain model
            directory (None: a plain model is its own reference). Not used for exports, which carry their base.
        gguf_file: GGUF file name inside `base_model`, if it holds one.
        dtype: weight dtype.
        progress: show a ticking bar while models load.
        trust_remote_code: run the Python code a plain model directory or Hub model ships (`auto_map`); without it
            such a model is refused. An export of this version needs no flag: its code is this package's.
        device: where the models compute.
    """
    loaded = _load(path_or_name, base_model, gguf_file, dtype, progress, trust_remote_code)
    if device is not None:
        loaded.model.to(device)
        if loaded.reference is not None:
            loaded.reference.to(device)  # (a bottleneck's base view shares its weights: already there)
    return loaded


def _load(
    path_or_name: str,
    base_model: str | None,
    gguf_file: str | None,
    dtype: str,
    progress: bool,
    trust_remote_code: bool,
) -> EvalModel:
    kind = model_kind(path_or_name)
    if kind == "bottleneck":
        return _load_bottlenecked(path_or_name, base_model, gguf_file, dtype, progress)
    if kind == "export":
        if not trust_remote_code and not ships_this_code(path_or_name):
            raise CodeunlearnError(
                f"export {path_or_name} ships Python code that is not this codeunlearn's own (another version's, or "
                "altered), which would run on loading",
                f"re-export it with this version, or pass {TRUST_FLAG} if you trust its code",
            )
        return _load_export(path_or_name, dtype, progress)
    if kind == "model" and not trust_remote_code:
        _refuse_remote_code(Path(path_or_name))
    try:
        model, tokenizer = load_model_and_tokenizer(path_or_name, None, dtype, progress, trust_remote_code)
    except ValueError as err:  # a Hub model with code of its own: transformers refuses it when trust is False
        if "trust_remote_code" not in str(err):
            raise
        raise CodeunlearnError(
            f"model {path_or_name} ships its own Python code, which would run on loading",
            f"pass {TRUST_FLAG} if you trust it",
        ) from None
    if kind == "base" or base_model is None or _same_model(path_or_name, base_model):
        return EvalModel(model, tokenizer, f"base model {path_or_name}", None)
    reference, _ = load_model_and_tokenizer(base_model, gguf_file, dtype, progress)
    return EvalModel(model, tokenizer, f"model {path_or_name} ({_model_type(model)})", reference)


def _load_bottlenecked(
    path: str, base_model: str | None, gguf_file: str | None, dtype: str, progress: bool
) -> EvalModel:
    if base_model is None:
        raise CodeunlearnError(f"bottleneck {path} needs its base model", "pass the base model (--model_name_or_path)")
    base = ModelArguments(model_name_or_path=base_model, gguf_file=gguf_file, dtype=dtype)
    bmodel, tokenizer = load_bottlenecked(path, base, progress)
    config = bmodel.config
    topics = ", ".join(edit.topic for edit in bmodel.edits) or "none"
    description = (
        f"bottleneck {resolve_bottleneck_dir(path)} ({config.kind}, layers {bmodel.layers}, edits: {topics}) "
        f"on {base_model}"
    )
    return EvalModel(bmodel, tokenizer, description, BaseModelView(bmodel))


def _load_export(path: str, dtype: str, progress: bool) -> EvalModel:
    def load(**kwargs: Any) -> nn.Module:
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=True, dtype=getattr(torch, dtype), **kwargs
        )
        return model.eval().requires_grad_(False)

    try:
        with ticker(f"load {path}", enabled=progress):
            tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)  # no prompt: auto_map is ours
            model, reference = load(), load(bottleneck_enabled=False)
    except (OSError, ValueError) as err:
        raise CodeunlearnError(
            f"cannot load exported model {path} ({str(err).splitlines()[0]})", "re-export it with `codeunlearn export`"
        ) from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    config = model.config
    topics = ", ".join(str(edit.get("topic", "?")) for edit in config.edits) or "none"
    kind = config.bottleneck.get("kind", DEFAULT_KIND)
    description = f"export {path} ({kind} bottleneck on {config.base_model_type}, edits: {topics})"
    return EvalModel(model, tokenizer, description, reference)


def _refuse_remote_code(path: Path) -> None:
    """Refuse a local model directory whose config names Python code of its own (`auto_map` in config.json or
    tokenizer_config.json): `trust_remote_code=True` would run it."""
    if not path.is_dir():
        return
    for name in ("config.json", "tokenizer_config.json"):
        try:
            config = json.loads((path / name).read_text())
        except (OSError, json.JSONDecodeError):
            continue  # missing or unreadable: from_pretrained reports it
        if isinstance(config, dict) and config.get("auto_map"):
            raise CodeunlearnError(
                f"{path} ships its own Python code ({name} auto_map), which would run on loading",
                f"pass {TRUST_FLAG} if you trust that directory (codeunlearn's own exports need no flag)",
            )


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        return {}
    except (OSError, json.JSONDecodeError) as err:
        raise CodeunlearnError(
            f"cannot read {path / 'config.json'} ({err})", "pass an intact model directory"
        ) from None
    return config if isinstance(config, dict) else {}


def _same_model(a: str, b: str) -> bool:
    if a == b:
        return True
    pa, pb = Path(a), Path(b)
    return pa.exists() and pb.exists() and pa.resolve() == pb.resolve()


def _model_type(model: nn.Module) -> str:
    return str(getattr(getattr(model, "config", None), "model_type", type(model).__name__))
