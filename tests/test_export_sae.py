"""Export of SAE bottlenecks: the reloaded directory is exactly the in-memory edited model for every tiny
architecture and the sae-lens architectures the modeling file computes (standard, topk with and without decoder-norm
rescaling, jumprelu; attached or trained here; with and without the error term), for zero, clamp and guardrail edits
alone and composed; an empty edit list gives the base model. On the context-free model of `sae_helpers` (feature 0
fires on TOPIC only) the answers are known: a guardrail gate that turns on mid-generation gives the same tokens and
logits with and without a KV cache as the in-memory model, left padding (even with TOPIC as the pad token) does not
count in the window, and a subprocess without codeunlearn loads and generates. Also: bf16 and device maps, the
directory layout (config, safetensors, sae-lens directories), the model card, the refusals, the `export` CLI, and
the linear mode fed by an SAE edit's decoder rows."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from export_helpers import make_tokenizer, run_without_codeunlearn, text_of
from helpers import ARCHITECTURES, HIDDEN, assert_fix_error, make_model, make_tokens, run_error, run_ok, tiny_args
from sae_helpers import TOPIC, TOPIC_ACT, context_free_model, tokens_without_topic, topic_sae
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from codeunlearn.bottleneck.edit import Edit, Guardrail, LayerCodes
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.card import model_card
from codeunlearn.export.linear import (
    check_directions,
    fold_projection,
    projection_hooks,
    sae_edit_directions,
    save_linear_export,
)
from codeunlearn.export.save import BOTTLENECK_SUBDIR, save_pretrained
from codeunlearn.kinds.sae import attach_sae
from codeunlearn.kinds.sae.config import SAEConfig
from codeunlearn.unlearn.guardrail import calibrate_guardrail

PROBE = make_tokens(2, 12, seed=7)
OTHER = make_tokens(3, 14, seed=11)  # tokens the export's own verification never saw
WIDTH = 24
LAYERS = (0, 2)
EXACT = 1e-5
# (model architecture, SAE source, options): SAEs attached from sae-lens objects, or trained here ("trained-topk").
CASES = [
    ("llama", "standard", {}),
    ("gemma2", "topk", {}),
    ("gemma3_text", "jumprelu", {}),
    ("qwen2", "standard", {"error_term": False}),
    ("mistral", "topk", {"rescale_acts_by_decoder_norm": True}),
    ("gpt2", "jumprelu", {}),
    ("llama", "trained-topk", {}),
]
IDS = [f"{arch}-{sae}" + "".join(f"-{k}={v}" for k, v in extra.items()) for arch, sae, extra in CASES]
assert {arch for arch, _, _ in CASES} == set(ARCHITECTURES)


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def load(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=True, **kwargs).eval()


def logits(model, tokens: torch.Tensor = PROBE, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens, **kwargs).logits.clone()


# ------------------------------------------------------------------------------------------------ SAEs and edits


def layer_states(model: torch.nn.Module, layer: int, tokens: torch.Tensor = PROBE) -> torch.Tensor:
    """Residual states after decoder layer `layer`, position 0 left out (it passes through the bottleneck)."""
    with torch.no_grad():
        hidden = model(input_ids=tokens, output_hidden_states=True).hidden_states[layer + 1]
    return hidden[:, 1:].reshape(-1, hidden.shape[-1])


def random_sae(model: torch.nn.Module, architecture: str, layer: int, **cfg):
    """A sae-lens SAE (its own classes) on `blocks.{layer}.hook_resid_post` whose features fire on part of the
    probe's tokens: each encoder bias is set from the feature's pre-activations on the model's states there."""
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata

    extra = {"k": 4} if architecture == "topk" else {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(100 + layer)
        sae = SAE.from_dict({"architecture": architecture, "d_in": HIDDEN, "d_sae": WIDTH, **extra, **cfg})
    sae.cfg.metadata = SAEMetadata(hook_name=f"blocks.{layer}.hook_resid_post", model_name="tiny")
    pre = layer_states(model, layer) @ sae.W_enc.detach()
    scale = pre.std(0)  # standardised pre-activations: every feature varies across tokens as much as the others
    low, high = (pre / scale).quantile(0.4, dim=0), (pre / scale).quantile(0.6, dim=0)
    with torch.no_grad():
        sae.W_enc.div_(scale)
        sae.b_enc.copy_(-low)  # fires on about 60% of the tokens
        if architecture == "jumprelu":
            sae.threshold.copy_(high - low)  # ... of which the jump keeps about 40%
    return sae


def trained_sae_bmodel(arch: str, tmp_path) -> BottleneckedModel:
    """`codeunlearn train`'s path: a fresh TopK SAE trained a few steps, ending in sae-lens's inference class."""
    from codeunlearn.train import train_bottleneck

    config = SAEConfig(layers=list(LAYERS), sae_architecture="topk", sae_width=WIDTH, sae_k=4)
    bmodel = BottleneckedModel.attach(make_model(arch), config)
    args = tiny_args(tmp_path, sae_steps=3, batch_size=3, kmeans_init_tokens=60, sae_learning_rate=3e-3)
    train_bottleneck(bmodel, make_tokens(12, 10, seed=1), args)
    return bmodel


def sae_bmodel(arch: str, sae: str, tmp_path, error_term: bool = True, **cfg) -> BottleneckedModel:
    if sae.startswith("trained-"):
        return trained_sae_bmodel(arch, tmp_path)
    model = make_model(arch)
    saes = {layer: random_sae(model, sae, layer, **cfg) for layer in LAYERS}
    return attach_sae(model, saes, error_term=error_term)


def firing(bmodel: BottleneckedModel, tokens: torch.Tensor = PROBE) -> dict[int, tuple[list[int], list[float]]]:
    """Per layer: the features that fire on `tokens`, most often first, and their mean activation where they fire."""
    seen = {}
    with torch.no_grad(), bmodel.observing(lambda layer, x, result: seen.update({layer: result})):
        bmodel(input_ids=tokens, use_cache=False)
    out = {}
    for layer, result in seen.items():
        acts = result.acts[~result.passthrough]
        counts = (acts > 0).sum(0)
        order = [int(f) for f in counts.argsort(descending=True) if counts[f] > 0]
        means = [float(acts[:, f][acts[:, f] > 0].mean()) for f in order]
        out[layer] = (order, means)
    return out


def sae_edits(bmodel: BottleneckedModel) -> dict[str, Edit]:
    """A zero edit at the first layer, a clamp at the last, and a guardrail (clamp) at both, calibrated so that it
    gates about a third of the windows of other text; the guardrail shares a feature with each of the others."""
    fires, fingerprint = firing(bmodel), bmodel.fingerprint()
    first, last = bmodel.layers[0], bmodel.layers[-1]

    def codes(layer: int, start: int, stop: int) -> LayerCodes:
        features, means = fires[layer]
        assert len(features) >= stop, f"only {len(features)} features fire at layer {layer}"
        return LayerCodes(features[start:stop], scores=[1.0] * (stop - start), scales=means[start:stop])

    common = {"bottleneck_fingerprint": fingerprint, "kind": "sae"}
    zero = Edit("zeroed", {first: codes(first, 0, 3)}, "zero", **common)
    clamp = Edit("clamped", {last: codes(last, 0, 3)}, "clamp", multiplier=-6.0, **common)
    candidate = Edit(
        "guarded", {first: codes(first, 2, 5), last: codes(last, 2, 4)}, "clamp", multiplier=-4.0, **common
    )
    guard = calibrate_guardrail(bmodel, candidate, make_tokens(8, 12, seed=3), window=4, target_fpr=0.35)
    return {"zero": zero, "clamp": clamp, "guardrail": guard}


def gates(bmodel: BottleneckedModel, tokens: torch.Tensor) -> torch.Tensor:
    """Where a guardrail gate is on at some layer (in-memory model)."""
    seen = []
    with torch.no_grad(), bmodel.observing(lambda layer, x, result: seen.append(result.gated)):
        bmodel(input_ids=tokens, use_cache=False)
    return torch.stack([g for g in seen if g is not None]).any(0)


# ------------------------------------------------------------------------------------------------ every architecture


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def exported(request, tmp_path_factory):
    """Per case: SAEs at layers 0 and 2, exported without edits and with zero + clamp + guardrail composed."""
    arch, sae, extra = request.param
    root = tmp_path_factory.mktemp("sae-export")
    bmodel = sae_bmodel(arch, sae, root / "run", **extra)
    tokenizer = make_tokenizer()
    base = logits(make_model(arch))
    unedited = logits(bmodel)
    save_pretrained(bmodel, root / "unedited", tokenizer)
    edits = sae_edits(bmodel)
    for edit in edits.values():
        bmodel.apply_edit(edit)
    save_pretrained(bmodel, root / "edited", tokenizer)
    return {"arch": arch, "sae": sae, "extra": extra, "bmodel": bmodel, "edits": edits, "root": root,
            "base": base, "unedited": unedited, "edited": logits(bmodel)}  # fmt: skip


def test_reloaded_export_equals_in_memory_model_with_composed_edits(exported):
    bmodel = exported["bmodel"]
    assert max_difference(exported["edited"], exported["unedited"]) > 1e-3, "the edits must change the probe"
    on = gates(bmodel, PROBE)
    assert on.any() and not on.all(), "the guardrail must gate some tokens and not others"
    model = load(exported["root"] / "edited")
    assert type(model).__name__ == "CodeunlearnForCausalLM"
    assert max_difference(logits(model), exported["edited"]) <= EXACT
    assert max_difference(logits(model, OTHER), logits(bmodel, OTHER)) <= EXACT


def test_empty_edit_list_gives_the_base_model(exported):
    model = load(exported["root"] / "unedited")
    assert model.config.edits == []
    assert max_difference(logits(model), exported["unedited"]) <= EXACT
    if exported["extra"].get("error_term", True):  # the error term makes an unedited SAE the identity
        assert torch.equal(logits(model), exported["base"])
        assert torch.equal(exported["unedited"], exported["base"])
    else:  # the bare reconstruction is spliced in: not the base model, but the in-memory one
        assert max_difference(exported["unedited"], exported["base"]) > 1e-3
    for name in ("unedited", "edited"):
        disabled = load(exported["root"] / name, bottleneck_enabled=False)
        assert max_difference(logits(disabled), exported["base"]) <= 1e-6


def test_config_holds_the_saes_and_the_readable_edit_list(exported):
    path, bmodel = exported["root"] / "edited", exported["bmodel"]
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "codeunlearn" and config["bottleneck"]["kind"] == "sae"
    assert [e["topic"] for e in config["edits"]] == ["zeroed", "clamped", "guarded"]
    assert config["edits"] == json.loads(json.dumps([edit.to_dict() for edit in bmodel.edits]))
    guard = config["edits"][2]
    assert guard["intervention"] == "guardrail" and guard["guardrail"]["window"] == 4
    assert set(guard["guardrail"]["thresholds"]) == {"0", "2"} and guard["multiplier"] == -4.0
    architecture = "topk" if exported["sae"] == "trained-topk" else exported["sae"]
    for layer in LAYERS:
        spec = config["saes"][str(layer)]
        assert spec["architecture"] == architecture and (spec["d_in"], spec["d_sae"]) == (HIDDEN, WIDTH)
        assert spec["sae_lens_dir"] == f"{BOTTLENECK_SUBDIR}/layer_{layer}"
        if architecture == "topk":
            assert spec["k"] == 4
            rescale = bmodel.bottleneck(layer).sae.cfg.rescale_acts_by_decoder_norm
            assert spec["rescale_acts_by_decoder_norm"] == rescale


def test_weights_and_sae_lens_directories(exported):
    from sae_lens import SAE

    path, bmodel = exported["root"] / "edited", exported["bmodel"]
    tensors = load_file(str(path / "model.safetensors"))
    base_state = make_model(exported["arch"]).state_dict()
    stored = {k.removeprefix("causal_lm."): v for k, v in tensors.items() if k.startswith("causal_lm.")}
    assert stored and all(torch.equal(stored[k], base_state[k]) for k in stored)
    for layer in LAYERS:
        sae = bmodel.bottleneck(layer).sae
        reloaded = SAE.load_from_disk(path / BOTTLENECK_SUBDIR / f"layer_{layer}")  # sae-lens reads it itself
        assert reloaded.cfg.architecture() == sae.cfg.architecture()
        for name in ("W_enc", "b_enc", "W_dec", "b_dec", "threshold"):
            if hasattr(sae, name) and isinstance(getattr(sae, name), torch.Tensor):
                assert torch.equal(tensors[f"bottlenecks.{layer}.{name}"], getattr(sae, name))
                assert torch.equal(getattr(reloaded, name), getattr(sae, name))
    edited = BottleneckedModel.from_pretrained(make_model(exported["arch"]), path / BOTTLENECK_SUBDIR)
    assert [e.topic for e in edited.edits] == ["zeroed", "clamped", "guarded"]
    assert max_difference(logits(edited), exported["edited"]) <= EXACT


@pytest.fixture(scope="module")
def llama_bmodel(tmp_path_factory):
    bmodel = sae_bmodel("llama", "topk", tmp_path_factory.mktemp("sae-llama"))
    return bmodel, sae_edits(bmodel)


@pytest.mark.parametrize("intervention", ["zero", "clamp", "guardrail"])
def test_each_intervention_alone(llama_bmodel, intervention, tmp_path):
    bmodel, edits = llama_bmodel
    with bmodel.edited(edits[intervention]):
        expected, other = logits(bmodel), logits(bmodel, OTHER)
        save_pretrained(bmodel, tmp_path / "out", make_tokenizer())
    assert max_difference(expected, logits(bmodel)) > 1e-3
    model = load(tmp_path / "out")
    assert max_difference(logits(model), expected) <= EXACT
    assert max_difference(logits(model, OTHER), other) <= EXACT


def test_sae_in_the_middle_of_training_exports_its_finished_form(tmp_path):
    """A training-class SAE whose input scale is not folded yet exports as `save` writes it: folded, inference class
    (equal up to float rounding, which the export's own verification allows)."""
    config = SAEConfig(layers=[1], sae_architecture="relu", sae_width=WIDTH)
    bmodel = BottleneckedModel.attach(make_model("llama"), config)
    states = layer_states(bmodel.model, 1, make_tokens(6, 12, seed=2))
    bottleneck = bmodel.bottleneck(1)
    bottleneck.initialize(states)
    assert bottleneck.trainable and float(bottleneck.input_scale) != 1.0
    features, means = firing(bmodel)[1]
    edit = Edit("t", {1: LayerCodes(features[:4], scales=means[:4])}, "clamp", multiplier=-8.0, kind="sae")
    bmodel.apply_edit(edit)
    save_pretrained(bmodel, tmp_path / "out", make_tokenizer())
    expected = logits(bmodel)
    assert max_difference(expected, logits(make_model("llama"))) > 1e-3
    assert max_difference(logits(load(tmp_path / "out")), expected) <= 1e-4 * float(expected.abs().max())
    assert bottleneck.trainable  # the bottleneck itself is left as it was


# ------------------------------------------------------------------------------------------------ known answers


def guardrail(bmodel: BottleneckedModel, window: int = 4, threshold: float = 0.3) -> Edit:
    """Clamp feature 0 (TOPIC) to -10 x TOPIC_ACT where at least 2 of the last 4 tokens are TOPIC."""
    return Edit(
        "topic",
        {0: LayerCodes([0], scales=[TOPIC_ACT])},
        "guardrail",
        bottleneck_fingerprint=bmodel.fingerprint(),
        kind="sae",
        multiplier=-10.0,
        guardrail=Guardrail(window=window, thresholds={0: threshold}, action="clamp"),
    )


@pytest.fixture(scope="module")
def topic_export(tmp_path_factory):
    """The context-free model with the hand-built SAE at layer 0 and the TOPIC guardrail, exported."""
    root = tmp_path_factory.mktemp("topic-export")
    model = context_free_model()
    bmodel = attach_sae(model, {0: topic_sae(model)})
    bmodel.apply_edit(guardrail(bmodel))
    save_pretrained(bmodel, root / "export", make_tokenizer())
    return {"bmodel": bmodel, "dir": root / "export", "model": load(root / "export")}


FORCE_TOPIC = {"sequence_bias": {(TOPIC,): 1000.0}, "do_sample": False, "pad_token_id": 1}


def generate(model, prompt: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
    """Greedy generation that always picks TOPIC (so the gate's state changes as tokens are generated), with the
    raw logits of each step."""
    if attention_mask is None:
        attention_mask = torch.ones_like(prompt)
    options = {**FORCE_TOPIC, "max_new_tokens": 6, "output_logits": True, "return_dict_in_generate": True, **kwargs}
    out = model.generate(prompt, attention_mask=attention_mask, **options)
    return out.sequences, torch.stack(out.logits, 1)


def test_guardrail_turns_on_mid_generation_the_same_with_and_without_kv_cache(topic_export):
    model, bmodel = topic_export["model"], topic_export["bmodel"]
    prompt = tokens_without_topic(5, seed=3).unsqueeze(0)
    cached, cached_logits = generate(model, prompt, use_cache=True)
    uncached, uncached_logits = generate(model, prompt, use_cache=False)
    with torch.no_grad():
        reference, reference_logits = generate(bmodel.model, prompt, use_cache=True)
        with bmodel.disabled():
            _, base_logits = generate(bmodel.model, prompt, use_cache=True)
    assert cached[0, 5:].tolist() == [TOPIC] * 6
    assert torch.equal(cached, uncached) and torch.equal(cached, reference)
    assert max_difference(cached_logits, uncached_logits) <= EXACT
    assert max_difference(cached_logits, reference_logits) <= EXACT
    # Step 1 reads one TOPIC in its window (score 1/4: off); from step 2 on the window holds two: the gate is on.
    changed = (cached_logits - base_logits).abs().amax(-1)[0]
    assert bool((changed[:2] <= 1e-6).all())
    assert bool((changed[2:] > 1e-3).all())


def test_stepwise_decoding_continues_the_window(topic_export):
    model, bmodel = topic_export["model"], topic_export["bmodel"]
    tokens = tokens_without_topic(16, seed=9).unsqueeze(0)
    tokens[0, [4, 6, 11, 12]] = TOPIC  # the gate is on at 6 and 7 (window holds 4 and 6) and from 12 to 14
    full = logits(model, tokens, use_cache=False)
    assert max_difference(full, logits(bmodel, tokens, use_cache=False)) <= EXACT
    steps = []
    with torch.no_grad():
        out = model(input_ids=tokens[:, :5], use_cache=True)
        steps.append(out.logits)
        for position in range(5, tokens.shape[1]):
            out = model(input_ids=tokens[:, position : position + 1], past_key_values=out.past_key_values)
            steps.append(out.logits)
    assert max_difference(torch.cat(steps, 1), full) <= EXACT
    expected_on = [6, 7, 12, 13, 14]
    assert gates(bmodel, tokens)[0].nonzero().flatten().tolist() == expected_on


def left_padded(rows: list[torch.Tensor], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(row) for row in rows)
    ids = torch.stack([torch.cat([torch.full((width - len(row),), pad), row]) for row in rows])
    mask = torch.stack([torch.cat([torch.zeros(width - len(row)), torch.ones(len(row))]).long() for row in rows])
    return ids, mask


def test_left_padded_batch_equals_rows_alone_even_with_topic_as_padding(topic_export):
    """Padding (position id 0, as `generate` gives it) passes through and does not count in the window: with TOPIC
    as the pad token, a counted pad would switch the short row's gate on at its first TOPIC."""
    model, bmodel = topic_export["model"], topic_export["bmodel"]
    long = tokens_without_topic(9, seed=4)
    long[[3, 5]] = TOPIC
    short = tokens_without_topic(5, seed=5)
    short[2] = TOPIC  # alone: one TOPIC in its window, off
    ids, mask = left_padded([long, short], pad=TOPIC)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    for reference in (model, bmodel):
        batched = logits(reference, ids, attention_mask=mask, position_ids=positions)
        assert max_difference(batched[0], logits(reference, long[None])[0]) <= 1e-4
        assert max_difference(batched[1, 4:], logits(reference, short[None])[0]) <= 1e-4
    # The limitation, documented: padding is recognised by its position id 0; pads given other positions count.
    counted = positions.masked_fill(mask == 0, 1)
    assert (
        max_difference(
            logits(model, ids, attention_mask=mask, position_ids=counted)[1, 4:], logits(model, short[None])[0]
        )
        > 1e-3
    )

    together, together_logits = generate(model, ids, mask, pad_token_id=TOPIC)
    for row, prompt in enumerate((long, short)):
        alone, alone_logits = generate(model, prompt[None])
        assert torch.equal(together[row, ids.shape[1] :], alone[0, len(prompt) :])
        assert max_difference(together_logits[row], alone_logits[0]) <= 1e-4


@pytest.mark.parametrize("argument", ["dtype", "torch_dtype"])
def test_bfloat16_load_keeps_the_sae_in_fp32(topic_export, argument):
    model = load(topic_export["dir"], **{argument: torch.bfloat16})
    assert model.causal_lm.lm_head.weight.dtype == torch.bfloat16
    assert all(t.dtype == torch.float32 for t in model.bottlenecks.buffers())
    reference = BottleneckedModel.from_pretrained(
        context_free_model().to(torch.bfloat16), topic_export["dir"] / BOTTLENECK_SUBDIR
    )
    tokens = tokens_without_topic(12, seed=6).unsqueeze(0)
    tokens[0, [3, 4, 8]] = TOPIC
    got = logits(model, tokens)
    assert got.dtype == torch.bfloat16
    assert max_difference(got, logits(reference, tokens)) <= 1e-2
    assert max_difference(got, logits(topic_export["model"], tokens)) <= 0.05


@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_device_map(topic_export, device_map):
    model = load(topic_export["dir"], device_map=device_map)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    tokens = tokens_without_topic(10, seed=8).unsqueeze(0)
    tokens[0, [2, 3]] = TOPIC
    assert max_difference(logits(model, tokens), logits(topic_export["bmodel"], tokens)) <= EXACT


def test_loads_and_generates_where_codeunlearn_is_not_installed(topic_export, tmp_path):
    prompt = tokens_without_topic(6, seed=12)
    prompt[[2, 4]] = TOPIC
    script = f"""
    import json
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = {str(topic_export["dir"])!r}
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    inputs = tokenizer({text_of(prompt)!r}, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    out = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=1,
                         sequence_bias={{({TOPIC},): 1000.0}}, output_logits=True, return_dict_in_generate=True)
    loaded = sorted(name for name in __import__("sys").modules if name.startswith("codeunlearn"))
    print()
    print(json.dumps({{"ids": inputs["input_ids"][0].tolist(), "logits": logits[0].tolist(),
                      "generated": out.sequences[0].tolist(), "step_logits": torch.stack(out.logits, 1)[0].tolist(),
                      "class": type(model).__name__, "codeunlearn_modules": loaded}}))
    """
    result = run_without_codeunlearn(script, cwd=tmp_path)
    assert result["codeunlearn_modules"] == [] and result["class"] == "CodeunlearnForCausalLM"
    assert result["ids"] == prompt.tolist()
    bmodel = topic_export["bmodel"]
    assert max_difference(torch.tensor(result["logits"]), logits(bmodel, prompt[None])[0]) <= EXACT
    with torch.no_grad():
        expected, expected_logits = generate(bmodel.model, prompt[None], max_new_tokens=5)
    assert result["generated"] == expected[0].tolist()
    assert max_difference(torch.tensor(result["step_logits"]), expected_logits[0]) <= EXACT


# ------------------------------------------------------------------------------------------------ model card


def test_model_card_describes_the_saes_and_interventions(llama_bmodel, tmp_path):
    bmodel, edits = llama_bmodel
    for edit in edits.values():
        bmodel.apply_edit(edit)
    try:
        save_pretrained(bmodel, tmp_path / "out", make_tokenizer())
    finally:
        bmodel.clear_edits()
    card = (tmp_path / "out" / "README.md").read_text()
    assert "sparse autoencoder" in card and "sae-lens" in card and "trust_remote_code=True" in card
    assert f"| 0 | topk | {WIDTH} | k = 4 (TopK) |" in card and f"`{BOTTLENECK_SUBDIR}/layer_2`" in card
    assert "| 1 | zeroed | zero | 3 | layer 0: 3/24 |" in card
    assert "| 2 | clamped | clamp to -6.0 x scale | 3 | layer 2: 3/24 |" in card
    threshold = edits["guardrail"].guardrail.thresholds[0]
    assert f"guardrail (clamp to -4.0 x scale; window 4 tokens, threshold layer 0: {threshold:.4g}" in card
    assert "| 3 | guarded |" in card and "layer 0: 3/24, layer 2: 2/24 |" in card
    assert "Error term: kept" in card and "left padding (position id 0) does not count" in card


def test_model_card_shows_measured_l0_of_a_relu_sae(topic_export, tmp_path):
    path = topic_export["dir"]
    card = (path / "README.md").read_text()
    assert "| 0 | standard | 4 | L0 not measured" in card
    assert "window 4 tokens, threshold layer 0: 0.3;" in card
    report = tmp_path / "report.json"
    rows = [{"row": "base", "codes_removed": None, "forget_loss": 2.5, "retain_loss": 2.0, "delta_forget": 0.0,
             "delta_retain": 0.0, "selectivity": 0.0}]  # fmt: skip
    fidelity = [{"layer": 0, "corpus": "forget", "l0": 7.5}, {"layer": 0, "corpus": "retain", "l0": 6.0}]
    report.write_text(json.dumps({"rows": rows, "fidelity": fidelity}))
    assert "| 0 | standard | 4 | measured L0 7.5 (forget), 6.0 (retain) |" in str(model_card(path, eval_report=report))


# ------------------------------------------------------------------------------------------------ refusals


def test_unsupported_saes_are_refused_and_write_nothing(tmp_path):
    model = make_model("llama")
    bmodel = BottleneckedModel.attach(model, SAEConfig(layers=[1], sae_width=48, sae_k=4))
    with pytest.raises(CodeunlearnError) as excinfo:
        save_pretrained(bmodel, tmp_path / "untrained", make_tokenizer())
    assert_fix_error(excinfo)
    assert "untrained" in str(excinfo.value)
    bmodel.detach()
    for cfg, message in (
        ({"architecture": "gated"}, "'gated' SAE (layer 1) is not supported"),
        ({"architecture": "standard", "normalize_activations": "layer_norm"}, "normalises its inputs"),
    ):
        from sae_lens import SAE
        from sae_lens.saes.sae import SAEMetadata

        sae = SAE.from_dict({"d_in": HIDDEN, "d_sae": 8, **cfg})
        sae.cfg.metadata = SAEMetadata(hook_name="blocks.1.hook_resid_post")
        bmodel = attach_sae(model, sae)
        with pytest.raises(CodeunlearnError) as excinfo:
            save_pretrained(bmodel, tmp_path / "out", make_tokenizer())
        assert_fix_error(excinfo)
        assert message in str(excinfo.value)
        bmodel.detach()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------------ linear mode


def test_linear_mode_from_an_sae_edit_folds_the_decoder_rows(llama_bmodel, tmp_path):
    bmodel, edits = llama_bmodel
    edit = edits["clamp"]
    directions, layer = sae_edit_directions(bmodel, edit)
    assert layer == 2
    assert torch.equal(directions, bmodel.bottleneck(2).sae.W_dec.detach()[edit.layers[2].codes])
    model = make_model("llama")
    with torch.no_grad(), projection_hooks(model, directions, layer):
        hooked = logits(model)
    fold_projection(model, directions, layer)
    with torch.no_grad():
        out = model(input_ids=PROBE, output_hidden_states=True)
    assert max_difference(out.logits, hooked) <= 1e-5
    assert max_difference(out.logits, logits(make_model("llama"))) > 1e-3
    basis = check_directions(directions, HIDDEN).float()
    stream = out.hidden_states[layer + 1]
    assert float((stream @ basis.T).abs().max()) <= 1e-5 * max(1.0, float(stream.abs().max()))

    save_linear_export(model, make_tokenizer(), tmp_path / "out", directions, layer, provenance={"topic": edit.topic})
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # stock class, no remote code
    assert reloaded.config.model_type == "llama"
    assert max_difference(logits(reloaded), out.logits) <= 1e-5

    with pytest.raises(CodeunlearnError) as excinfo:  # features at two layers: name one
        sae_edit_directions(bmodel, edits["guardrail"])
    assert_fix_error(excinfo)
    assert sae_edit_directions(bmodel, edits["guardrail"], layer=0)[1] == 0
    with pytest.raises(CodeunlearnError) as excinfo:
        sae_edit_directions(bmodel, edit, layer=0)
    assert_fix_error(excinfo)


# ------------------------------------------------------------------------------------------------ CLI


@pytest.fixture(scope="module")
def cli_workspace(tmp_path_factory) -> dict:
    """A tiny Llama with its tokenizer, a sae-lens SAE directory at layer 1, and an SAE clamp edit file."""
    root = tmp_path_factory.mktemp("sae-cli")
    model = make_model("llama")
    model.save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    random_sae(model, "topk", 1).save_model(root / "sae")
    bmodel = attach_sae(model, root / "sae")
    features, means = firing(bmodel)[1]
    edit = Edit("topic", {1: LayerCodes(features[:3], scales=means[:3])}, "clamp", multiplier=-5.0, kind="sae",
                bottleneck_fingerprint=bmodel.fingerprint())  # fmt: skip
    edit.save(root / "edit.json")
    expected = logits(bmodel)
    with bmodel.edited(edit):
        edited = logits(bmodel)
    directions = bmodel.bottleneck(1).sae.W_dec.detach()[features[:3]].clone()
    bmodel.detach()
    return {"root": root, "model": root / "model", "sae": root / "sae", "edit": root / "edit.json",
            "unedited": expected, "edited": edited, "directions": directions}  # fmt: skip


def test_cli_exports_an_sae_directory_with_an_edit(cli_workspace, capsys):
    out = cli_workspace["root"] / "export"
    argv = ["export", "--model", str(cli_workspace["model"]), "--bottleneck", str(cli_workspace["sae"])]
    printed = run_ok([*argv, "--edit", str(cli_workspace["edit"]), "--out", str(out), "--no_progress"], capsys)
    assert "verified" in printed
    assert max_difference(logits(load(out)), cli_workspace["edited"]) <= EXACT
    assert (out / BOTTLENECK_SUBDIR / "layer_1" / "cfg.json").is_file()


def test_cli_linear_mode_from_an_sae_edit(cli_workspace, capsys):
    out, edit = cli_workspace["root"] / "linear", str(cli_workspace["edit"])
    base = [
        "export",
        "--mode",
        "linear",
        "--model",
        str(cli_workspace["model"]),
        "--bottleneck",
        str(cli_workspace["sae"]),
    ]
    argv = [*base, "--edit", edit]
    printed = run_ok([*argv, "--out", str(out), "--no_progress"], capsys)
    assert "model_type llama" in printed
    spec = json.loads((out / "codeunlearn_linear.json").read_text())
    assert spec["layer"] == 1 and spec["rank"] == 3 and spec["topic"] == "topic"
    assert spec["sae_edit"]["features"] == Edit.load(cli_workspace["edit"]).layers[1].codes
    assert "decoder rows of the 3 SAE features" in spec["directions_method"]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    expected = make_model("llama")
    fold_projection(expected, cli_workspace["directions"], 1)
    assert max_difference(logits(model), logits(expected)) <= 1e-5
    card = (out / "README.md").read_text()
    assert "different method" in card and "linear projection, **not** the SAE edit" in card
    assert "Directions from an SAE edit" in card and "`topic` (clamp)" in card

    shutil.rmtree(out)
    lines = [
        run_error([*argv, "--directions", edit, "--out", str(out)], capsys),
        run_error([*base, "--edit", edit, edit, "--out", str(out)], capsys),
        run_error([*argv, "--layer", "0", "--out", str(out), "--no_progress"], capsys),  # no features at layer 0
    ]
    assert "--directions and --edit" in lines[0] and "exactly one --edit" in lines[1] and "layer 0" in lines[2]
    assert not out.exists()
