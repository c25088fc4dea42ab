"""Gradient unlearning baselines on tiny random models: losses with known values, scope, and the shared loop."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from helpers import HIDDEN, assert_fix_error, make_model, make_tokens

from codeunlearn.baselines import (
    BaselineTrainingArguments,
    GradDiffConfig,
    NPOConfig,
    RMUConfig,
    make_method,
    method_class,
    train_baseline,
)
from codeunlearn.baselines.npo import npo_loss
from codeunlearn.baselines.rmu import default_layer, mlp_weights
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import mean_loss

FORGET = make_tokens(16, 12, seed=1)
RETAIN = make_tokens(16, 12, seed=2)


def run(model, name: str, tmp_path, forget=FORGET, retain=RETAIN, args=None, **config):
    """Train `model` in place with a few steps of `name` at a learning rate that moves a tiny model visibly."""
    values = {"max_steps": 4, "batch_size": 4, "learning_rate": 1e-3, "warmup_ratio": 0.0, **config}
    args = args or BaselineTrainingArguments(str(tmp_path / name), log_every=1, progress=False, save_model=False)
    return train_baseline(model, make_method(name, **values), forget, retain, args)


def snapshot(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def changed(model, before: dict[str, torch.Tensor]) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}


def raises_fix(call, *args, **kwargs) -> str:
    with pytest.raises(CodeunlearnError) as excinfo:
        call(*args, **kwargs)
    assert_fix_error(excinfo)
    return str(excinfo.value)


# ------------------------------------------------------------------------------------------------ GA / GradDiff
def test_gradient_ascent_raises_forget_loss(tmp_path):
    model = make_model("llama")
    before_loss, before = mean_loss(model, FORGET), snapshot(model)
    result = run(model, "ga", tmp_path)
    assert mean_loss(model, FORGET) > before_loss + 0.05
    # Full fine-tuning is GA's scope: every parameter moved, and the count reported is the model's.
    assert changed(model, before) == set(before)
    assert result.trainable_parameters == sum(p.numel() for p in model.parameters())
    assert not any(p.requires_grad for p in model.parameters())  # frozen again afterwards
    assert all(m["loss"] == -m["forget_nll"] for m in result.metrics)


def test_grad_diff_with_zero_forget_weight_lowers_retain_loss(tmp_path):
    model = make_model("llama")
    before = mean_loss(model, RETAIN)
    method = make_method("grad_diff", forget_weight=0.0)
    assert not method.needs_forget and method.needs_retain
    result = run(model, "grad_diff", tmp_path, forget=None, forget_weight=0.0)
    assert mean_loss(model, RETAIN) < before - 0.05
    assert "forget_nll" not in result.metrics[0] and result.tokens == {"retain": 4 * 4 * 12}


def test_grad_diff_loss_is_weighted_difference():
    model = make_model("llama")
    method = make_method("grad_diff", forget_weight=2.0, retain_weight=0.5)
    loss, parts = method.loss(model, FORGET[:4], RETAIN[:4])
    assert parts["forget_nll"] == pytest.approx(mean_loss(model, FORGET[:4]), rel=1e-5)
    assert float(loss) == pytest.approx(-2.0 * parts["forget_nll"] + 0.5 * parts["retain_nll"], rel=1e-5)


# ------------------------------------------------------------------------------------------------ NPO
def test_npo_loss_matches_closed_form():
    logp, ref = torch.tensor([-10.0, -12.0, -5.0]), torch.tensor([-11.0, -11.0, -5.0])
    beta = 0.1
    # log σ(-β Δ) = -log(1 + exp(β Δ)), Δ = (+1, -1, 0)
    by_hand = (2 / beta) * (math.log1p(math.exp(0.1)) + math.log1p(math.exp(-0.1)) + math.log(2)) / 3
    assert float(npo_loss(logp, ref, beta)) == pytest.approx(by_hand, rel=1e-6)
    assert float(npo_loss(ref, ref, 0.5)) == pytest.approx(2 / 0.5 * math.log(2), rel=1e-6)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_npo_at_initialisation_is_two_over_beta_log_two(beta):
    model = make_model("llama")
    method = make_method("npo", beta=beta)
    method.prepare(model, FORGET, None)
    loss, parts = method.loss(model, FORGET[:4], None)
    assert float(loss) == pytest.approx(2 / beta * math.log(2), rel=1e-6)
    assert parts["log_ratio"] == 0.0


def test_npo_trains_the_policy_not_the_reference(tmp_path):
    model = make_model("llama")
    method = make_method("npo", max_steps=4, batch_size=4, learning_rate=1e-3, warmup_ratio=0.0, retain_weight=0.1)
    method.prepare(model, FORGET, RETAIN)
    reference, ref_before = method.reference, snapshot(method.reference)
    before = mean_loss(model, FORGET)
    args = BaselineTrainingArguments(str(tmp_path / "npo"), progress=False, save_model=False)
    method.prepare = lambda *a: {}  # keep the reference built above, so it can be inspected after training
    result = train_baseline(model, method, FORGET, RETAIN, args)
    assert changed(reference, ref_before) == set()
    assert mean_loss(model, FORGET) > before
    assert result.metrics[-1]["log_ratio"] < 0  # the policy's forget likelihood fell below the reference's
    assert set(result.tokens) == {"forget", "retain"}


# ------------------------------------------------------------------------------------------------ RMU
def rmu_by_hand(model, layer: int, chunks, control) -> float:
    h = model(input_ids=chunks, output_hidden_states=True).hidden_states[layer + 1]  # [0] is the embedding
    return float(((h - control) ** 2).mean())


def test_rmu_forget_loss_at_start_is_mse_to_c_u():
    model = make_model("llama", num_layers=4)
    method = make_method("rmu", layer=1, steering_coeff=6.5, vector_seed=3)
    resolved = method.prepare(model, FORGET, RETAIN)
    u = torch.rand(HIDDEN, generator=torch.Generator().manual_seed(3))
    control = 6.5 * u / u.norm()
    with torch.no_grad():
        loss, parts = method.loss(model, FORGET[:4], RETAIN[:4])
    assert parts["forget_mse"] == pytest.approx(rmu_by_hand(model, 1, FORGET[:4], control), rel=1e-5)
    assert parts["retain_mse"] == 0.0  # the model still equals its frozen start
    assert float(loss) == pytest.approx(parts["forget_mse"], rel=1e-6)
    assert resolved["steering_coeff"] == 6.5 and resolved["trained_layers"] == [0, 1]


def test_rmu_scales_c_to_the_mean_residual_norm():
    model = make_model("llama", num_layers=4)
    method = make_method("rmu", layer=2, steering_norm_ratio=3.0)
    resolved = method.prepare(model, FORGET, RETAIN)
    with torch.no_grad():
        h = model(input_ids=FORGET, output_hidden_states=True).hidden_states[3]
    norm = float(h[:, 1:].norm(dim=-1).mean())  # position 0 (attention sink) left out
    assert resolved["mean_token_norm"] == pytest.approx(norm, rel=1e-5)
    assert resolved["steering_coeff"] == pytest.approx(3.0 * norm, rel=1e-5)
    assert float(method.control.norm()) == pytest.approx(3.0 * norm, rel=1e-5)


def test_rmu_default_layer_is_the_papers_relative_depth():
    assert default_layer(32) == 7 and default_layer(30) == 7 and default_layer(4) == 1
    assert make_method("rmu").resolve_layer(make_model("llama", num_layers=4)) == 1


@pytest.mark.parametrize(
    ("mlp_params", "expected"),
    [("output", {"down_proj"}), ("all", {"gate_proj", "up_proj", "down_proj"})],
)
def test_rmu_changes_only_the_mlps_of_layers_l_minus_2_to_l(tmp_path, mlp_params, expected):
    model = make_model("llama", num_layers=4)
    before = snapshot(model)
    result = run(model, "rmu", tmp_path, layer=2, steering_coeff=6.5, mlp_params=mlp_params)
    wanted = {f"model.layers.{i}.mlp.{name}.weight" for i in (0, 1, 2) for name in expected}
    assert changed(model, before) == wanted
    assert result.resolved["trained_parameters"] == sorted(wanted)
    assert result.metrics[-1]["forget_mse"] < result.metrics[0]["forget_mse"]


def test_rmu_output_projection_found_in_gpt2():
    names = mlp_weights(make_model("gpt2"), [1], "output")
    assert set(names) == {"transformer.h.1.mlp.c_proj.weight", "transformer.h.1.mlp.c_proj.bias"}


# ------------------------------------------------------------------------------------------------ the loop
def test_wall_time_and_metrics_are_recorded(tmp_path):
    args = BaselineTrainingArguments(str(tmp_path / "run"), log_every=1, progress=False)
    result = run(make_model("llama"), "ga", tmp_path, args=args)
    assert result.finished and result.train_seconds > 0 and result.steps == 4
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["train_seconds"] == result.train_seconds and saved["method"] == "ga"
    assert saved["config"]["learning_rate"] == 1e-3
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    assert all(a["seconds"] <= b["seconds"] for a, b in itertools.pairwise(lines))


def test_saved_model_loads_back_with_the_same_logits(tmp_path):
    from transformers import AutoModelForCausalLM

    model = make_model("llama")
    args = BaselineTrainingArguments(str(tmp_path / "run"), progress=False)
    result = run(model, "npo", tmp_path, args=args)
    loaded = AutoModelForCausalLM.from_pretrained(result.model_dir).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=FORGET).logits, model(input_ids=FORGET).logits)
    assert not any(p.name.startswith(".model.tmp") for p in (tmp_path / "run").iterdir())  # renamed into place


def test_resume_reaches_the_weights_of_an_uninterrupted_run(tmp_path):
    def args(name: str, **kw) -> BaselineTrainingArguments:
        return BaselineTrainingArguments(str(tmp_path / name), progress=False, save_model=False, **kw)

    full = make_model("llama")
    run(full, "grad_diff", tmp_path, args=args("full"), max_steps=4, warmup_ratio=0.25)
    staged = make_model("llama")
    first = run(
        staged,
        "grad_diff",
        tmp_path,
        args=args("staged", checkpoint_every=2, stop_after_steps=2),
        max_steps=4,
        warmup_ratio=0.25,
    )
    assert not first.finished and not (tmp_path / "staged" / "result.json").exists()
    resumed = make_model("llama")  # a fresh start, as a new process would load it
    result = run(
        resumed,
        "grad_diff",
        tmp_path,
        args=args("staged", checkpoint_every=2, resume=True),
        max_steps=4,
        warmup_ratio=0.25,
    )
    assert result.finished and result.steps == 4
    for (name, a), b in zip(full.named_parameters(), resumed.parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "staged" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    # Another method cannot resume this run; a fresh run refuses the used directory.
    message = raises_fix(run, make_model("llama"), "ga", tmp_path, args=args("staged", resume=True))
    assert "another method" in message
    raises_fix(run, make_model("llama"), "ga", tmp_path, args=args("staged"))


# ------------------------------------------------------------------------------------------------ bad input
def test_unknown_method_and_bad_configs():
    assert "ga, grad_diff, npo, rmu" in raises_fix(method_class, "sgd")
    raises_fix(make_method, "npo", gamma=1.0)  # a field NPO does not have
    raises_fix(NPOConfig, beta=0.0)
    raises_fix(GradDiffConfig, forget_weight=0.0, retain_weight=0.0)
    raises_fix(RMUConfig, steering_coeff=-1.0)
    raises_fix(RMUConfig, lr_scheduler="step")
    raises_fix(NPOConfig, max_steps=0)


def test_rmu_layer_out_of_range(tmp_path):
    message = raises_fix(run, make_model("llama"), "rmu", tmp_path, layer=3)
    assert "[0, 2]" in message


def test_empty_or_missing_corpus(tmp_path):
    message = raises_fix(run, make_model("llama"), "ga", tmp_path, forget=FORGET[:0])
    assert "forget" in message
    message = raises_fix(run, make_model("llama"), "rmu", tmp_path, retain=None)
    assert "retain" in message


# ------------------------------------------------------------------------------------------------ fp16
def loud_model(factor: float) -> torch.nn.Module:
    """The tiny Llama with its output embedding scaled by `factor`: large logits, whose fp16 gradients overflow at
    GradScaler's starting scale (2**16) for a large enough factor."""
    model = make_model("llama")
    with torch.no_grad():
        model.lm_head.weight.mul_(factor)
    return model


def fp16_args(tmp_path, name: str, **kw) -> BaselineTrainingArguments:
    return BaselineTrainingArguments(
        str(tmp_path / name), fp16=True, log_every=1, progress=False, save_model=False, **kw
    )


def test_fp16_gradient_ascent_ends_near_fp32(tmp_path):
    """fp16 autocast with a loss scale trains what fp32 trains, to fp16's rounding; nothing overflows here."""
    fp32, fp16 = make_model("llama"), make_model("llama")
    run(fp32, "ga", tmp_path / "fp32")
    result = run(fp16, "ga", tmp_path / "fp16", args=fp16_args(tmp_path, "fp16"))
    assert [m["skipped_updates"] for m in result.metrics] == [0, 0, 0, 0]
    assert {m["grad_scale"] for m in result.metrics} == {2.0**16}
    # Adam turns tiny gradients into +-lr steps, so single weights may differ by a step; the losses agree.
    base, after32, after16 = (mean_loss(m, FORGET) for m in (make_model("llama"), fp32, fp16))
    assert after32 - base > 0.05 and abs(after16 - after32) < (after32 - base) / 20


def test_fp16_overflowing_updates_are_skipped_and_a_resumed_run_ends_where_the_whole_run_ends(tmp_path):
    """Logits x30 overflow the fp16 backward at scales 2**16 and 2**15: the first two updates are skipped (the scale
    halves each time), the next two are made at 2**14. The scaler is checkpointed, so a run stopped after step 2 and
    resumed makes the same two updates (restarted at 2**16 it would skip step 3 again) and ends with the
    uninterrupted run's weights and log."""
    start = snapshot(loud_model(30.0))
    whole = loud_model(30.0)
    result = run(whole, "ga", tmp_path, args=fp16_args(tmp_path, "whole"), max_steps=4)
    assert [(m["grad_scale"], m["skipped_updates"]) for m in result.metrics] == [
        (2.0**15, 1),
        (2.0**14, 2),
        (2.0**14, 2),
        (2.0**14, 2),
    ]
    assert changed(whole, start)
    staged = loud_model(30.0)
    run(staged, "ga", tmp_path, args=fp16_args(tmp_path, "staged", checkpoint_every=2, stop_after_steps=2), max_steps=4)
    resumed = loud_model(30.0)
    again = run(
        resumed, "ga", tmp_path, args=fp16_args(tmp_path, "staged", checkpoint_every=2, resume=True), max_steps=4
    )
    for a, b in zip(whole.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)
    assert [(m["grad_scale"], m["skipped_updates"]) for m in again.metrics] == [
        (m["grad_scale"], m["skipped_updates"]) for m in result.metrics[2:]
    ]


def test_fp16_refuses_float16_parameters_and_bf16(tmp_path):
    half = make_model("llama").half()
    message = raises_fix(run, half, "ga", tmp_path, args=fp16_args(tmp_path, "half"))
    assert "--fp16 trains fp32 parameters" in message
    with pytest.raises(CodeunlearnError) as excinfo:
        BaselineTrainingArguments(str(tmp_path / "both"), fp16=True, bf16=True)
    assert_fix_error(excinfo)
