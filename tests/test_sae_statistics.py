"""SAE statistics (firing counts, activation sums and maxima) and the SAE selection rules: frequency ratio, mean
activation difference, the retain-frequency cap, top-N, clamp scales and the random-features control."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_fix_error
from sae_helpers import TOPIC, TOPIC_ACT, context_free_model, tokens_without_topic, topic_sae

from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.sae import attach_sae
from codeunlearn.unlearn.selection import (
    SelectionRule,
    feature_scales,
    feature_scores,
    mean_activation_difference_scores,
    random_control,
    select_codes,
    truncate,
)
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics


def collect(bmodel, chunks, corpus=""):
    return collect_code_statistics(bmodel, chunks, batch_size=3, corpus=corpus, progress=False, bf16=False)


@pytest.fixture
def topic_model():
    model = context_free_model()
    return attach_sae(model, {0: topic_sae(model)})


def test_statistics_count_topic_firings_exactly(topic_model, tmp_path):
    chunks = torch.stack([tokens_without_topic(10, seed=s) for s in range(5)])
    chunks[0, [0, 2, 5]] = TOPIC  # position 0 passes through: not counted
    chunks[3, 9] = TOPIC
    stats = collect(topic_model, chunks, "probe")
    assert stats.kind == "sae" and stats.bottleneck_fingerprint == topic_model.fingerprint()
    assert stats.tokens == {0: 5 * 9}
    assert stats.counts[0].tolist() == [3, 0, 0, 0]
    assert stats.activation_sums[0][0].item() == pytest.approx(3 * TOPIC_ACT, abs=1e-5)
    assert stats.activation_max[0][0].item() == pytest.approx(TOPIC_ACT, abs=1e-6)
    assert stats.mean_firing_activation(0)[0].item() == pytest.approx(TOPIC_ACT, abs=1e-6)
    assert stats.mean_activation(0)[0].item() == pytest.approx(3 * TOPIC_ACT / 45, abs=1e-6)

    stats.save(tmp_path / "s.safetensors")
    loaded = CodeStatistics.load(tmp_path / "s.safetensors")
    assert loaded.kind == "sae" and loaded.tokens == stats.tokens
    for name in ("counts", "activation_sums", "activation_max"):
        assert all(torch.equal(getattr(loaded, name)[k], getattr(stats, name)[k]) for k in (0,))


def synthetic() -> tuple[CodeStatistics, CodeStatistics]:
    """Layer 4, 6 features, 100 tokens each side.

    feature:             0     1     2     3     4     5
    forget count:       50    10    40     0    20     5
    retain count:        5     0    40    10    20     1
    forget sum:         25    20     4     0    10    50   (mean act: .25 .20 .04 0 .10 .50)
    retain sum:          1     0    40     5     2     1   (mean act: .01 0 .40 .05 .02 .01)
    """
    forget = CodeStatistics(
        {4: torch.tensor([50, 10, 40, 0, 20, 5])},
        {4: 100},
        "f",
        "fp",
        {4: torch.tensor([25.0, 20.0, 4.0, 0.0, 10.0, 50.0], dtype=torch.float64)},
        {4: torch.tensor([1.0, 3.0, 0.2, 0.0, 0.9, 12.0])},
        kind="sae",
    )
    retain = CodeStatistics(
        {4: torch.tensor([5, 0, 40, 10, 20, 1])},
        {4: 100},
        "r",
        "fp",
        {4: torch.tensor([1.0, 0.0, 40.0, 5.0, 2.0, 1.0], dtype=torch.float64)},
        {4: torch.tensor([0.3, 0.0, 2.0, 0.6, 0.2, 1.0])},
        kind="sae",
    )
    return forget, retain


def test_scores_of_small_activations_are_kept_to_six_significant_digits():
    """An SAE whose activations are all ~1e-5 still records its edit's scores (not 0.0 after rounding)."""
    forget, retain = synthetic()
    for stats in (forget, retain):
        stats.activation_sums[4] = stats.activation_sums[4] * 1e-5
    rule = SelectionRule(num_codes=3, min_forget_count=1, score="mean_activation_difference")
    edit = select_codes(forget, retain, rule, "topic", intervention="zero")
    assert edit.layers[4].codes == [5, 0, 1]
    assert edit.layers[4].scores == pytest.approx([0.49e-5, 0.24e-5, 0.20e-5], rel=1e-5)


def test_mean_activation_difference_known_answers():
    forget, retain = synthetic()
    rule = SelectionRule(num_codes=6, min_forget_count=0, min_score=-100.0, score="mean_activation_difference")
    scores = mean_activation_difference_scores(forget, retain, 4, rule)
    assert scores.tolist() == pytest.approx([0.24, 0.20, -0.36, -0.05, 0.08, 0.49])
    edit = select_codes(forget, retain, SelectionRule(num_codes=3, min_forget_count=1, score="mean_activation_difference"),
                        "topic", intervention="zero")  # fmt: skip
    assert edit.layers[4].codes == [5, 0, 1]
    assert edit.kind == "sae" and edit.intervention == "zero"
    assert edit.rule["name"] == "mean_activation_difference"
    # frequency ratio ranks differently: feature 1 never fires on retain text
    ratio = select_codes(forget, retain, SelectionRule(num_codes=3, min_forget_count=1), "topic", intervention="zero")
    assert ratio.layers[4].codes == [1, 0, 5]
    assert ratio.layers[4].scores[0] == pytest.approx(math.log((0.10 + 0.01) / 0.01), abs=1e-4)


def test_retain_frequency_cap_noise_floor_and_top_n():
    forget, retain = synthetic()
    capped = SelectionRule(
        num_codes=6, min_forget_count=1, max_retain_frequency=0.02, score="mean_activation_difference"
    )
    assert select_codes(forget, retain, capped, "t", intervention="zero").layers[4].codes == [5, 1]  # 0, 4 too common
    floor = SelectionRule(num_codes=6, min_forget_count=10, score="mean_activation_difference")
    assert select_codes(forget, retain, floor, "t", intervention="zero").layers[4].codes == [0, 1, 4]
    top = select_codes(forget, retain, SelectionRule(num_codes=6, min_forget_count=1,
                                                     score="mean_activation_difference"), "t")  # fmt: skip
    assert truncate(top, 2).layers[4].codes == [5, 0]
    assert truncate(top, 2).layers[4].scales == top.layers[4].scales[:2]


def test_clamp_edit_carries_scales_and_the_default_multiplier():
    forget, retain = synthetic()
    rule = SelectionRule(num_codes=3, min_forget_count=1, score="mean_activation_difference")
    edit = select_codes(forget, retain, rule, "t")  # SAE statistics: clamp by default
    assert edit.intervention == "clamp" and edit.multiplier == -10.0
    assert edit.layers[4].scales == pytest.approx([10.0, 0.5, 2.0])  # mean activation where firing on forget text
    by_max = select_codes(forget, retain, rule, "t", multiplier=-3.0, scale="max")
    assert by_max.layers[4].scales == pytest.approx([12.0, 1.0, 3.0]) and by_max.multiplier == -3.0
    # a feature that never fires on forget text takes its scale from the retain text
    assert feature_scales(forget, retain, 4, [3], "mean") == pytest.approx([0.5])
    with pytest.raises(CodeunlearnError) as excinfo:
        select_codes(forget, retain, rule, "t", intervention="guardrail")
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        select_codes(forget, retain, rule, "t", intervention="clamp", multiplier=1.0)
    assert_fix_error(excinfo)


def test_random_features_control():
    forget, retain = synthetic()
    rule = SelectionRule(num_codes=2, min_forget_count=1, score="mean_activation_difference")
    edit = select_codes(forget, retain, rule, "t", multiplier=-5.0)
    control = random_control(edit, forget, retain, seed=2)
    assert control.kind == "sae" and control.intervention == "clamp" and control.multiplier == -5.0
    assert len(control.layers[4].codes) == 2 and set(control.layers[4].codes) <= {0, 1, 2, 3, 4, 5}
    expected = feature_scales(forget, retain, 4, control.layers[4].codes, "mean")
    assert control.layers[4].scales == pytest.approx(expected)
    assert len({tuple(random_control(edit, forget, retain, seed=s).layers[4].codes) for s in range(12)}) > 1


def test_mean_activation_needs_sae_statistics():
    vq = CodeStatistics({4: torch.tensor([5, 1])}, {4: 10}, "f", "x")
    with pytest.raises(CodeunlearnError) as excinfo:
        feature_scores(vq, vq, 4, SelectionRule(score="mean_activation_difference"))
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        SelectionRule(score="fisher")
    assert_fix_error(excinfo)


def test_selection_on_real_statistics_finds_the_topic_feature(topic_model):
    forget_chunks = torch.stack([tokens_without_topic(12, seed=s) for s in range(6)])
    forget_chunks[:, 4] = TOPIC
    retain_chunks = torch.stack([tokens_without_topic(12, seed=100 + s) for s in range(6)])
    forget, retain = collect(topic_model, forget_chunks, "f"), collect(topic_model, retain_chunks, "r")
    for score in ("frequency_ratio", "mean_activation_difference"):
        edit = select_codes(forget, retain, SelectionRule(num_codes=5, min_forget_count=1, score=score), "t")
        assert edit.layers[0].codes == [0]  # the only feature that fires at all
        assert edit.layers[0].scales == pytest.approx([TOPIC_ACT], abs=1e-6)
        topic_model.apply_edit(edit)
        topic_model.undo_edit()
