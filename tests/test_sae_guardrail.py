"""The SAE guardrail: the local-window gate, threshold calibration to a target false-positive rate, invariance to
padding (the flaw of a whole-prompt gate), decoding with a KV cache, and the padding-attack report."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_fix_error
from sae_helpers import TOPIC, TOPIC_ACT, context_free_model, tokens_without_topic, topic_sae

from codeunlearn.bottleneck.edit import Edit, Guardrail, LayerCodes
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.sae import attach_sae
from codeunlearn.kinds.sae.interventions import gate, window_scores
from codeunlearn.unlearn.guardrail import calibrate_guardrail, calibrate_threshold, gate_rate
from codeunlearn.unlearn.guardrail_attacks import gate_padding_attack, prompt_fraction_gate


def test_window_scores_are_a_causal_zero_padded_mean():
    counts = torch.tensor([[0, 1, 1, 0, 0, 2]])
    assert window_scores(counts, 3)[0].tolist() == pytest.approx([0, 1 / 3, 2 / 3, 2 / 3, 1 / 3, 2 / 3])
    assert window_scores(counts, 1).tolist() == counts.float().tolist()


def test_calibrated_threshold_hits_the_target_rate():
    scores = torch.rand(10_000, generator=torch.Generator().manual_seed(0))
    threshold = calibrate_threshold(scores, 0.02)
    assert int((scores > threshold).sum()) == 200  # exactly 2% of distinct scores are above it
    # ties (window scores are multiples of 1/window): at most the target, and any lower threshold exceeds it
    ties = torch.randint(0, 9, (5_000,), generator=torch.Generator().manual_seed(1)).float() / 8
    for target in (0.01, 0.02, 0.1, 0.5):
        threshold = calibrate_threshold(ties, target)
        assert float((ties > threshold).double().mean()) <= target
        lower = ties[ties < threshold].max() if (ties < threshold).any() else None
        if lower is not None:
            assert float((ties > lower).double().mean()) > target
    for bad in (0.0, 1.0, -0.1):
        with pytest.raises(CodeunlearnError) as excinfo:
            calibrate_threshold(scores, bad)
        assert_fix_error(excinfo)


@pytest.fixture
def topic_model():
    model = context_free_model()
    return attach_sae(model, {0: topic_sae(model)})


def guardrail_edit(bmodel, window=4, threshold=0.3, action="zero", multiplier=None) -> Edit:
    return Edit(
        "topic",
        {0: LayerCodes([0], scales=[TOPIC_ACT])},
        "guardrail",
        bottleneck_fingerprint=bmodel.fingerprint(),
        kind="sae",
        multiplier=multiplier,
        guardrail=Guardrail(window=window, thresholds={0: threshold}, action=action),
    )


def run(bmodel, tokens: torch.Tensor):
    seen = {}
    with torch.no_grad(), bmodel.observing(lambda layer, x, result: seen.update({layer: (x, result)})):
        logits = bmodel(input_ids=tokens, use_cache=False).logits
    states, result = seen[0]
    return states, result, logits


def test_gate_needs_the_topic_within_one_window(topic_model):
    """Window 4, threshold 0.3: the gate is on where at least 2 of the last 4 tokens are TOPIC."""
    tokens = tokens_without_topic(16, seed=2).unsqueeze(0)
    tokens[0, [3, 8, 10]] = TOPIC  # 3 is isolated; 8 and 10 share windows ending at 10 and 11
    topic_model.apply_edit(guardrail_edit(topic_model))
    states, result, _ = run(topic_model, tokens)
    assert result.gated[0].nonzero().flatten().tolist() == [10, 11]
    changed = (result.output != states).any(-1)[0]
    assert changed.nonzero().flatten().tolist() == [10]  # gated and firing: only token 10
    sae = topic_model.bottleneck(0)
    assert torch.allclose(result.output[0, 10], states[0, 10] - TOPIC_ACT * sae.sae.W_dec[0], atol=1e-6)


@pytest.mark.parametrize("padding", [64, 1024, 3000])
def test_window_gate_is_not_diluted_by_padding(topic_model, padding):
    span = torch.tensor([5, TOPIC, 1, TOPIC, 2, TOPIC, TOPIC, 3, 4])  # position 0 passes through: not TOPIC
    topic_model.apply_edit(guardrail_edit(topic_model, window=4, threshold=0.3, action="clamp", multiplier=-10.0))
    _, alone, _ = run(topic_model, span.unsqueeze(0))
    padded_tokens = torch.cat([tokens_without_topic(padding, seed=padding), span]).unsqueeze(0)
    states, padded, _ = run(topic_model, padded_tokens)
    assert alone.gated[0].any()
    assert torch.equal(padded.gated[0, -len(span) :], alone.gated[0])  # the same tokens are gated
    assert not padded.gated[0, : -len(span)].any()  # and nothing in the padding
    assert torch.equal(padded.output[0, : -len(span)], states[0, : -len(span)])

    # The published whole-prompt gate, with a threshold the unpadded prompt clears, is padded away.
    features = torch.tensor([0])
    assert prompt_fraction_gate(alone.acts, features, 0.25, alone.passthrough).all()
    assert not prompt_fraction_gate(padded.acts, features, 0.25, padded.passthrough).any()


def test_gate_continues_across_decoding_steps_with_a_kv_cache(topic_model):
    tokens = tokens_without_topic(20, seed=9).unsqueeze(0)
    tokens[0, [4, 6, 13, 15, 16]] = TOPIC
    topic_model.apply_edit(guardrail_edit(topic_model, window=5, threshold=0.3))
    _, full, full_logits = run(topic_model, tokens)
    gated, step_logits = [], []
    with torch.no_grad(), topic_model.observing(lambda layer, x, result: gated.append(result.gated[0])):
        out = topic_model(input_ids=tokens[:, :3], use_cache=True)
        step_logits.append(out.logits)
        cache = out.past_key_values
        for position in range(3, tokens.shape[1]):
            out = topic_model(input_ids=tokens[:, position : position + 1], past_key_values=cache, use_cache=True)
            step_logits.append(out.logits)
            cache = out.past_key_values
    assert torch.equal(torch.cat(gated), full.gated[0])
    assert full.gated[0].any()
    assert torch.allclose(torch.cat(step_logits, 1), full_logits, atol=1e-5)


def retain_tokens(num_chunks: int, length: int, rate: float, seed: int) -> torch.Tensor:
    """Random non-topic chunks with TOPIC sprinkled at `rate` (benign text that now and then uses the topic word)."""
    generator = torch.Generator().manual_seed(seed)
    chunks = torch.stack([tokens_without_topic(length, seed=seed * 1000 + i) for i in range(num_chunks)])
    sprinkle = torch.rand(chunks.shape, generator=generator) < rate
    return chunks.masked_fill(sprinkle, TOPIC)


def test_calibration_on_retain_text_and_the_gate_padding_attack(topic_model):
    zero = Edit("topic", {0: LayerCodes([0], scales=[TOPIC_ACT])}, "zero", kind="sae",
                bottleneck_fingerprint=topic_model.fingerprint())  # fmt: skip
    calibration = retain_tokens(40, 64, rate=0.06, seed=1)
    guard = calibrate_guardrail(topic_model, zero, calibration, window=16, target_fpr=0.02, corpus="synthetic")
    assert guard.intervention == "guardrail" and guard.guardrail.action == "zero"
    assert guard.guardrail.calibration["corpus"] == "synthetic"
    assert 0 < guard.guardrail.calibration["fpr"][0] <= 0.02
    assert guard.guardrail.calibration["windows"][0] == 40 * 63  # position 0 is not a window
    measured = guard.guardrail.calibration["fpr"][0]
    assert gate_rate(topic_model, guard, calibration)["0"] == pytest.approx(measured, abs=1e-6)
    heldout = gate_rate(topic_model, guard, retain_tokens(40, 64, rate=0.06, seed=2))
    assert heldout["any"] <= 0.05  # near the 2% target on text of the same kind

    passages = retain_tokens(6, 48, rate=0.5, seed=3)  # topic-dense passages
    padding = retain_tokens(1, 5000, rate=0.0, seed=4)[0]
    report = gate_padding_attack(topic_model, guard, passages, padding, pad_tokens=(512, 2048))
    assert report.blocked[0] == 1.0
    assert report.attack_success == {512: 0.0, 2048: 0.0}
    assert report.still_blocked == {512: 1.0, 2048: 1.0}
    # Padded, a passage's first token is no longer position 0 (which passes through), so it can only gain.
    assert report.gated_token_fraction[2048] == report.gated_token_fraction[512] >= report.gated_token_fraction[0] > 0.2
    assert topic_model.edits == []  # measuring set nothing aside permanently

    topic_model.apply_edit(guard)
    _, result, _ = run(topic_model, passages[:1])
    assert result.gated.any()
    with pytest.raises(CodeunlearnError) as excinfo:
        gate_padding_attack(topic_model, guard, passages, padding[:100], pad_tokens=(512,))
    assert_fix_error(excinfo)


def test_gate_function_matches_the_bottleneck():
    acts = torch.zeros(1, 6, 3)
    acts[0, [1, 2, 5], 1] = 1.0
    on, tail = gate(acts, torch.tensor([1]), window=2, threshold=0.6)
    assert on[0].tolist() == [False, False, True, False, False, False]
    assert tail[0].tolist() == [1]  # the last window - 1 counts continue the window


def test_bad_guardrail_arguments(topic_model):
    zero = Edit("topic", {0: LayerCodes([0], scales=[TOPIC_ACT])}, "zero", kind="sae")
    chunks = retain_tokens(2, 16, 0.1, seed=1)
    for kwargs in ({"window": 0}, {"target_fpr": 0.0}, {"target_fpr": 1.5}, {"action": "explode"}):
        with pytest.raises(CodeunlearnError) as excinfo:
            calibrate_guardrail(topic_model, zero, chunks, **kwargs)
        assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:  # clamp needs a negative multiplier
        calibrate_guardrail(topic_model, zero, chunks, action="clamp", multiplier=3.0)
    assert_fix_error(excinfo)
    for bad in ({"window": 0}, {"action": "boom"}, {"target_fpr": 2.0}):
        with pytest.raises(CodeunlearnError) as excinfo:
            Guardrail(**{"window": 4, "thresholds": {0: 0.1}, **bad})
        assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        gate_rate(topic_model, zero, chunks)
    assert_fix_error(excinfo)
