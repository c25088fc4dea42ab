"""Fixtures: a small trained bottleneck shared by the statistics, selection and edit tests, and an offline Hub."""

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


@pytest.fixture
def offline_empty_cache(tmp_path, monkeypatch) -> Path:
    """Offline mode with an empty datasets cache, as a process started with HF_HUB_OFFLINE=1 and a fresh HF_HOME
    sees it: both libraries read these settings into constants at import, so the constants are patched too."""
    import datasets
    from huggingface_hub import constants

    cache = tmp_path / "hf_datasets_cache"
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    return cache
