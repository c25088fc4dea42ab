"""Training: logged metrics, the two phases, checkpoints and exact resumption."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import assert_fix_error, make_model, make_tokens, tiny_args, tiny_config

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import bottleneck_fidelity, mean_loss
from codeunlearn.kinds.codebook.bottleneck import flat_code_ids
from codeunlearn.train import ChunkStream, train_bottleneck

KEY_STEPS, VALUE_STEPS = 3, 4
CHUNKS = make_tokens(40, 10, seed=11)


def fresh() -> BottleneckedModel:
    """The same base model and bottleneck shape every time (two stages, two layers)."""
    return BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[0, 2], num_stages=2))


def run_args(output_dir, **overrides):
    values = {"key_steps": KEY_STEPS, "value_steps": VALUE_STEPS, "batch_size": 3, "kmeans_init_tokens": 60}
    values.update(overrides)
    return tiny_args(output_dir, **values)


def final_state(bmodel: BottleneckedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in bmodel.bottleneck_state().items()}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Run A: all key and value steps in one go."""
    out = tmp_path_factory.mktemp("run-a")
    bmodel = fresh()
    metrics = train_bottleneck(bmodel, CHUNKS, run_args(out))
    return {"dir": out, "metrics": metrics, "state": final_state(bmodel)}


@pytest.fixture(scope="module")
def uninterrupted_autocast(tmp_path_factory):
    """Run A under bf16 and under fp16 autocast (fp16 with its loss scale), by precision."""
    states = {}
    for precision in ("bf16", "fp16"):
        bmodel = fresh()
        train_bottleneck(bmodel, CHUNKS, run_args(tmp_path_factory.mktemp(f"run-a-{precision}"), **{precision: True}))
        states[precision] = final_state(bmodel)
    return states


def test_metrics_are_logged_for_both_phases(uninterrupted):
    out = uninterrupted["dir"]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(uninterrupted["metrics"]))
    assert [r["step"] for r in lines] == list(range(1, KEY_STEPS + VALUE_STEPS + 1))
    assert [r["phase"] for r in lines] == ["keys"] * KEY_STEPS + ["values"] * VALUE_STEPS
    fit = lines[0]  # step 1: the k-means fit of every layer's keys on cached states
    assert {"kmeans_tokens", "fit_fvu", "fit_fvu_by_layer", "dead_codes", "seconds"} <= set(fit)
    assert sorted(fit["fit_fvu_by_layer"]) == ["0", "2"]
    assert fit["kmeans_tokens"] == 60 and 0.0 <= fit["fit_fvu"] < 1.0
    for record in lines[1:KEY_STEPS]:  # EMA steps, measured before the keys see the batch
        assert {"fvu", "fvu_by_layer", "codes_used_in_batch", "dead_codes", "seconds"} <= set(record)
        assert sorted(record["fvu_by_layer"]) == ["0", "2"]
        assert 0.0 <= record["fvu"] < 1.5
    for record in lines[KEY_STEPS:]:
        assert {"loss", "kl", "fvu", "ce", "ce_base", "ppl_ratio", "lr", "codes_used_in_batch"} <= set(record)
        assert record["kl"] >= 0.0
        assert record["loss"] == pytest.approx(record["kl"] + record["fvu"], abs=2e-4)  # kl+reconstruction, weight 1
    # Codebook usage from step 2 on: a code is dead when no batch used it yet (the window, 200 steps, is longer than
    # the run), so the dead codes only fall, and never more than the codes the step's batch left unused.
    codes = 2 * 4 * 16  # stages x heads x codebook size of a layer
    for layer in ("0", "2"):
        used = [r["codes_used_in_batch"][layer] for r in lines[1:]]
        dead = [r["dead_codes_in_window"][layer] for r in lines[1:]]
        assert all(0 < u <= codes for u in used)
        assert dead == sorted(dead, reverse=True) and all(d <= codes - u for d, u in zip(dead, used, strict=True))
    assert (out / "bottleneck" / "bottleneck.safetensors").is_file()
    assert json.loads((out / "training_args.json").read_text())["value_steps"] == VALUE_STEPS


def test_saved_bottleneck_equals_trained_one(uninterrupted):
    loaded = BottleneckedModel.from_pretrained(make_model("llama"), uninterrupted["dir"] / "bottleneck")
    state = uninterrupted["state"]
    assert sorted(loaded.bottleneck_state()) == sorted(state)
    for key, tensor in loaded.bottleneck_state().items():
        assert torch.equal(tensor, state[key]), key


def test_codes_used_and_dead_codes_count_what_the_batches_use(tmp_path):
    """With a window of one step, the dead codes are exactly the codes the step's batches left unused; the codes
    used are the distinct codes of the step's states (recounted here from the step's chunks)."""
    bmodel = fresh()
    args = run_args(tmp_path, key_steps=2, value_steps=2, dead_feature_window=1, learning_rate=0.0)
    lines = train_bottleneck(bmodel, CHUNKS, args)[1:]
    codes = 2 * 4 * 16
    for record in lines:
        for layer in (0, 2):
            assert record["dead_codes_in_window"][layer] == codes - record["codes_used_in_batch"][layer]
    # The last step (a value step at learning rate 0: the trained model is the one that logged it) read the third
    # batch after the k-means tokens.
    stream = ChunkStream(CHUNKS, args.seed)
    stream.advance(-(-args.kmeans_init_tokens // CHUNKS.shape[1]) + 2 * args.batch_size)
    seen: dict[int, set[int]] = {layer: set() for layer in bmodel.layers}

    def observe(layer, states, result):
        ids = flat_code_ids(result.codes, 4, 16)[~result.passthrough]
        seen[layer] |= set(ids[ids >= 0].tolist())

    with torch.no_grad():
        bmodel.run_to_deepest(stream.take(args.batch_size), observe)
    assert {layer: len(ids) for layer, ids in seen.items()} == lines[-1]["codes_used_in_batch"]


def test_key_phase_fixes_keys_and_value_phase_trains_values(tmp_path):
    bmodel = fresh()
    train_bottleneck(bmodel, CHUNKS, run_args(tmp_path / "keys", value_steps=0))
    keys = {layer: [bmodel.bottleneck(layer).keys(s).clone() for s in range(2)] for layer in bmodel.layers}
    for layer in bmodel.layers:
        for stage in range(2):
            # until value training starts, the outputs are the keys themselves
            assert torch.equal(bmodel.bottleneck(layer).values[stage].data, keys[layer][stage])

    train_bottleneck(bmodel, CHUNKS, run_args(tmp_path / "keys", resume=True))
    for layer in bmodel.layers:
        for stage in range(2):
            assert torch.equal(bmodel.bottleneck(layer).keys(stage), keys[layer][stage])
            assert not torch.equal(bmodel.bottleneck(layer).values[stage].data, keys[layer][stage])
    assert not any(p.requires_grad for p in bmodel.parameters())


@pytest.mark.parametrize(
    ("stop", "checkpoint_every", "precision"),
    [
        (2, 1, "fp32"),
        (KEY_STEPS, 1, "fp32"),
        (KEY_STEPS + 2, 1, "fp32"),
        (KEY_STEPS + 2, 2, "fp32"),
        (KEY_STEPS + 1, 1, "bf16"),
        (KEY_STEPS + 2, 1, "fp16"),
    ],
    ids=["in-key-phase", "at-phase-boundary", "in-value-phase", "between-checkpoints", "bf16-autocast", "fp16-scaled"],
)
def test_resume_is_exact(uninterrupted, uninterrupted_autocast, tmp_path, stop, checkpoint_every, precision):
    expected = uninterrupted_autocast[precision] if precision != "fp32" else uninterrupted["state"]
    options = {"bf16": precision == "bf16", "fp16": precision == "fp16"}
    first = fresh()
    args = run_args(tmp_path, stop_after_steps=stop, checkpoint_every=checkpoint_every, **options)
    metrics = train_bottleneck(first, CHUNKS, args)
    assert metrics[-1]["step"] == stop
    assert not (tmp_path / "bottleneck").exists()  # an unfinished run leaves only checkpoints
    checkpoints = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert checkpoints and len(checkpoints) <= 2  # keep_checkpoints
    assert all(int(name.split("-")[1]) <= stop for name in checkpoints)

    second = fresh()  # a new process would attach a new, untrained bottleneck to the same base
    args = run_args(tmp_path, checkpoint_every=checkpoint_every, resume=True, **options)
    metrics = train_bottleneck(second, CHUNKS, args)
    assert metrics[-1]["step"] == KEY_STEPS + VALUE_STEPS
    # the checkpoint keeps when each code was last used: the usage logged is the uninterrupted run's
    if precision == "fp32":
        usage = ("codes_used_in_batch", "dead_codes_in_window")
        logged = {r["step"]: [r[k] for k in usage] for r in uninterrupted["metrics"] if usage[0] in r}
        assert [[r[k] for k in usage] for r in metrics] == [logged[r["step"]] for r in metrics]
    state = final_state(second)
    assert sorted(state) == sorted(expected)
    different = [k for k in expected if not torch.equal(state[k], expected[k])]
    assert different == []
    saved = BottleneckedModel.from_pretrained(make_model("llama"), tmp_path / "bottleneck").bottleneck_state()
    assert all(torch.equal(saved[k], expected[k]) for k in expected)


def test_new_run_over_checkpoints_is_refused(tmp_path):
    train_bottleneck(fresh(), CHUNKS, run_args(tmp_path, stop_after_steps=1, checkpoint_every=1))
    with pytest.raises(CodeunlearnError) as excinfo:
        train_bottleneck(fresh(), CHUNKS, run_args(tmp_path))
    assert_fix_error(excinfo)
    assert "resume" in str(excinfo.value)


def test_new_run_over_a_finished_bottleneck_is_refused_without_overwrite(uninterrupted, tmp_path):
    """A finished run whose checkpoints were removed still holds its bottleneck; a new run from Python would replace
    it at its final save, so it is refused unless `overwrite`."""
    shutil.copytree(uninterrupted["dir"] / "bottleneck", tmp_path / "bottleneck")
    before = {p.name: p.read_bytes() for p in (tmp_path / "bottleneck").iterdir()}
    with pytest.raises(CodeunlearnError) as excinfo:
        train_bottleneck(fresh(), CHUNKS, run_args(tmp_path, seed=1))
    assert_fix_error(excinfo)
    assert "overwrite" in str(excinfo.value)
    assert {p.name: p.read_bytes() for p in (tmp_path / "bottleneck").iterdir()} == before
    bmodel = fresh()
    train_bottleneck(bmodel, CHUNKS, run_args(tmp_path, seed=1, overwrite=True))
    saved = BottleneckedModel.from_pretrained(make_model("llama"), tmp_path / "bottleneck").bottleneck_state()
    assert all(torch.equal(saved[k], v) for k, v in final_state(bmodel).items())
    assert any(not torch.equal(saved[k], v) for k, v in uninterrupted["state"].items())  # another seed: replaced


def test_resume_without_checkpoint_is_refused(tmp_path):
    with pytest.raises(CodeunlearnError) as excinfo:
        train_bottleneck(fresh(), CHUNKS, run_args(tmp_path, resume=True))
    assert_fix_error(excinfo)
    # it says where it looked and never suggests starting fresh (that would abandon the run it was meant to continue)
    assert str((tmp_path / "checkpoints").resolve()) in str(excinfo.value)
    assert "drop --resume" not in str(excinfo.value) and "--output_dir" in str(excinfo.value)


def test_resume_with_another_bottleneck_config_is_refused(tmp_path):
    train_bottleneck(fresh(), CHUNKS, run_args(tmp_path, stop_after_steps=1, checkpoint_every=1))
    other = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[0, 2], num_stages=1))
    with pytest.raises(CodeunlearnError) as excinfo:
        train_bottleneck(other, CHUNKS, run_args(tmp_path, resume=True))
    assert_fix_error(excinfo)


@pytest.mark.parametrize("objective", ["reconstruction", "kl"])
def test_value_training_improves_its_objective(tmp_path, objective):
    """From values = keys (end of the key phase), value steps lower the FVU or the loss gap on fixed chunks."""
    bmodel = fresh()
    train_bottleneck(bmodel, CHUNKS, run_args(tmp_path, objective=objective, key_steps=2, value_steps=0))

    def measure():
        fvu = sum(f.fvu_ordinary for f in bottleneck_fidelity(bmodel, CHUNKS, bf16=False))
        return fvu, mean_loss(bmodel, CHUNKS, bf16=False)

    with bmodel.disabled():
        base_loss = mean_loss(bmodel, CHUNKS, bf16=False)
    fvu_before, loss_before = measure()
    args = run_args(tmp_path, objective=objective, key_steps=2, value_steps=20, learning_rate=1e-3, resume=True)
    metrics = [r for r in train_bottleneck(bmodel, CHUNKS, args) if r["phase"] == "values"]
    fvu_after, loss_after = measure()
    if objective == "reconstruction":
        assert all(r["loss"] == pytest.approx(r["fvu"], abs=1e-4) for r in metrics)
        assert fvu_after < 0.95 * fvu_before, (fvu_before, fvu_after)
    else:
        assert all(r["loss"] == pytest.approx(r["kl"], abs=1e-4) for r in metrics)
        assert loss_after - base_loss < 0.8 * (loss_before - base_loss), (base_loss, loss_before, loss_after)


def test_accumulated_batches_step_like_one_large_batch(tmp_path):
    """Two batches of 2 per value step read the chunks one batch of 4 reads (the cursor moves by 4 a step), and on
    the KL objective (a mean over equal batches) the values end where the large batch's end, to rounding (the
    k-means keys are the same: they do not depend on the batch)."""
    runs = {}
    for name, batch, accumulation in (("large", 4, 1), ("accumulated", 2, 2)):
        bmodel = fresh()
        args = run_args(
            tmp_path / name, key_steps=1, batch_size=batch, gradient_accumulation_steps=accumulation, objective="kl"
        )
        metrics = train_bottleneck(bmodel, CHUNKS, args)
        runs[name] = (final_state(bmodel), metrics)
    (large, large_metrics), (accumulated, accumulated_metrics) = runs["large"], runs["accumulated"]
    assert [m["lr"] for m in accumulated_metrics if "lr" in m] == [m["lr"] for m in large_metrics if "lr" in m]
    assert {m["effective_batch"] for m in accumulated_metrics if m["phase"] == "values"} == {4}
    for name in large:
        torch.testing.assert_close(accumulated[name], large[name], rtol=0, atol=1e-5, msg=name)


def test_bad_training_arguments():
    bad_values = ({"objective": "mse"}, {"key_steps": 0}, {"batch_size": 0}, {"value_steps": -1})
    for bad in (*bad_values, {"gradient_accumulation_steps": 0}):
        with pytest.raises(CodeunlearnError) as excinfo:
            tiny_args("/nonexistent", **bad)
        assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError):
        ChunkStream(CHUNKS[:0], seed=0)


def test_chunk_stream_is_a_seeded_permutation_per_epoch():
    chunks = torch.arange(10).view(5, 2)
    stream = ChunkStream(chunks, seed=3)
    epoch = stream.take(5)
    assert sorted(epoch[:, 0].tolist()) == [0, 2, 4, 6, 8]
    assert torch.equal(ChunkStream(chunks, seed=3).take(5), epoch)
    assert not torch.equal(ChunkStream(chunks, seed=4).take(10), stream.take(10))
    stream.advance(3)
    assert torch.equal(stream.take(2), epoch[3:])
    assert torch.equal(ChunkStream(chunks, seed=3, cursor=3).take(4), stream.take(4))


def test_init_from_adds_adapters_to_a_trained_bottleneck(uninterrupted, tmp_path):
    """A second run from a finished bottleneck skips the key phase, keeps its keys and trains values and adapters."""
    source = uninterrupted["dir"] / "bottleneck"
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[0, 2], num_stages=2, adapter_rank=2))
    metrics = train_bottleneck(bmodel, CHUNKS, run_args(tmp_path, init_from=str(source), adapter_learning_rate=1e-2))
    assert [r["phase"] for r in metrics] == ["values"] * VALUE_STEPS
    state = final_state(bmodel)
    for name, tensor in uninterrupted["state"].items():
        if "key" in name or "embed" in name:
            assert torch.equal(state[name], tensor), name
    assert any(v.abs().sum() > 0 for k, v in state.items() if k.startswith("adapters.") and "lora_B" in k)


def test_init_from_continues_saved_adapters_of_the_same_rank(uninterrupted, tmp_path):
    """Adapters saved with the bottleneck are loaded at the same rank (a continued run) and fresh at another."""
    with_adapters = tmp_path / "with-adapters"
    first = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[0, 2], num_stages=2, adapter_rank=2))
    train_bottleneck(
        first,
        CHUNKS,
        run_args(with_adapters, init_from=str(uninterrupted["dir"] / "bottleneck"), adapter_learning_rate=1e-2),
    )
    trained = {k: v.detach().clone() for k, v in first.adapter_parameters().items()}
    assert any(v.abs().sum() > 0 for k, v in trained.items() if "lora_B" in k)
    for rank, expect_loaded in ((2, True), (3, False)):
        bmodel = BottleneckedModel.attach(
            make_model("llama"), tiny_config(layers=[0, 2], num_stages=2, adapter_rank=rank)
        )
        args = run_args(tmp_path / f"rank{rank}", init_from=str(with_adapters / "bottleneck"), value_steps=0)
        train_bottleneck(bmodel, CHUNKS, args)
        adapters = bmodel.adapter_parameters()
        if expect_loaded:
            assert all(torch.equal(adapters[k], v) for k, v in trained.items())
        else:
            assert all(v.abs().sum() == 0 for k, v in adapters.items() if "lora_B" in k)


def test_init_from_another_shape_is_refused(uninterrupted, tmp_path):
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[0, 2], num_stages=1))
    with pytest.raises(CodeunlearnError, match="num_stages"):
        train_bottleneck(bmodel, CHUNKS, run_args(tmp_path, init_from=str(uninterrupted["dir"] / "bottleneck")))
    with pytest.raises(CodeunlearnError, match="holds no"):
        run_args(tmp_path, init_from=str(tmp_path))
