"""Fixtures: a small trained bottleneck shared by the statistics, selection and edit tests."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import make_model, make_tokens, tiny_args, tiny_config

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.train import train_bottleneck


@pytest.fixture(scope="session")
def trained_dir(tmp_path_factory) -> Path:
    """A bottleneck (two stages, layers 1 and 2 of a 4-layer Llama) trained for a few steps, saved to disk."""
    root = tmp_path_factory.mktemp("trained")
    model = make_model("llama", num_layers=4)
    bmodel = BottleneckedModel.attach(model, tiny_config(num_stages=2))
    train_bottleneck(bmodel, make_tokens(48, 12, seed=1), tiny_args(root / "run", key_steps=4, value_steps=4))
    return root / "run" / "bottleneck"


@pytest.fixture
def trained(trained_dir) -> BottleneckedModel:
    """A fresh 4-layer Llama (seed 0) with the session's trained bottleneck loaded; free to mutate."""
    return BottleneckedModel.from_pretrained(make_model("llama", num_layers=4), trained_dir)
