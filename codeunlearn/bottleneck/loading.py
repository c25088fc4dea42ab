"""Loading a bottleneck with its base model: the one path from a directory (or Hub repo id) to a `BottleneckedModel`.

A bottleneck source is any of:

- a bottleneck directory (`bottleneck_config.json`, written by `codeunlearn train`, `apply` or `forget`), with its
  saved edits;
- the output directory of `codeunlearn train`, which holds `bottleneck/`;
- modules saved by another library that a kind reads (`Bottleneck.is_foreign_source`): a sae-lens (or Gemma
  Scope) SAE directory, or a folder of them (a downloaded release), attached at the layers their hook names record;
- a Hub repo id `OWNER/NAME[/sub/folder][@revision]` that holds one of those (`codeunlearn.hub`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from codeunlearn.bottleneck.config import CONFIG_NAME
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.bottleneck.registry import kind_names, module_class_for
from codeunlearn.errors import CodeunlearnError
from codeunlearn.hub import resolve_bottleneck_source
from codeunlearn.modeling import ModelArguments


def resolve_bottleneck_dir(path: str | Path) -> Path:
    """The local bottleneck directory that `path` names (see the module docstring), downloading a Hub repo id into
    the Hugging Face cache first; a one-line error when it names none."""
    local = resolve_bottleneck_source(path)
    found = _bottleneck_in(local)
    if found is not None:
        return found
    if not Path(path).exists() and local != Path(path):  # downloaded, but not a bottleneck
        raise CodeunlearnError(
            f"Hub repo {path} holds no bottleneck (no {CONFIG_NAME}, no bottleneck/, no sae-lens SAE)",
            "name the repo (or its subfolder) that `codeunlearn push --bottleneck_dir` uploaded",
        )
    raise CodeunlearnError(
        f"no bottleneck at {path} (no {CONFIG_NAME})",
        "pass the bottleneck directory written by `codeunlearn train`, a sae-lens SAE directory, or a Hub repo id "
        "OWNER/NAME[/subfolder][@revision]",
    )


def is_bottleneck_source(path: Path) -> bool:
    """Whether a local directory is (or holds) a bottleneck, without loading anything."""
    return _bottleneck_in(path) is not None


def foreign_kind(path: Path) -> Any:
    """The module class of the kind that reads `path` as modules saved by another library (sae-lens SAE
    directories: `Bottleneck.is_foreign_source`), or None."""
    for kind in kind_names():
        module_class = module_class_for(kind)
        if module_class.is_foreign_source(path):
            return module_class
    return None


def _bottleneck_in(path: Path) -> Path | None:
    """The bottleneck directory `path` is or holds (a codeunlearn bottleneck, a train output, sae-lens SAEs)."""
    if (path / CONFIG_NAME).is_file():
        return path
    if (path / "bottleneck" / CONFIG_NAME).is_file():
        return path / "bottleneck"
    if foreign_kind(path) is not None:
        return path
    return None


def attach_bottleneck(model: nn.Module, source: str | Path) -> BottleneckedModel:
    """Wrap `model` with the bottleneck `source` names: a codeunlearn bottleneck with its saved edits, or sae-lens
    SAE directories attached at the layers their hook names record."""
    path = resolve_bottleneck_dir(source)
    if (path / CONFIG_NAME).is_file():
        return BottleneckedModel.from_pretrained(model, path)
    return foreign_kind(path).attach_foreign(model, path)


def load_bottlenecked(
    source: str | Path,
    base: ModelArguments | None = None,
    progress: bool = False,
    device: torch.device | str | None = None,
) -> tuple[BottleneckedModel, Any]:
    """The base model (default: the shipped SmolLM2) with the bottleneck `source` names, and the base model's
    tokenizer: (bmodel, tokenizer), on `device` (default: the CPU). A source that names no bottleneck fails before
    the (slow) model load."""
    path = resolve_bottleneck_dir(source)
    model, tokenizer = (base or ModelArguments()).load(progress)
    bmodel = attach_bottleneck(model, path)
    return (bmodel if device is None else bmodel.to(device)), tokenizer
