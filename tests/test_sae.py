"""SAE bottlenecks: the sae-lens format both ways, the error term, and the zero / clamp interventions with known
answers (a hand-built SAE whose feature 0 fires on one token of a context-free residual stream)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import HIDDEN, assert_fix_error, make_model, make_tokens
from sae_helpers import NUM_FEATURES, TOPIC, TOPIC_ACT, context_free_model, tokens_without_topic, topic_sae

from codeunlearn.bottleneck.config import BottleneckConfig
from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import EDITS_NAME, BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.sae import attach_sae
from codeunlearn.kinds.sae.bottleneck import LAYER_DIR, SAEOutput

PROBE = make_tokens(3, 12, seed=41)


def sae_config(**overrides) -> BottleneckConfig:
    values = {"layers": [1], "kind": "sae", "sae_width": 48, "sae_k": 4}
    values.update(overrides)
    return BottleneckConfig.from_dict(values)


def initialized(bmodel: BottleneckedModel, chunks: torch.Tensor = PROBE) -> BottleneckedModel:
    """Give fresh SAEs their data-dependent start (b_dec = mean, input scale) and their final inference form."""
    states = {}
    with torch.no_grad():
        bmodel.run_to_deepest(chunks, lambda layer, x, result: states.update({layer: x}), states_only=True)
    for layer in bmodel.layers:
        bmodel.bottleneck(layer).initialize(states[layer])
        bmodel.bottleneck(layer).finish_training()
    return bmodel


def logits(model, tokens: torch.Tensor = PROBE) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits.clone()


def observe_layer(bmodel: BottleneckedModel, tokens: torch.Tensor, layer: int) -> SAEOutput:
    seen = {}
    with torch.no_grad(), bmodel.observing(lambda index, x, result: seen.update({index: (x, result)})):
        bmodel(input_ids=tokens, use_cache=False)
    states, result = seen[layer]
    result.states = states
    return result


def sae_edit(bmodel, topic, features, intervention="zero", multiplier=None, scales=None) -> Edit:
    layers = {layer: LayerCodes(codes, scales=scales or [1.0] * len(codes)) for layer, codes in features.items()}
    return Edit(
        topic, layers, intervention, bottleneck_fingerprint=bmodel.fingerprint(), kind="sae", multiplier=multiplier
    )


# ------------------------------------------------------------------------------------------------ sae-lens format
@pytest.mark.parametrize(("architecture", "sae_lens_class"), [("relu", "StandardSAE"), ("topk", "TopKSAE")])
def test_our_saved_sae_loads_with_sae_lens(tmp_path, architecture, sae_lens_class):
    from sae_lens import SAE

    bmodel = initialized(BottleneckedModel.attach(make_model("llama"), sae_config(sae_architecture=architecture)))
    bmodel.save_pretrained(tmp_path / "bn")
    directory = tmp_path / "bn" / LAYER_DIR.format(layer=1)
    assert sorted(p.name for p in directory.iterdir()) == ["cfg.json", "sae_weights.safetensors"]

    sae = SAE.load_from_disk(directory)
    assert type(sae).__name__ == sae_lens_class
    assert (sae.cfg.d_in, sae.cfg.d_sae) == (HIDDEN, 48)
    assert sae.cfg.metadata.hook_name == "blocks.1.hook_resid_post"
    assert sae.cfg.metadata.hf_hook_name == "model.layers.1"
    if architecture == "topk":
        assert sae.cfg.k == 4
    x = observe_layer(bmodel, PROBE, 1).states
    ours = bmodel.bottleneck(1)
    assert torch.equal(sae.encode(x), ours.encode(x))  # the in-memory SAE is what was saved, bit for bit
    assert torch.equal(sae.decode(sae.encode(x)), ours.decode(ours.encode(x)))

    loaded = BottleneckedModel.from_pretrained(make_model("llama"), tmp_path / "bn")
    assert loaded.fingerprint() == bmodel.fingerprint()
    assert loaded.config == bmodel.config


@pytest.mark.parametrize("architecture", ["standard", "topk", "jumprelu"])
def test_sae_saved_by_sae_lens_attaches_with_one_argument(tmp_path, architecture):
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata

    extra = {"k": 3} if architecture == "topk" else {}
    cfg = {"architecture": architecture, "d_in": HIDDEN, "d_sae": 40, **extra}
    torch.manual_seed(3)
    sae = SAE.from_dict(cfg)
    sae.cfg.metadata = SAEMetadata(hook_name="blocks.2.hook_resid_post", model_name="tiny")
    with torch.no_grad():
        sae.b_enc.normal_()  # some features fire on random states
        if architecture == "jumprelu":
            sae.threshold.fill_(0.05)
    sae.save_model(tmp_path / "release" / "blocks.2.hook_resid_post")

    model = make_model("llama")
    with torch.no_grad():
        base = logits(model)
    bmodel = attach_sae(model, tmp_path / "release" / "blocks.2.hook_resid_post")
    assert bmodel.layers == [2] and bmodel.config.kind == "sae"
    assert bmodel.bottleneck(2).architecture == architecture
    result = observe_layer(bmodel, PROBE, 2)
    assert torch.equal(result.acts, sae.encode(result.states))
    assert (result.acts > 0).any()
    assert torch.equal(logits(bmodel), base)  # error term: attached and unedited, nothing changes
    bmodel.detach()

    # the same SAE by explicit layer, as the release folder (layers from hook names), and as a sae-lens object
    for source in ({2: tmp_path / "release" / "blocks.2.hook_resid_post"}, tmp_path / "release", {2: sae}):
        again = attach_sae(model, source)
        assert again.layers == [2] and again.fingerprint() == bmodel.fingerprint()
        again.detach()


def test_gemma_scope_folder_attaches(tmp_path):
    generator = np.random.default_rng(0)
    folder = tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_5"
    folder.mkdir(parents=True)
    params = {
        "W_enc": generator.normal(size=(HIDDEN, 24)).astype(np.float32),
        "W_dec": generator.normal(size=(24, HIDDEN)).astype(np.float32),
        "b_enc": generator.normal(size=24).astype(np.float32),
        "b_dec": np.zeros(HIDDEN, dtype=np.float32),
        "threshold": np.full(24, 0.1, dtype=np.float32),
    }
    np.savez(folder / "params.npz", **params)
    model = make_model("llama")
    base = logits(model)
    bmodel = attach_sae(model, folder)
    assert bmodel.layers == [1] and bmodel.bottleneck(1).architecture == "jumprelu"
    result = observe_layer(bmodel, PROBE, 1)
    pre = result.states @ torch.from_numpy(params["W_enc"]) + torch.from_numpy(params["b_enc"])
    expected = pre * (pre > 0.1)  # JumpReLU, no b_dec applied to the input (as Gemma Scope)
    assert torch.allclose(result.acts, expected, atol=1e-5)
    assert torch.equal(logits(bmodel), base)
    bmodel.save_pretrained(tmp_path / "converted")  # now a plain sae-lens directory
    bmodel.detach()
    reloaded = BottleneckedModel.from_pretrained(model, tmp_path / "converted")
    assert reloaded.fingerprint() == bmodel.fingerprint()


# ------------------------------------------------------------------------------------------------ error term
@pytest.mark.parametrize("arch", ["llama", "gemma2", "gpt2"])
def test_error_term_leaves_logits_unchanged(arch):
    model = make_model(arch)
    base = logits(model)
    bmodel = initialized(BottleneckedModel.attach(model, sae_config(layers=[0, 2])))
    assert torch.equal(logits(bmodel), base)  # the SAE is skipped: its output would be its input
    result = observe_layer(bmodel, PROBE, 0)  # observing forces both SAEs to run
    assert torch.equal(result.output, result.states)
    with torch.no_grad(), bmodel.observing(lambda *a: None):
        assert torch.allclose(bmodel(input_ids=PROBE, use_cache=False).logits, base, atol=1e-5)
    with bmodel.splice("reconstruction"):  # without the error term the SAE is far from exact
        spliced = logits(bmodel)
        recon = observe_layer(bmodel, PROBE, 0)
    assert not torch.allclose(spliced, base, atol=1e-3)
    sae = bmodel.bottleneck(0)
    ordinary = ~recon.passthrough
    assert torch.allclose(recon.output[ordinary], sae.decode(sae.encode(recon.states))[ordinary], atol=1e-6)
    assert torch.equal(recon.output[~ordinary], recon.states[~ordinary])  # position 0 passes through
    with bmodel.disabled():
        assert torch.equal(logits(bmodel), base)


def test_error_term_formula_on_edited_tokens():
    """output = decode(edited) + (h - decode(features)) at tokens an edit touches, h itself elsewhere."""
    bmodel = initialized(BottleneckedModel.attach(make_model("llama"), sae_config()))
    plain = observe_layer(bmodel, PROBE, 1)
    feature = int(plain.acts[0, 5].argmax())
    bmodel.apply_edit(sae_edit(bmodel, "one", {1: [feature]}, "zero"))
    edited = observe_layer(bmodel, PROBE, 1)
    sae = bmodel.bottleneck(1)
    fires = (plain.acts[..., feature] > 0) & ~plain.passthrough
    assert fires[0, 5] and not fires.all()
    acts = plain.acts.clone()
    acts[..., feature] = 0
    expected = sae.decode(acts) + plain.states - sae.decode(plain.acts)
    assert torch.allclose(edited.output[fires], expected[fires], atol=1e-5)
    assert torch.equal(edited.output[~fires], plain.states[~fires])


# ------------------------------------------------------------------------------------------------ interventions
@pytest.fixture
def topic_model():
    """The context-free model with the hand-built SAE at layer 0, and a probe with TOPIC at positions 3 and 9."""
    model = context_free_model()
    tokens = tokens_without_topic(14, seed=5).unsqueeze(0)
    tokens[0, 3] = tokens[0, 9] = TOPIC
    base = logits(model, tokens)
    bmodel = attach_sae(model, {0: topic_sae(model)})
    return {"bmodel": bmodel, "tokens": tokens, "base": base, "sae": bmodel.bottleneck(0)}


def test_feature_fires_on_the_topic_token_only(topic_model):
    result = observe_layer(topic_model["bmodel"], topic_model["tokens"], 0)
    assert torch.equal(result.states[0], topic_model["bmodel"].model.model.embed_tokens(topic_model["tokens"][0]))
    fires = result.acts[0, :, 0] > 0
    assert fires.nonzero().flatten().tolist() == [3, 9]
    assert result.acts[0, [3, 9], 0].tolist() == pytest.approx([TOPIC_ACT, TOPIC_ACT], abs=1e-5)
    assert not (result.acts[..., 1:] > 0).any()


@pytest.mark.parametrize(("intervention", "multiplier", "scale"), [("zero", None, 1.0), ("clamp", -20.0, 0.5)])
def test_zero_and_clamp_change_exactly_the_topic_tokens(topic_model, intervention, multiplier, scale):
    bmodel, tokens, sae = topic_model["bmodel"], topic_model["tokens"], topic_model["sae"]
    edit = sae_edit(bmodel, "topic", {0: [0]}, intervention, multiplier, scales=[scale])
    bmodel.apply_edit(edit)
    result = observe_layer(bmodel, tokens, 0)
    target = 0.0 if intervention == "zero" else multiplier * scale
    expected = result.states.clone()
    expected[0, [3, 9]] += (target - TOPIC_ACT) * sae.sae.W_dec[0]
    assert torch.allclose(result.output, expected, atol=1e-5)
    assert torch.equal(result.output[0, :3], result.states[0, :3])
    edited = logits(bmodel, tokens)
    assert torch.equal(edited[0, :3], topic_model["base"][0, :3])  # causal: nothing before the first topic token
    assert not torch.allclose(edited[0, 3:], topic_model["base"][0, 3:], atol=1e-4)
    bmodel.undo_edit()
    assert torch.equal(logits(bmodel, tokens), topic_model["base"])


def test_edits_compose_in_order_and_undo(topic_model):
    bmodel, tokens, sae = topic_model["bmodel"], topic_model["tokens"], topic_model["sae"]
    zero = sae_edit(bmodel, "zero", {0: [0]}, "zero")
    clamp = sae_edit(bmodel, "clamp", {0: [0, 2]}, "clamp", multiplier=-4.0, scales=[1.0, 1.0])
    bmodel.apply_edit(zero)
    bmodel.apply_edit(clamp)
    result = observe_layer(bmodel, tokens, 0)
    expected = result.states.clone()
    expected[0, [3, 9]] += (-4.0 - TOPIC_ACT) * sae.sae.W_dec[0]  # the later edit wins on the shared feature
    assert torch.allclose(result.output, expected, atol=1e-5)
    assert bmodel.undo_edit("clamp") is clamp
    result = observe_layer(bmodel, tokens, 0)
    expected[0, [3, 9]] = result.states[0, [3, 9]] - TOPIC_ACT * sae.sae.W_dec[0]
    assert torch.allclose(result.output, expected, atol=1e-5)
    bmodel.clear_edits()
    assert torch.equal(logits(bmodel, tokens), topic_model["base"])


def test_sae_edits_save_and_reload(topic_model, tmp_path):
    bmodel, tokens = topic_model["bmodel"], topic_model["tokens"]
    bmodel.apply_edit(sae_edit(bmodel, "topic", {0: [0]}, "clamp", multiplier=-8.0, scales=[0.3]))
    expected = logits(bmodel, tokens)
    bmodel.save_pretrained(tmp_path / "edited")
    saved = json.loads((tmp_path / "edited" / EDITS_NAME).read_text())
    assert saved[0]["intervention"] == "clamp" and saved[0]["multiplier"] == -8.0
    assert saved[0]["layers"]["0"]["scales"] == [0.3]
    model = bmodel.detach()
    loaded = BottleneckedModel.from_pretrained(model, tmp_path / "edited")
    assert [e.to_dict() for e in loaded.edits] == [e.to_dict() for e in bmodel.edits]
    assert torch.equal(logits(loaded, tokens), expected)


def test_vq_edit_json_is_unchanged_and_old_files_load():
    old = {"topic": "t", "kind": "vq", "intervention": "exclude", "bottleneck_fingerprint": "f", "rule": {},
           "layers": {"1": {"codes": [3], "scores": [0.5]}}}  # fmt: skip
    edit = Edit.from_dict(old)
    assert edit.multiplier is None and edit.guardrail is None and edit.layers[1].scales == []
    assert edit.to_dict() == {**old, "num_codes": 1}


# ------------------------------------------------------------------------------------------------ bad input
def raises_fix(call, *args, **kwargs) -> str:
    with pytest.raises(CodeunlearnError) as excinfo:
        call(*args, **kwargs)
    assert_fix_error(excinfo)
    return str(excinfo.value)


def saved_sae(tmp_path, hook="blocks.1.hook_resid_post", d_in=HIDDEN, architecture="standard"):
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata

    sae = SAE.from_dict({"architecture": architecture, "d_in": d_in, "d_sae": 8})
    sae.cfg.metadata = SAEMetadata(hook_name=hook)
    sae.save_model(tmp_path / "sae")
    return tmp_path / "sae"


def test_sae_of_another_width_or_layer_is_refused(tmp_path):
    model = make_model("llama")
    message = raises_fix(attach_sae, model, saved_sae(tmp_path / "a", d_in=HIDDEN + 8))
    assert "d_in=40" in message and "32" in message
    message = raises_fix(attach_sae, model, {2: saved_sae(tmp_path / "b")})
    assert "layer 1" in message  # names the layer to attach it at
    raises_fix(attach_sae, model, saved_sae(tmp_path / "c", hook="blocks.1.hook_mlp_out"))
    raises_fix(attach_sae, model, saved_sae(tmp_path / "d", hook="blocks.7.hook_resid_post"))
    raises_fix(attach_sae, model, tmp_path / "nothing-here")
    assert not any(type(layer).__name__ == "BottleneckLayer" for layer in model.model.layers)


def test_unknown_sae_architecture_is_refused(tmp_path):
    message = raises_fix(sae_config, sae_architecture="gated")
    assert "relu" in message and "topk" in message
    raises_fix(BottleneckedModel.attach, make_model("llama"), sae_config(sae_architecture="pretrained"))
    directory = saved_sae(tmp_path)
    cfg = json.loads((directory / "cfg.json").read_text())
    (directory / "cfg.json").write_text(json.dumps({**cfg, "architecture": "banana"}))
    message = raises_fix(attach_sae, make_model("llama"), directory)
    assert "banana" in message and "jumprelu" in message


@pytest.mark.parametrize("multiplier", [2.0, 0.0, None, "big", float("nan")])
def test_clamp_multiplier_must_be_negative(multiplier):
    layers = {1: LayerCodes([0], scales=[1.0])}
    message = raises_fix(Edit, "t", layers, "clamp", kind="sae", multiplier=multiplier)
    assert "negative" in message or "numeric" in message
    guardrail = {"window": 4, "thresholds": {1: 0.5}, "action": "clamp"}
    raises_fix(Edit, "t", layers, "guardrail", kind="sae", multiplier=multiplier, guardrail=guardrail)
    assert Edit("t", layers, "clamp", kind="sae", multiplier=-3).multiplier == -3.0


def test_features_out_of_range_and_other_bad_edits(topic_model):
    bmodel = topic_model["bmodel"]
    before = logits(bmodel, topic_model["tokens"])
    for features in ([NUM_FEATURES], [-1], [0, 1000]):
        message = raises_fix(bmodel.apply_edit, sae_edit(bmodel, "bad", {0: features}))
        assert "0..3" in message
    raises_fix(bmodel.apply_edit, sae_edit(bmodel, "bad", {1: [0]}))  # no SAE at layer 1
    raises_fix(Edit, "x", {0: LayerCodes([0])}, "substitute", kind="sae")  # a codebook intervention
    raises_fix(Edit, "x", {0: LayerCodes([0])}, "zero", kind="vq")
    raises_fix(Edit, "x", {0: LayerCodes([0])}, "guardrail", kind="sae")  # not calibrated
    raises_fix(Edit, "x", {0: LayerCodes([0])}, "clamp", kind="sae", multiplier=-1.0)  # no scales
    raises_fix(LayerCodes, [0, 1], scales=[1.0])
    vq_edit = Edit("x", {0: LayerCodes([0])}, "substitute", bottleneck_fingerprint=bmodel.fingerprint())
    raises_fix(bmodel.apply_edit, vq_edit)
    assert bmodel.edits == []
    assert torch.equal(logits(bmodel, topic_model["tokens"]), before)


def test_hook_names_map_to_decoder_layers():
    from codeunlearn.kinds.sae.bottleneck import hook_layer

    assert hook_layer("blocks.12.hook_resid_post") == 12
    assert hook_layer("blocks.12.hook_resid_pre") == 11  # the input of block 12 is the output of layer 11
    assert hook_layer("model.layers.4") == 4 and hook_layer("transformer.h.2") == 2
    for bad in ("blocks.0.hook_resid_pre", "blocks.3.hook_mlp_out", "blocks.3.attn.hook_z", "hook_embed"):
        raises_fix(hook_layer, bad)


def test_bad_sae_config_values():
    for bad in ({"sae_k": 0}, {"sae_k": 100}, {"sae_width": -1}, {"sae_l1_coefficient": -1.0},
                {"site": "block_output"}, {"adapter_rank": 4}, {"sae_error_term": "yes"}):  # fmt: skip
        raises_fix(sae_config, **bad)
