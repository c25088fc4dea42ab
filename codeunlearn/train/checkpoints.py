"""Checkpoint files of a training run: where they are, how the shared loop reads one back on resume, and how the
metrics logged after it are dropped."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from codeunlearn.bottleneck.adapters import ADAPTER_PREFIX
from codeunlearn.bottleneck.base import WEIGHTS_NAME
from codeunlearn.bottleneck.config import CONFIG_NAME
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_write_text, load_tensors

STATE_NAME = "trainer_state.json"
RNG_NAME = "rng_state.safetensors"
OPTIMIZER_NAME = "optimizer.pt"


def truncate_metrics(path: Path, step: int) -> None:
    """Drop metrics logged after the checkpoint we resume from (they will be logged again)."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))


def latest_checkpoint(output_dir: Path) -> Path | None:
    found = sorted((output_dir / "checkpoints").glob("step-*"))
    return found[-1] if found else None


def load_checkpoint(path: Path, bmodel: BottleneckedModel) -> dict:
    state_file = path / STATE_NAME
    if not state_file.is_file():
        raise CodeunlearnError(f"checkpoint {path} has no {STATE_NAME}", "delete the incomplete checkpoint directory")
    config_path = path / "bottleneck" / CONFIG_NAME
    saved_config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    if saved_config and saved_config != bmodel.config.to_dict():
        raise CodeunlearnError(
            f"checkpoint {path} was made with another bottleneck config",
            "resume with the same config or use a new output_dir",
        )
    tensors = load_tensors(path / "bottleneck" / WEIGHTS_NAME, "checkpoint weights")
    for layer, bottleneck in bmodel.bottlenecks.items():
        prefix = f"{layer}."
        bottleneck.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    with torch.no_grad():
        for name, param in bmodel.adapter_parameters().items():
            param.copy_(tensors[ADAPTER_PREFIX + name])
    rng = load_tensors(path / RNG_NAME, "checkpoint RNG state")
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state(rng["cuda"])
    return json.loads(state_file.read_text())
