"""Training precision and speed options: fp16 autocast with a loss scale (`--fp16`), and `--compile`.

- the loss scaler: an overflowing update is skipped (parameters and optimizer state unchanged, scale halved), the
  gradients are unscaled before clipping, the schedule steps either way;
- fp16 value training (and SAE training) ends near fp32's; a value phase whose every update overflows leaves the values as the
  k-means left them; an fp16 run resumed from a checkpoint (scale and skip count included) ends with the
  uninterrupted run's weights;
- `--fp16` with `--bf16`, and accelerate's own mixed precision, are refused;
- compiled decoder layers train what eager ones train, to float rounding, and are eager again afterwards.

CPU autocast supports float16 and `torch.amp.GradScaler("cpu")` scales as on a GPU, so all of it runs here.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers import assert_fix_error, make_cli_workspace, make_model, make_tokens, run_error, tiny_args, tiny_config

from codeunlearn.bottleneck.config import BottleneckConfig
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.train import TrainingArguments, train_bottleneck
from codeunlearn.train.precision import LossScaler

CHUNKS = make_tokens(40, 10, seed=11)
INIT_SCALE = 2.0**16  # GradScaler's default


def fresh(lm_head_factor: float = 1.0) -> BottleneckedModel:
    """One single-stage codebook at layer 1 of the tiny llama. Its codes read the frozen model's states, so fp16 or a
    compiled layer changes no code assignment here and the runs compare weight for weight. `lm_head_factor` scales
    the output embedding: its gradients then overflow fp16 at large loss scales."""
    model = make_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(lm_head_factor)
    return BottleneckedModel.attach(model, tiny_config(layers=[1], num_stages=1))


def run_args(output_dir, **overrides) -> TrainingArguments:
    values = {"key_steps": 1, "value_steps": 4, "batch_size": 4, "kmeans_init_tokens": 80, "learning_rate": 1e-2}
    return tiny_args(output_dir, **(values | overrides))


def state(bmodel: BottleneckedModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in bmodel.bottleneck_state().items()}


def values_of(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in weights.items() if ".values." in k}


# ----------------------------------------------------------------------------------------------- the loss scaler
def _linear_step(scaler: LossScaler, loss_factor: float, clip: float | None = None):
    """One scaled update of a 2x2 linear map whose loss is `loss_factor * weight.sum()` (gradient: all
    `loss_factor`); returns (parameter before, after, optimizer, scheduler, made, clipped norm)."""
    weight = torch.nn.Parameter(torch.ones(2, 2))
    optimizer = torch.optim.AdamW([weight], lr=0.1, weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 / (step + 1))
    before = weight.detach().clone()
    scaler.scale(weight.sum() * loss_factor).backward()
    norm = None
    if clip is not None:
        scaler.unscale_(optimizer)
        norm = float(torch.nn.utils.clip_grad_norm_([weight], clip))
    made = scaler.step(optimizer, scheduler)
    return before, weight.detach(), optimizer, scheduler, made, norm


def test_an_overflowing_update_is_skipped_and_the_scale_halved():
    scaler = LossScaler("cpu", enabled=True)
    # 1e35 x the scale 2**16 is past float32's 3.4e38: every gradient is inf
    before, after, optimizer, scheduler, made, _ = _linear_step(scaler, 1e35)
    assert not made
    assert torch.equal(after, before)
    assert optimizer.state_dict()["state"] == {}  # Adam's moments were never touched
    assert scheduler.get_last_lr() == [0.1 / 2]  # the schedule counts steps, skipped or not
    assert scaler.record() == {"grad_scale": INIT_SCALE / 2, "skipped_updates": 1}

    # a finite update at the lowered scale goes through and keeps the scale
    before, after, _, _, made, _ = _linear_step(scaler, 1.0)
    assert made
    torch.testing.assert_close(after, before - 0.1, rtol=0, atol=1e-6)  # Adam's first step: lr x sign(gradient)
    assert scaler.record() == {"grad_scale": INIT_SCALE / 2, "skipped_updates": 1}


def test_gradients_are_unscaled_before_clipping():
    """The clipping sees the true gradient (4 entries of 3: norm 6), not the scaled one."""
    *_, made, norm = _linear_step(LossScaler("cpu", enabled=True), 3.0, clip=1.0)
    assert made and norm == pytest.approx(6.0)


def test_a_scaler_outside_fp16_passes_through():
    scaler = LossScaler("cpu", enabled=False)
    loss = torch.tensor(2.5)
    assert scaler.scale(loss) is loss
    before, after, _, _, made, norm = _linear_step(scaler, 3.0, clip=100.0)
    assert made and norm == pytest.approx(6.0) and not torch.equal(after, before)
    assert scaler.record() == {}


# ----------------------------------------------------------------------------------------------- fp16 training
def test_fp16_value_training_ends_near_fp32(tmp_path):
    runs = {}
    for name, options in (("fp32", {}), ("fp16", {"fp16": True})):
        bmodel = fresh()
        metrics = train_bottleneck(bmodel, CHUNKS, run_args(tmp_path / name, objective="kl+reconstruction", **options))
        runs[name] = (state(bmodel), [m for m in metrics if m["phase"] == "values"])
    (fp32, fp32_metrics), (fp16, fp16_metrics) = runs["fp32"], runs["fp16"]
    assert all(math.isfinite(m["loss"]) for m in fp16_metrics)
    assert [m["lr"] for m in fp16_metrics] == [m["lr"] for m in fp32_metrics]
    for ours, theirs in zip(fp16_metrics, fp32_metrics, strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], abs=2e-3)
        assert ours["codes_used_in_batch"] == theirs["codes_used_in_batch"]
    assert {m["grad_scale"] for m in fp16_metrics} == {INIT_SCALE} and fp16_metrics[-1]["skipped_updates"] == 0
    assert "grad_scale" not in fp32_metrics[-1]
    start = fresh()  # the values the value phase starts from: the k-means step's
    train_bottleneck(start, CHUNKS, run_args(tmp_path / "keys", value_steps=0))
    keys_only = values_of(state(start))
    for name, value in values_of(fp32).items():
        moved = float((value - keys_only[name]).abs().max())
        assert moved > 50 * 2e-4, (name, moved)  # the tolerance below is far smaller than what training changed
        torch.testing.assert_close(fp16[name], value, rtol=0, atol=2e-4, msg=name)


def test_a_value_phase_whose_updates_all_overflow_keeps_the_kmeans_values(tmp_path):
    """With the output embedding scaled by 3,000 every fp16 backward overflows at scales 2**16 .. 2**12: each of
    the 5 updates is skipped, so the values stay exactly where the k-means step left them and the scale ends at
    2**16 / 2**5; the learning rate follows the fp32 run's schedule."""
    start = fresh(3000.0)
    train_bottleneck(start, CHUNKS, run_args(tmp_path / "keys", value_steps=0, fp16=True, objective="kl"))
    bmodel = fresh(3000.0)
    metrics = train_bottleneck(bmodel, CHUNKS, run_args(tmp_path / "fp16", value_steps=5, fp16=True, objective="kl"))
    values = [m for m in metrics if m["phase"] == "values"]
    assert [m["skipped_updates"] for m in values] == [1, 2, 3, 4, 5]
    assert [m["grad_scale"] for m in values] == [INIT_SCALE / 2**k for k in range(1, 6)]
    assert all(math.isfinite(m["loss"]) for m in values)  # the forward is fine: only the gradients overflow
    assert [k for k, v in state(start).items() if not torch.equal(state(bmodel)[k], v)] == []
    fp32 = fresh(3000.0)
    fp32_metrics = train_bottleneck(fp32, CHUNKS, run_args(tmp_path / "fp32", value_steps=5, objective="kl"))
    assert [m["lr"] for m in values] == [m["lr"] for m in fp32_metrics if m["phase"] == "values"]
    assert any(not torch.equal(v, state(start)[k]) for k, v in values_of(state(fp32)).items())


FP16_RUN = {"value_steps": 8, "fp16": True, "objective": "kl", "learning_rate": 1e-3}


def test_fp16_sae_training_ends_near_fp32(tmp_path):
    """An SAE reads fp16-autocast states and trains in fp32 with its loss scaled: it ends near the fp32 SAE
    (measured: 4e-4 on the decoder, which training moved by 0.3)."""
    config = BottleneckConfig.from_dict({"layers": [0, 2], "kind": "sae", "sae_width": 48, "sae_k": 4})
    runs = {}
    for name, options in (("start", {}), ("fp32", {}), ("fp16", {"fp16": True})):
        bmodel = BottleneckedModel.attach(make_model("llama"), config)
        if name != "start":
            args = tiny_args(tmp_path / name, sae_steps=6, batch_size=3, kmeans_init_tokens=60, **options)
            runs[f"{name} metrics"] = train_bottleneck(bmodel, CHUNKS, args)
        runs[name] = state(bmodel)
    assert [m["grad_scale"] for m in runs["fp16 metrics"]] == [INIT_SCALE] * 6
    for ours, theirs in zip(runs["fp16 metrics"], runs["fp32 metrics"], strict=True):
        assert ours["loss"] == pytest.approx(theirs["loss"], rel=1e-3)
    for name, value in runs["fp32"].items():
        if value.is_floating_point():
            torch.testing.assert_close(runs["fp16"][name], value, rtol=0, atol=1e-3, msg=name)
    assert float((runs["fp32"]["2.sae.W_dec"] - runs["start"]["2.sae.W_dec"]).abs().max()) > 0.1


@pytest.fixture(scope="module")
def uninterrupted_fp16(tmp_path_factory):
    """An fp16 run whose loss scale overflows now and then (output embedding x30): skipped updates at value steps
    1, 2 and 7 (scale 2**16 -> 2**13)."""
    out = tmp_path_factory.mktemp("fp16-run")
    bmodel = fresh(30.0)
    metrics = train_bottleneck(bmodel, CHUNKS, run_args(out, **FP16_RUN))
    return {"metrics": metrics, "state": state(bmodel)}


def test_fp16_resume_is_exact(uninterrupted_fp16, tmp_path):
    stop = 4  # after value step 3: two updates skipped, scale 2**14
    expected = uninterrupted_fp16["metrics"]
    skipped = {m["step"]: m["skipped_updates"] for m in expected if "skipped_updates" in m}
    # the run skips again after the stop, at the scale the checkpoint holds: a fresh scale would skip more
    assert skipped[stop] == 2 and skipped[9] > skipped[stop]
    options = {**FP16_RUN, "checkpoint_every": 1}
    train_bottleneck(fresh(30.0), CHUNKS, run_args(tmp_path, stop_after_steps=stop, **options))
    saved = json.loads(sorted((tmp_path / "checkpoints").iterdir())[-1].joinpath("trainer_state.json").read_text())
    assert (
        saved["loss_scaler"]["grad_scaler"]["scale"] == INIT_SCALE / 4 and saved["loss_scaler"]["skipped_updates"] == 2
    )
    second = fresh(30.0)
    metrics = train_bottleneck(second, CHUNKS, run_args(tmp_path, resume=True, **options))
    assert [(m["grad_scale"], m["skipped_updates"]) for m in metrics] == [
        (m["grad_scale"], m["skipped_updates"]) for m in expected if m["step"] > stop
    ]
    final = state(second)
    assert [k for k, v in uninterrupted_fp16["state"].items() if not torch.equal(final[k], v)] == []


# ----------------------------------------------------------------------------------------------- refusals
def test_fp16_with_bf16_is_refused(tmp_path, capsys):
    with pytest.raises(CodeunlearnError) as excinfo:
        run_args(tmp_path, fp16=True, bf16=True)
    assert_fix_error(excinfo)
    workspace = make_cli_workspace(tmp_path)
    out = tmp_path / "out"
    argv = ["train", "--model_name_or_path", str(workspace["model"]), "--corpora", str(workspace["retain"])]
    line = run_error([*argv, "--layers", "1", "--output_dir", str(out), "--fp16", "--bf16"], capsys)
    assert "--bf16 and --fp16" in line
    assert not out.exists()  # refused before anything is written


def test_accelerate_mixed_precision_is_refused(tmp_path, monkeypatch):
    """`accelerate launch --mixed_precision fp16` would autocast the bottleneck's training math and scale the loss
    twice: refused before anything runs, naming the command's own flags."""
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "fp16")
    with pytest.raises(CodeunlearnError) as excinfo:
        run_args(tmp_path, fp16=True)
    assert_fix_error(excinfo)
    assert "--fp16" in str(excinfo.value) and "mixed_precision fp16" in str(excinfo.value)


# ----------------------------------------------------------------------------------------------- compile
@pytest.mark.slow  # inductor's first compile of the layers: 40 s on 2 loaded CPU cores (3 s from a warm cache)
def test_compiled_layers_train_what_eager_layers_train(tmp_path):
    """One EMA key step and three value steps with every decoder layer compiled end where the eager run ends, to
    float rounding (measured: 7e-8 on the values, 1e-8 on the keys), and the layers run eagerly afterwards."""
    from torch._dynamo.utils import counters

    runs = {}
    for name, compile_ in (("eager", False), ("compiled", True)):
        bmodel = fresh()
        graphs = counters["stats"]["unique_graphs"]
        args = run_args(tmp_path / name, key_steps=2, value_steps=3, compile=compile_, objective="kl+reconstruction")
        metrics = train_bottleneck(bmodel, CHUNKS, args)
        runs[name] = (state(bmodel), metrics, counters["stats"]["unique_graphs"] - graphs, bmodel)
    (eager, eager_metrics, eager_graphs, _), (compiled, compiled_metrics, compiled_graphs, bmodel) = runs.values()
    assert eager_graphs == 0 and compiled_graphs > 0
    for ours, theirs in zip(compiled_metrics, eager_metrics, strict=True):
        assert ours.get("loss") == pytest.approx(theirs.get("loss"), abs=1e-4)
        assert ours.get("codes_used_in_batch") == theirs.get("codes_used_in_batch")
    for name, value in eager.items():
        torch.testing.assert_close(compiled[name], value, rtol=1e-5, atol=1e-6, msg=name)
    frames = counters["frames"]["total"]
    with torch.no_grad():
        bmodel(input_ids=make_tokens(2, 7, seed=3), use_cache=False)  # a new shape: compiled layers would compile
    assert counters["frames"]["total"] == frames


# ----------------------------------------------------------------------------------------------- data-parallel
@pytest.mark.slow  # two accelerate-launched CPU processes: about 20 s
def test_two_fp16_processes_train_what_one_fp16_process_trains(tmp_path):
    """`train --fp16` under `accelerate launch` (2 gloo processes at batch 2) against one process at batch 4: the
    scaler reads the reduced gradients, so the scale, the schedule and the values follow the one-process run (values
    to 1e-4, as for fp32 in test_distributed)."""
    from test_distributed import ACCELERATE, launch, metrics, train_flags, weights

    from codeunlearn.cli import main

    workspace = make_cli_workspace(tmp_path)
    fp16 = ["--fp16", "--objective", "kl"]
    assert main(["train", *train_flags(workspace, 4, tmp_path / "one"), *fp16]) == 0
    two = launch(ACCELERATE, ["train", *train_flags(workspace, 2, tmp_path / "two"), *fp16])
    assert two.returncode == 0, two.stderr[-3000:]
    logged = [
        [(m.get("lr"), m.get("grad_scale"), m.get("skipped_updates")) for m in metrics(tmp_path / run)]
        for run in ("one", "two")
    ]
    assert logged[0] == logged[1] and logged[0][-1][1] == INIT_SCALE
    one, two_weights = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in one:
        if ".values." in name:
            torch.testing.assert_close(two_weights[name], one[name], rtol=0, atol=1e-4, msg=name)
