"""Edits: apply, undo, compose, save and load, and the checks that keep an edit on its own bottleneck."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_fix_error, make_model, make_tokens, tiny_args, tiny_config

from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import EDITS_NAME, BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import bottleneck_fidelity, mean_loss, token_losses
from codeunlearn.kinds.codebook.bottleneck import flat_code_ids
from codeunlearn.train import train_bottleneck
from codeunlearn.unlearn.selection import SelectionRule, select_codes
from codeunlearn.unlearn.statistics import collect_code_statistics

PROBE = make_tokens(6, 12, seed=31)
STAGE_0 = list(range(4 * 16))  # every stage-0 code id of every head (flat ids 0..63)


def mask_ids(mask: torch.Tensor) -> set[int]:
    return set(torch.nonzero(mask.flatten()).flatten().tolist())


def logits(bmodel) -> torch.Tensor:
    with torch.no_grad():
        return bmodel(input_ids=PROBE, use_cache=False).logits.clone()


def loss(bmodel) -> float:
    return mean_loss(bmodel, PROBE, bf16=False)


def make_edit(bmodel, topic, layers, intervention="substitute") -> Edit:
    return Edit(
        topic, {k: LayerCodes(v) for k, v in layers.items()}, intervention, bottleneck_fingerprint=bmodel.fingerprint()
    )


def test_compose_and_undo_two_topics(trained):
    a = make_edit(trained, "a", {1: [0, 5]})
    b = make_edit(trained, "b", {1: [5, 9], 2: [3]})
    c = make_edit(trained, "c", {2: [70]}, intervention="exclude")
    trained.apply_edit(a)
    trained.apply_edit(b)
    trained.apply_edit(c)
    assert [e.topic for e in trained.edits] == ["a", "b", "c"]
    assert mask_ids(trained.bottleneck(1).substituted) == {0, 5, 9}  # the union
    assert mask_ids(trained.bottleneck(2).substituted) == {3}
    assert mask_ids(trained.bottleneck(2).excluded) == {70}
    assert mask_ids(trained.bottleneck(1).excluded) == set()

    assert trained.undo_edit("a") is a
    assert [e.topic for e in trained.edits] == ["b", "c"]
    assert mask_ids(trained.bottleneck(1).substituted) == {5, 9}  # 5 stays removed: b still removes it
    assert mask_ids(trained.bottleneck(2).substituted) == {3}

    assert trained.undo_edit() is c  # the most recent
    assert mask_ids(trained.bottleneck(2).excluded) == set()
    with pytest.raises(CodeunlearnError) as excinfo:
        trained.undo_edit("a")
    assert_fix_error(excinfo)
    trained.clear_edits()
    assert trained.edits == []
    assert all(not bn.substituted.any() and not bn.excluded.any() for bn in trained.bottlenecks.values())


def test_applying_an_edit_changes_the_loss_and_undo_restores_it_exactly(trained):
    before_logits, before_loss = logits(trained), loss(trained)
    edit = make_edit(trained, "stage-0", {1: STAGE_0, 2: STAGE_0})
    trained.apply_edit(edit)
    edited_loss = loss(trained)
    assert abs(edited_loss - before_loss) > 1e-3
    assert not torch.allclose(logits(trained), before_logits)
    trained.undo_edit()
    assert loss(trained) == before_loss
    assert torch.equal(logits(trained), before_logits)

    excluded = make_edit(trained, "some", {1: [0, 1, 2, 16, 17], 2: [40, 41, 42]}, "exclude")
    with trained.edited(excluded):
        assert trained.edits == [excluded]
        assert loss(trained) != before_loss
    assert trained.edits == []
    assert torch.equal(logits(trained), before_logits)

    trained.apply_edit(edit)
    assert loss(trained) == edited_loss  # re-applying is deterministic
    assert edit.with_intervention("exclude").layers == edit.layers


def test_substitute_changes_only_tokens_that_use_the_removed_code(trained):
    """At the first bottleneck (inputs unaffected by the edit), a token not using the code is reconstructed as before."""
    observed = {}

    def observe(layer, states, result):
        observed[layer] = result

    with torch.no_grad(), trained.observing(observe):
        trained(input_ids=PROBE[:2], use_cache=False)
    plain = observed[1]
    removed = int(plain.codes[0, 3, 0, 0])  # stage 0, head 0 code of one token
    with torch.no_grad(), trained.edited(make_edit(trained, "one", {1: [removed]})), trained.observing(observe):
        trained(input_ids=PROBE[:2], use_cache=False)
    edited = observed[1]
    hit = (plain.codes[..., 0, 0] == removed) & ~plain.passthrough
    assert hit[0, 3]
    assert torch.equal(edited.codes, plain.codes)  # substitute keeps the search
    assert torch.equal(edited.output[~hit], plain.output[~hit])
    assert not torch.equal(edited.output[hit], plain.output[hit])


def test_edit_save_load_round_trip(trained, tmp_path):
    edit = make_edit(trained, "topic", {1: [3, 1], 2: [7]})
    edit.layers[1].scores = [0.5, 0.25]
    edit.rule = {"name": "enrichment", "num_codes": 2}
    edit.save(tmp_path / "edit.json")
    loaded = Edit.load(tmp_path / "edit.json")
    assert loaded == edit
    assert loaded.to_dict() == edit.to_dict()
    data = json.loads((tmp_path / "edit.json").read_text())
    assert data["num_codes"] == 3 and data["layers"]["1"]["codes"] == [3, 1]
    trained.apply_edit(loaded)


def test_edit_files_that_are_not_edits(tmp_path):
    with pytest.raises(CodeunlearnError) as excinfo:
        Edit.load(tmp_path / "missing.json")
    assert_fix_error(excinfo)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(CodeunlearnError) as excinfo:
        Edit.load(tmp_path / "bad.json")
    assert_fix_error(excinfo)
    not_edits = [
        {"topic": "x", "layers": {}, "colour": "red"},  # unknown field
        {"layers": {}},  # no topic
        [{"topic": "x", "layers": {}}],  # a list of edits (edits.json), not one edit
        {"topic": "x", "layers": {"one": {"codes": [1]}}},  # layer is not an index
        {"topic": "x", "layers": {"1": [1, 2]}},  # codes not under "codes"
    ]
    for number, data in enumerate(not_edits):
        (tmp_path / f"other{number}.json").write_text(json.dumps(data))
        with pytest.raises(CodeunlearnError) as excinfo:
            Edit.load(tmp_path / f"other{number}.json")
        assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        Edit("x", {1: LayerCodes([1])}, intervention="delete")
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        LayerCodes([1, 2], [0.5])
    assert_fix_error(excinfo)


def test_edit_for_another_bottleneck_is_rejected(trained, tmp_path):
    other = BottleneckedModel.attach(make_model("llama", num_layers=4), tiny_config(num_stages=2, seed=1))
    train_bottleneck(other, make_tokens(16, 12, seed=1), tiny_args(tmp_path, key_steps=1, value_steps=0))
    stats = [collect_code_statistics(other, make_tokens(4, 12, seed=s), progress=False, bf16=False) for s in (2, 3)]
    foreign = select_codes(stats[0], stats[1], SelectionRule(num_codes=2, min_forget_count=1), "foreign")
    assert foreign.bottleneck_fingerprint == other.fingerprint() != trained.fingerprint()
    with pytest.raises(CodeunlearnError) as excinfo:
        trained.apply_edit(foreign)
    assert_fix_error(excinfo)
    assert trained.edits == []
    other.apply_edit(foreign)  # its own bottleneck accepts it


@pytest.mark.parametrize(
    "layers",
    [{1: [128]}, {1: [-1]}, {2: [0, 5000]}, {3: [0]}],
    ids=["one-past-the-end", "negative", "far-out", "layer-without-bottleneck"],
)
def test_edit_with_bad_codes_is_rejected(trained, layers):
    before = logits(trained)
    with pytest.raises(CodeunlearnError) as excinfo:
        trained.apply_edit(make_edit(trained, "bad", layers))
    assert_fix_error(excinfo)
    assert trained.edits == []
    assert torch.equal(logits(trained), before)


def test_edit_of_another_kind_is_rejected(trained):
    edit = make_edit(trained, "x", {1: [0]})
    edit.kind = "sae"
    with pytest.raises(CodeunlearnError) as excinfo:
        trained.apply_edit(edit)
    assert_fix_error(excinfo)
    assert trained.edits == []


def test_edit_that_would_remove_a_whole_head_is_rejected_and_rolled_back(trained):
    before = logits(trained)
    with pytest.raises(CodeunlearnError) as excinfo:
        trained.apply_edit(make_edit(trained, "head", {1: list(range(16))}, intervention="exclude"))
    assert_fix_error(excinfo)
    assert trained.edits == []
    assert torch.equal(logits(trained), before)

    # Each edit alone is fine; together they exclude all 16 codes of head 0, stage 0 at layer 2.
    first = make_edit(trained, "first", {2: list(range(15))}, intervention="exclude")
    trained.apply_edit(first)
    with_first = logits(trained)
    second = make_edit(trained, "second", {1: [20, 21], 2: [15]}, intervention="exclude")
    with pytest.raises(CodeunlearnError) as excinfo:
        trained.apply_edit(second)
    assert_fix_error(excinfo)
    assert trained.edits == [first]
    assert mask_ids(trained.bottleneck(1).excluded) == set()  # no half-installed masks at the other layer
    assert mask_ids(trained.bottleneck(2).excluded) == set(range(15))
    assert torch.equal(logits(trained), with_first)
    trained.undo_edit()
    trained.apply_edit(second)  # alone it is fine
    assert mask_ids(trained.bottleneck(1).excluded) == {20, 21}


def test_save_and_load_with_edits_gives_identical_logits(trained, tmp_path):
    edit = make_edit(trained, "stage-0", {1: STAGE_0[:20], 2: [1, 2, 3]})
    trained.apply_edit(edit)
    trained.apply_edit(make_edit(trained, "ex", {2: [80]}, "exclude"))
    expected = logits(trained)
    trained.save_pretrained(tmp_path / "saved")
    trained.save_pretrained(tmp_path / "bare", with_edits=False)
    assert not (tmp_path / "bare" / EDITS_NAME).exists()
    model = trained.detach()

    loaded = BottleneckedModel.from_pretrained(model, tmp_path / "saved")
    assert [e.to_dict() for e in loaded.edits] == [e.to_dict() for e in trained.edits]
    assert loaded.fingerprint() == trained.fingerprint()
    assert torch.equal(logits(loaded), expected)
    loaded.clear_edits()
    unedited = logits(loaded)
    assert not torch.equal(unedited, expected)
    loaded.detach()

    bare = BottleneckedModel.from_pretrained(model, tmp_path / "bare")
    assert bare.edits == []
    assert torch.equal(logits(bare), unedited)


def test_token_losses_shape_and_skip(trained):
    losses = token_losses(trained, PROBE, batch_size=4, bf16=False)
    assert losses.shape == (6, 11)
    assert mean_loss(trained, PROBE, skip_positions=3, bf16=False) == pytest.approx(float(losses[:, 3:].mean()))


def test_bottleneck_fidelity_matches_a_manual_computation(trained):
    fidelity = {f.layer: f for f in bottleneck_fidelity(trained, PROBE, batch_size=len(PROBE), bf16=False)}
    assert sorted(fidelity) == [1, 2]
    seen = {}
    with torch.no_grad(), trained.observing(lambda layer, states, result: seen.update({layer: (states, result)})):
        trained(input_ids=PROBE, use_cache=False)
    for layer, (states, result) in seen.items():
        ordinary = ~result.passthrough
        err = ((states - result.output) ** 2).sum(-1)
        var = ((states - trained.bottleneck(layer).mean) ** 2).sum(-1)
        f = fidelity[layer]
        assert f.fvu_ordinary == pytest.approx(float(err[ordinary].sum() / var[ordinary].sum()), rel=1e-5)
        assert f.fvu_all == pytest.approx(float(err.sum() / var.sum()), rel=1e-5)
        assert f.fvu_all < f.fvu_ordinary  # passthrough tokens add variance but no error
        assert f.passthrough_fraction == pytest.approx(1 / PROBE.shape[1])
        assert f.codes_used == len(flat_code_ids(result.codes, 4, 16)[ordinary].unique())
        assert 0 < f.codes_used <= 2 * 4 * 16
