"""Code statistics (what fires where) and the enrichment selection built on them."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import assert_fix_error, make_tokens

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.data import corpus_fingerprint
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.codebook.bottleneck import flat_code_ids
from codeunlearn.unlearn.selection import SelectionRule, enrichment_scores, random_control, select_codes, truncate
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics

STAGES, HEADS, CODES = 2, 4, 16  # the shape of the `trained` fixture's bottleneck


def collect(bmodel, chunks, **kwargs):
    return collect_code_statistics(bmodel, chunks, batch_size=4, progress=False, bf16=False, **kwargs)


# ------------------------------------------------------------------------------------------------ statistics
def test_flat_code_ids():
    codes = torch.tensor([[[1, 0, 3], [2, -1, 0]], [[-1, -1, -1], [-1, -1, -1]]])  # (tokens=2, S=2, H=3), C=4
    assert flat_code_ids(codes, num_heads=3, codebook_size=4).tolist() == [
        [[1, 4, 11], [14, -1, 20]],
        [[-1, -1, -1], [-1, -1, -1]],
    ]


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16-autocast"])
def test_counts_sum_to_tokens_times_slots(trained, bf16):
    chunks = make_tokens(10, 12, seed=21)
    stats = collect_code_statistics(trained, chunks, batch_size=4, corpus="probe", progress=False, bf16=bf16)
    assert stats.corpus == "probe"
    assert sorted(stats.counts) == [1, 2]
    for layer in (1, 2):
        counts = stats.counts[layer]
        assert counts.shape == (STAGES * HEADS * CODES,)
        assert stats.tokens[layer] == 10 * 11  # every position but the first is quantized
        assert int(counts.sum()) == stats.tokens[layer] * STAGES * HEADS
        # each (stage, head) slot fires exactly once per token
        per_slot = counts.view(STAGES, HEADS, CODES).sum(-1)
        assert (per_slot == stats.tokens[layer]).all()
        assert torch.allclose(
            stats.frequency(layer).view(STAGES, HEADS, CODES).sum(-1), torch.ones(STAGES, HEADS, dtype=torch.float64)
        )


def test_counts_match_an_independent_full_forward(trained):
    chunks = make_tokens(6, 12, seed=22)
    stats = collect(trained, chunks)
    expected = {layer: torch.zeros(STAGES * HEADS * CODES, dtype=torch.long) for layer in (1, 2)}

    def observe(layer, states, result):
        for b, t in zip(*torch.nonzero(~result.passthrough, as_tuple=True), strict=True):
            for s in range(STAGES):
                for h in range(HEADS):
                    expected[layer][(s * HEADS + h) * CODES + int(result.codes[b, t, s, h])] += 1

    with torch.no_grad(), trained.observing(observe):
        trained(input_ids=chunks, use_cache=False)
    for layer in (1, 2):
        assert torch.equal(stats.counts[layer], expected[layer])


def test_statistics_stop_after_the_deepest_bottleneck(trained):
    ran, reached = [], []
    model = trained.model
    hooks = [
        decoder_layers(model)[3].register_forward_hook(lambda *a: ran.append("layer 3")),
        model.model.norm.register_forward_hook(lambda *a: ran.append("final norm")),
        model.lm_head.register_forward_hook(lambda *a: ran.append("lm_head")),
        trained.wrappers()[-1].layer.register_forward_hook(lambda *a: reached.append("layer 2")),
    ]
    try:
        collect(trained, make_tokens(8, 8, seed=23))
        assert ran == []
        assert reached == ["layer 2", "layer 2"]  # two batches of 4 reached the deepest bottleneck layer
        with torch.no_grad():
            trained(input_ids=make_tokens(1, 8))  # a normal forward does run them: the hooks work
        assert ran == ["layer 3", "final norm", "lm_head"]
    finally:
        for hook in hooks:
            hook.remove()


def test_statistics_save_load_round_trip(trained, tmp_path):
    tokens = make_tokens(4, 8, seed=24)
    stats = collect(trained, tokens, corpus="forget")
    assert stats.bottleneck_fingerprint == trained.fingerprint()
    # the counts name the text they counted: the same ids give the same hash, one changed id another
    assert stats.corpus_fingerprint == corpus_fingerprint(tokens.clone())
    changed = tokens.clone()
    changed[0, 0] += 1
    assert corpus_fingerprint(changed) != stats.corpus_fingerprint
    stats.save(tmp_path / "forget.safetensors")
    loaded = CodeStatistics.load(tmp_path / "forget.safetensors")
    assert loaded.tokens == stats.tokens
    assert (loaded.corpus, loaded.bottleneck_fingerprint) == ("forget", stats.bottleneck_fingerprint)
    assert loaded.corpus_fingerprint == stats.corpus_fingerprint
    assert sorted(loaded.counts) == sorted(stats.counts)
    assert all(torch.equal(loaded.counts[k], stats.counts[k]) for k in stats.counts)

    (tmp_path / "forget.json").unlink()
    with pytest.raises(CodeunlearnError) as excinfo:
        CodeStatistics.load(tmp_path / "forget.safetensors")
    assert_fix_error(excinfo)


def test_statistics_of_no_chunks_is_an_error(trained):
    with pytest.raises(CodeunlearnError) as excinfo:
        collect(trained, make_tokens(4, 8)[:0], corpus="empty")
    assert_fix_error(excinfo)


# ------------------------------------------------------------------------------------------------ selection
def synthetic() -> tuple[CodeStatistics, CodeStatistics]:
    """One layer (7) of 8 code ids, 20 tokens on each side.

    pseudo-count a = 1/20; score = log((f_f + a) / (f_r + a)):
      code 0: log(.55/.10) = 1.705   code 3: log(.20/.05) = 1.386   code 5: log(.10/.05) = 0.693
      code 4: log(1.05/1.00) = 0.049  codes 1, 2, 6: 0   code 7: < 0
    """
    forget = CodeStatistics({7: torch.tensor([10, 0, 5, 3, 20, 1, 0, 0])}, {7: 20}, "f", "abc")
    retain = CodeStatistics({7: torch.tensor([1, 0, 5, 0, 19, 0, 0, 8])}, {7: 20}, "r", "abc")
    return forget, retain


def test_enrichment_scores_are_the_documented_log_ratio():
    forget, retain = synthetic()
    scores = enrichment_scores(forget, retain, 7, SelectionRule(num_codes=8, min_forget_count=0, min_score=-100.0))
    expected = [
        math.log(0.55 / 0.1),
        0.0,
        0.0,
        math.log(4.0),
        math.log(1.05),
        math.log(2.0),
        0.0,
        math.log(0.05 / 0.45),
    ]
    assert scores.tolist() == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize(
    ("rule", "codes"),
    [
        (SelectionRule(num_codes=3, min_forget_count=1), [0, 3, 5]),
        (SelectionRule(num_codes=10, min_forget_count=1), [0, 3, 5, 4]),  # fewer than asked: only 4 eligible
        (SelectionRule(num_codes=3, min_forget_count=4), [0, 4]),  # 3 (count 3) and 5 (count 1) below the floor
        (SelectionRule(num_codes=3, min_forget_count=1, max_retain_frequency=0.04), [3, 5]),  # 0 and 4 too common
        (SelectionRule(num_codes=3, min_forget_count=1, min_score=1.0), [0, 3]),
    ],
)
def test_select_codes_known_answers(rule, codes):
    forget, retain = synthetic()
    edit = select_codes(forget, retain, rule, "topic", intervention="exclude")
    assert edit.layers[7].codes == codes
    scores = edit.layers[7].scores
    assert scores == sorted(scores, reverse=True)
    all_scores = enrichment_scores(forget, retain, 7, rule)
    assert scores == pytest.approx([float(all_scores[c]) for c in codes], abs=1e-4)
    assert (edit.topic, edit.intervention, edit.bottleneck_fingerprint) == ("topic", "exclude", "abc")
    assert edit.rule["name"] == "enrichment" and edit.rule["num_codes"] == rule.num_codes
    assert (edit.rule["forget_corpus"], edit.rule["retain_corpus"]) == ("f", "r")


def test_select_codes_refusals():
    forget, retain = synthetic()
    with pytest.raises(CodeunlearnError) as excinfo:
        select_codes(forget, retain, SelectionRule(num_codes=3, min_forget_count=100), "topic")
    assert_fix_error(excinfo)
    other = CodeStatistics(retain.counts, retain.tokens, "r", "another-bottleneck")
    with pytest.raises(CodeunlearnError) as excinfo:
        select_codes(forget, other, SelectionRule(num_codes=3, min_forget_count=1), "topic")
    assert_fix_error(excinfo)
    missing = CodeStatistics({8: retain.counts[7]}, {8: 20}, "r", "abc")
    with pytest.raises(CodeunlearnError) as excinfo:
        select_codes(forget, missing, SelectionRule(num_codes=3, min_forget_count=1), "topic")
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError):
        SelectionRule(num_codes=0)


def test_select_codes_on_real_statistics_prefers_forget_codes(trained):
    # Forget text uses only the low half of the vocabulary, retain text only the high half.
    forget_chunks = make_tokens(8, 12, seed=25) % 64
    retain_chunks = make_tokens(8, 12, seed=26) % 64 + 64
    forget, retain = collect(trained, forget_chunks, corpus="low"), collect(trained, retain_chunks, corpus="high")
    edit = select_codes(forget, retain, SelectionRule(num_codes=5, min_forget_count=2), "low-half")
    assert edit.bottleneck_fingerprint == trained.fingerprint()
    for layer, chosen in edit.layers.items():
        assert len(chosen.codes) == len(set(chosen.codes)) <= 5
        for code, score in zip(chosen.codes, chosen.scores, strict=True):
            assert forget.counts[layer][code] >= 2
            assert forget.frequency(layer)[code] > retain.frequency(layer)[code]
            assert score > 0
    trained.apply_edit(edit)  # made for this bottleneck: accepted


def test_random_control_matches_size_and_is_seeded():
    forget, retain = synthetic()
    edit = select_codes(forget, retain, SelectionRule(num_codes=3, min_forget_count=1), "topic")
    control = random_control(edit, forget, retain, seed=1)
    assert control.topic == "topic/random-control"
    assert len(control.layers[7].codes) == 3
    assert control.layers[7].codes == sorted(set(control.layers[7].codes))
    live = {0, 2, 3, 4, 5, 7}  # codes that fire on either corpus
    assert set(control.layers[7].codes) <= live
    assert control.bottleneck_fingerprint == edit.bottleneck_fingerprint and control.intervention == edit.intervention
    assert random_control(edit, forget, retain, seed=1).to_dict() == control.to_dict()
    draws = {tuple(random_control(edit, forget, retain, seed=s).layers[7].codes) for s in range(10)}
    assert len(draws) > 1


def test_truncate_keeps_top_codes_in_order():
    edit = Edit(
        "t", {3: LayerCodes([9, 4, 7, 1], [2.0, 1.5, 1.0, 0.5]), 5: LayerCodes([2], [3.0])}, rule={"num_codes": 4}
    )
    short = truncate(edit, 2)
    assert short.layers[3].codes == [9, 4] and short.layers[3].scores == [2.0, 1.5]
    assert short.layers[5].codes == [2]
    assert short.rule["num_codes"] == 2 and edit.rule["num_codes"] == 4
    assert short.num_codes == 3
    assert edit.layers[3].codes == [9, 4, 7, 1]  # the original is untouched


# ------------------------------------------------------------------------------------------------ no signal
def sae_statistics(corpus: str, noise: float = 0.0, seed: int = 0) -> CodeStatistics:
    """SAE statistics of one text; `noise` mimics summing the same activations in another order."""
    generator = torch.Generator().manual_seed(seed)
    counts = torch.tensor([40, 0, 12, 7, 3, 90])
    sums = counts.double() * 1.5 + noise * torch.randn(6, generator=generator, dtype=torch.float64)
    return CodeStatistics(
        {3: counts},
        {3: 100},
        corpus,
        "fp",
        activation_sums={3: sums},
        activation_max={3: torch.full((6,), 4.0)},
        kind="sae",
    )


@pytest.mark.parametrize(
    "rule",
    [SelectionRule(num_codes=128, min_forget_count=0), SelectionRule(num_codes=128, min_score=-5.0)],
    ids=["default-min-score", "negative-min-score"],
)
def test_identical_statistics_are_refused(rule):
    forget, _ = synthetic()
    retain = CodeStatistics({7: forget.counts[7].clone()}, {7: 20}, "r", "abc")
    with pytest.raises(CodeunlearnError, match="no code fires more on the forget text than on the retain text") as e:
        select_codes(forget, retain, rule, "topic", intervention="exclude")
    assert_fix_error(e)


def test_identical_sae_statistics_up_to_float_noise_are_refused():
    forget, retain = sae_statistics("f", noise=1e-9, seed=1), sae_statistics("r", noise=1e-9, seed=2)
    rule = SelectionRule(num_codes=128, min_forget_count=0, score="mean_activation_difference")
    with pytest.raises(CodeunlearnError, match="no code fires more on the forget text"):
        select_codes(forget, retain, rule, "topic")


def test_a_rule_that_excludes_every_signal_keeps_its_own_hint():
    forget, retain = synthetic()
    with pytest.raises(CodeunlearnError, match="lower --min_forget_count"):
        select_codes(forget, retain, SelectionRule(min_forget_count=1000), "topic", intervention="exclude")


def test_forget_cli_with_identical_statistics_writes_nothing(tmp_path, capsys):
    from helpers import run_error

    forget, _ = synthetic()
    forget.save(tmp_path / "same.safetensors")
    out = tmp_path / "edits"
    argv = ["forget", "--forget_stats", str(tmp_path / "same.safetensors"), "--retain_stats"]
    argv += [str(tmp_path / "same.safetensors"), "--topic", "t", "--output_dir", str(out)]
    line = run_error(argv, capsys)
    assert "no code fires more on the forget text than on the retain text" in line
    assert not out.exists()
