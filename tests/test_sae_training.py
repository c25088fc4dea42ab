"""Training SAE bottlenecks: logged metrics, that training improves reconstruction, that the saved SAE is the trained
one, and exact resumption from checkpoints (the codebook's guarantee, for SAEs)."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_fix_error, make_model, make_tokens, tiny_args

from codeunlearn.bottleneck.config import BottleneckConfig
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import sae_loss_recovered, sae_quality
from codeunlearn.train import train_bottleneck

STEPS = 6
CHUNKS = make_tokens(40, 10, seed=11)


def config(architecture: str = "topk", **overrides) -> BottleneckConfig:
    values = {"layers": [0, 2], "kind": "sae", "sae_architecture": architecture, "sae_width": 48, "sae_k": 4}
    values.update(overrides)
    return BottleneckConfig.from_dict(values)


def fresh(architecture: str = "topk", **overrides) -> BottleneckedModel:
    return BottleneckedModel.attach(make_model("llama"), config(architecture, **overrides))


def run_args(output_dir, **overrides):
    values = {"sae_steps": STEPS, "batch_size": 3, "kmeans_init_tokens": 60, "sae_learning_rate": 3e-3,
              "dead_feature_window": 2}  # fmt: skip
    values.update(overrides)
    return tiny_args(output_dir, **values)


def final_state(bmodel: BottleneckedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in bmodel.bottleneck_state().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    out = tmp_path_factory.mktemp("sae-run-a")
    bmodel = fresh()
    metrics = train_bottleneck(bmodel, CHUNKS, run_args(out))
    return {"dir": out, "metrics": metrics, "state": final_state(bmodel), "fingerprint": bmodel.fingerprint()}


def test_metrics_are_logged_every_step(uninterrupted):
    out = uninterrupted["dir"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(uninterrupted["metrics"]))
    assert [r["step"] for r in lines] == list(range(1, STEPS + 1))
    for record in lines:
        assert record["phase"] == "sae"
        assert {"loss", "mse_loss", "auxiliary_reconstruction_loss", "fvu", "l0", "dead_features", "lr"} <= set(record)
        assert sorted(record["l0_by_layer"]) == ["0", "2"]
        assert record["l0"] == pytest.approx(4.0)  # TopK: exactly k features per token
        assert record["loss"] == pytest.approx(record["mse_loss"] + record["auxiliary_reconstruction_loss"], abs=2e-3)
    # with a dead window of 2 steps, some of the 48 features go unused for longer and count as dead
    assert any(d > 0 for r in lines[2:] for d in r["dead_features"].values())
    assert any(r["auxiliary_reconstruction_loss"] > 0 for r in lines[2:])  # the aux-k loss engages
    assert json.loads((out / "training_args.json").read_text())["sae_steps"] == STEPS


def test_saved_sae_is_the_trained_one(uninterrupted):
    from sae_lens import SAE

    directory = uninterrupted["dir"] / "bottleneck"
    loaded = BottleneckedModel.from_pretrained(make_model("llama"), directory)
    assert loaded.fingerprint() == uninterrupted["fingerprint"]
    state = uninterrupted["state"]
    assert all(torch.equal(loaded.bottleneck_state()[k], state[k]) for k in state)
    sae = SAE.load_from_disk(directory / "layer_2")
    assert torch.equal(sae.W_enc, state["2.sae.W_enc"])
    assert float(state["2.input_scale"]) == 1.0  # the training-time input scale is folded into the weights


@pytest.mark.parametrize("architecture", ["topk", "relu"])
def test_training_improves_reconstruction(tmp_path, architecture):
    bmodel = fresh(architecture, sae_l1_coefficient=0.5)
    train_bottleneck(bmodel, CHUNKS, run_args(tmp_path / "short", sae_steps=1))
    before = {q.layer: q for q in sae_quality(bmodel, CHUNKS)}
    bmodel = fresh(architecture, sae_l1_coefficient=0.5)
    train_bottleneck(bmodel, CHUNKS, run_args(tmp_path / "long", sae_steps=60, log_every=60))
    after = {q.layer: q for q in sae_quality(bmodel, CHUNKS)}
    for layer in (0, 2):
        assert after[layer].fvu < 0.8 * before[layer].fvu, (before[layer], after[layer])
        assert after[layer].tokens == 40 * 9 and after[layer].num_features == 48
        if architecture == "topk":
            assert after[layer].l0 == pytest.approx(4.0)
    recovered = sae_loss_recovered(bmodel, CHUNKS)
    assert recovered["with_error_term"] == pytest.approx(recovered["base"], abs=1e-5)
    assert recovered["spliced"] > recovered["base"]
    expected = (recovered["zero_ablation"] - recovered["spliced"]) / (recovered["zero_ablation"] - recovered["base"])
    assert recovered["recovered"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("stop", "checkpoint_every", "precision", "updates"),
    [(1, 1, "fp32", 1), (3, 1, "fp32", 1), (4, 2, "fp32", 1), (3, 1, "bf16", 1), (3, 1, "fp16", 1), (2, 1, "fp32", 3)],
    ids=[
        "after-first-step",
        "midway",
        "between-checkpoints",
        "bf16-autocast",
        "fp16-scaled",
        "three-updates-per-batch",
    ],
)
def test_resume_is_exact(uninterrupted, tmp_path_factory, tmp_path, stop, checkpoint_every, precision, updates):
    options = {"bf16": precision == "bf16", "fp16": precision == "fp16", "sae_updates_per_batch": updates}
    if precision != "fp32" or updates > 1:
        reference = fresh()
        train_bottleneck(reference, CHUNKS, run_args(tmp_path_factory.mktemp("sae-reference"), **options))
        expected = final_state(reference)
        assert not all(torch.equal(expected[k], uninterrupted["state"][k]) for k in expected)
    else:
        expected = uninterrupted["state"]
    first = fresh()
    args = run_args(tmp_path, stop_after_steps=stop, checkpoint_every=checkpoint_every, **options)
    assert train_bottleneck(first, CHUNKS, args)[-1]["step"] == stop
    assert not (tmp_path / "bottleneck").exists()
    second = fresh()
    args = run_args(tmp_path, checkpoint_every=checkpoint_every, resume=True, **options)
    metrics = train_bottleneck(second, CHUNKS, args)
    assert metrics[-1]["step"] == STEPS
    state = final_state(second)
    assert sorted(state) == sorted(expected)
    assert [k for k in expected if not torch.equal(state[k], expected[k])] == []
    logged = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert logged == list(range(1, STEPS + 1))  # no step logged twice


def test_only_fresh_saes_train(tmp_path, uninterrupted):
    loaded = BottleneckedModel.from_pretrained(make_model("llama"), uninterrupted["dir"] / "bottleneck")
    with pytest.raises(CodeunlearnError) as excinfo:
        train_bottleneck(loaded, CHUNKS, run_args(tmp_path))
    assert_fix_error(excinfo)
    train_bottleneck(fresh(), CHUNKS, run_args(tmp_path / "other", stop_after_steps=1, checkpoint_every=1))
    with pytest.raises(CodeunlearnError) as excinfo:  # resuming with another SAE shape
        train_bottleneck(fresh(sae_k=3), CHUNKS, run_args(tmp_path / "other", resume=True))
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        run_args(tmp_path, sae_steps=0)
    assert_fix_error(excinfo)
