"""Determinism on CPU: the same seed and config give identical weights and statistics, tensor for tensor.

Weights are compared as tensors (`torch.equal`), never as file bytes: safetensors headers carry metadata whose key
order is not fixed. Each kind is trained twice in this process (a run must not depend on what ran before it), and
once more with another seed, which must give other weights (so these tests can fail). Users compare runs made by
separate processes, so the command line is run twice as two fresh subprocesses as well.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import make_cli_workspace, make_model, make_tokens, tiny_args, tiny_config

from codeunlearn.bottleneck.config import BottleneckConfig
from codeunlearn.bottleneck.model import WEIGHTS_NAME, BottleneckedModel
from codeunlearn.io import load_tensors
from codeunlearn.train import train_bottleneck
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics
from codeunlearn.unlearn.statistics_cache import cache_path, cached_fingerprints

REPO = Path(__file__).resolve().parents[1]
TRAIN_CHUNKS = make_tokens(40, 10, seed=11)
STATS_CHUNKS = make_tokens(12, 10, seed=12)


def codebook_config(seed: int) -> BottleneckConfig:
    return tiny_config(layers=[0, 2], num_stages=2, seed=seed)


def sae_config(seed: int) -> BottleneckConfig:
    return tiny_config(kind="sae", sae_architecture="topk", sae_width=48, sae_k=4, layers=[0, 2], seed=seed)


KINDS = {
    "codebook": (codebook_config, {"key_steps": 3, "value_steps": 3, "batch_size": 3, "kmeans_init_tokens": 60}),
    "sae": (sae_config, {"sae_steps": 6, "batch_size": 3, "sae_learning_rate": 3e-3, "dead_feature_window": 2}),
}


def train(kind: str, output_dir: Path, seed: int = 0) -> tuple[dict[str, torch.Tensor], CodeStatistics]:
    """A fresh bottleneck of `kind` trained from scratch (bottleneck seed `seed`): its tensors, as saved and as held
    in memory, and its statistics on fixed chunks."""
    make_config, overrides = KINDS[kind]
    bmodel = BottleneckedModel.attach(make_model("llama"), make_config(seed))
    train_bottleneck(bmodel, TRAIN_CHUNKS, tiny_args(output_dir, **overrides))
    live = {f"live.{k}": v.detach().clone() for k, v in bmodel.bottleneck_state().items()}
    stats = collect_code_statistics(bmodel, STATS_CHUNKS, batch_size=4, progress=False)
    return {**saved_tensors(output_dir / "bottleneck"), **live}, stats


def saved_tensors(bottleneck_dir: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every tensor file under a saved bottleneck, keyed by file and name."""
    files = sorted(bottleneck_dir.rglob("*.safetensors"))
    assert files, f"no tensor file under {bottleneck_dir}"
    return {
        f"{path.relative_to(bottleneck_dir)}:{name}": tensor
        for path in files
        for name, tensor in load_tensors(path, "bottleneck").items()
    }


def differing(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> list[str]:
    """Names of the tensors that are not bit-for-bit equal (all of them if the names differ)."""
    assert a.keys() == b.keys()
    return [name for name in a if a[name].dtype != b[name].dtype or not torch.equal(a[name], b[name])]


def statistics_tensors(stats: CodeStatistics) -> dict[str, torch.Tensor]:
    """Counts, token totals and (SAE) activation sums and maxima, as tensors to compare."""
    tensors = {f"counts.{k}": v for k, v in stats.counts.items()}
    tensors.update({f"tokens.{k}": torch.tensor(v) for k, v in stats.tokens.items()})
    tensors.update({f"sums.{k}": v for k, v in stats.activation_sums.items()})
    tensors.update({f"max.{k}": v for k, v in stats.activation_max.items()})
    return tensors


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_same_seed_and_config_give_identical_weights_and_statistics(kind, tmp_path):
    first_weights, first_stats = train(kind, tmp_path / "a")
    second_weights, second_stats = train(kind, tmp_path / "b")
    assert differing(first_weights, second_weights) == []
    assert first_stats.bottleneck_fingerprint == second_stats.bottleneck_fingerprint
    assert differing(statistics_tensors(first_stats), statistics_tensors(second_stats)) == []
    assert sum(int(c.sum()) for c in first_stats.counts.values()) > 0  # the statistics counted something

    other_weights, other_stats = train(kind, tmp_path / "c", seed=1)
    changed = differing(first_weights, other_weights)
    # the learnt tensors (a codebook's keys and values, an SAE's encoder) differ with the seed
    assert any("keys" in name or "values" in name or "W_enc" in name for name in changed), changed
    assert first_stats.bottleneck_fingerprint != other_stats.bottleneck_fingerprint


# ------------------------------------------------------------------------------------------------ fresh processes
SHAPE = ["--layers", "1", "--num_heads", "4", "--codebook_size", "16", "--num_stages", "2"]
STEPS = ["--key_steps", "2", "--value_steps", "3", "--batch_size", "4", "--kmeans_init_tokens", "64"]


def train_in_subprocess(workspace: dict[str, Path], output_dir: Path, *extra: str) -> None:
    """`python -m codeunlearn train` in a fresh interpreter, one thread (as the in-process tests run)."""
    command = [
        sys.executable, "-m", "codeunlearn", "train", "--model_name_or_path", str(workspace["model"]),
        "--corpora", str(workspace["retain"]), *SHAPE, *STEPS, "--seq_len", "16", "--no_progress", "--no_bf16",
        "--retain_statistics_tokens", "512", "--output_dir", str(output_dir), *extra,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr


def retain_statistics(bottleneck_dir: Path) -> CodeStatistics:
    """The retain statistics `train` counted and kept in the bottleneck directory (its only cached ones)."""
    (fingerprint,) = cached_fingerprints(bottleneck_dir)
    return CodeStatistics.load(cache_path(bottleneck_dir, fingerprint))


def test_two_processes_train_the_same_bottleneck(tmp_path):
    workspace = make_cli_workspace(tmp_path)
    for name, extra in (("a", ()), ("b", ()), ("other", ("--bottleneck_seed", "1"))):
        train_in_subprocess(workspace, tmp_path / name, *extra)
    a, b, other = (tmp_path / name / "bottleneck" for name in ("a", "b", "other"))
    assert (a / WEIGHTS_NAME).is_file()
    assert differing(saved_tensors(a), saved_tensors(b)) == []
    assert (a / "bottleneck_config.json").read_text() == (b / "bottleneck_config.json").read_text()
    stats_a, stats_b = retain_statistics(a), retain_statistics(b)
    assert stats_a.tokens == stats_b.tokens and sum(stats_a.tokens.values()) > 0
    assert differing(statistics_tensors(stats_a), statistics_tensors(stats_b)) == []

    changed = differing(saved_tensors(a), saved_tensors(other))
    assert any("keys" in name or "values" in name for name in changed), changed
