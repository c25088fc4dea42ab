"""The attacks of a holder of the released weights, on tiny models with known answers: the quantizers on hand-built
matrices (and against torch's own int8 kernel), the quantization attack on a copy, the bypass of a bottleneck edit
(exactly the base model's loss), a stock model with no switch, and the SAE error-term attack with its gradients
routed through the error term only."""

from __future__ import annotations

import copy
import json
import random
import warnings
from pathlib import Path

import pytest
import torch
from export_helpers import make_tokenizer, topic_edits, trained_bmodel
from helpers import HIDDEN, assert_fix_error, make_model, make_tokens, tiny_config
from sae_helpers import TOPIC, context_free_model, topic_sae
from torch import nn

from codeunlearn.bottleneck.adapters import adapter_layers
from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.attacks.bypass import bypass_attack, error_term_finetune, switch_of, switched_off
from codeunlearn.evaluate.attacks.quantization import (
    quantizable_linears,
    quantization_attack,
    quantize_groupwise,
    quantize_matrix,
    quantize_symmetric,
    quantize_weights_,
)
from codeunlearn.evaluate.metrics.base import EvalContext
from codeunlearn.evaluate.metrics.cloze import fact_cloze
from codeunlearn.evaluate.suite.text_loss import heldout_loss
from codeunlearn.kinds.sae import attach_sae

SEQ = 16
SPLIT = {"seq_len": SEQ, "heldout_fraction": 0.2, "split_seed": 0}


def ctx_for(model: nn.Module, **overrides) -> EvalContext:
    return EvalContext(model, make_tokenizer(), **{"batch_size": 4, "progress": False, **overrides})


def write_words(path: Path, seed: int, vocab: range, docs: int = 10, length: int = 60) -> Path:
    rng = random.Random(seed)
    path.write_text("".join(" ".join(f"w{rng.choice(vocab)}" for _ in range(length)) + "\n" for _ in range(docs)))
    return path


@pytest.fixture
def corpora(tmp_path) -> dict[str, str]:
    return {
        "forget": str(write_words(tmp_path / "forget.txt", 1, range(3, 40))),
        "retain": str(write_words(tmp_path / "retain.txt", 2, range(60, 128))),
    }


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def unchanged(model: nn.Module, before: dict[str, torch.Tensor]) -> bool:
    after = model.state_dict()
    return set(after) == set(before) and all(torch.equal(after[k], v) for k, v in before.items())


def logits(model: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


# ------------------------------------------------------------------------------------------------ quantizers


def test_int8_per_channel_round_trip_on_a_hand_built_matrix():
    weight = torch.tensor(
        [
            [1.27, -0.634, 0.0051, 0.3],  # max 1.27: scale 0.01
            [0.0, 0.0, 0.0, 0.0],  # an all-zero row stays zero
            [-2.54, 1.0, 0.5, 0.029],  # max 2.54: scale 0.02
        ]
    )
    expected = torch.tensor([[1.27, -0.63, 0.01, 0.30], [0.0, 0.0, 0.0, 0.0], [-2.54, 1.0, 0.5, 0.02]])
    assert torch.allclose(quantize_symmetric(weight, 8), expected, atol=1e-6)
    assert torch.allclose(quantize_matrix(weight, 8), expected, atol=1e-6)
    # Every entry is an integer multiple of its row's scale, within [-127, 127].
    steps = quantize_symmetric(weight, 8)[2] / 0.02
    assert torch.allclose(steps, steps.round(), atol=1e-4) and steps.abs().max() <= 127 + 1e-4


def test_groupwise_4bit_round_trip_on_a_hand_built_matrix():
    weight = torch.tensor(
        [
            [0.0, 1.45, 3.0, 0.75, 10.0, 11.0],  # group [0, 3]: scale 0.2, zero 0; group [0, 11]: scale 11/15
            [-1.0, 0.55, 2.0, -0.13, 0.0, 0.0],  # group [-1, 2]: scale 0.2, zero 5; an all-zero group
        ]
    )
    expected = torch.tensor(
        [
            [0.0, 1.4, 3.0, 0.8, 14 * 11 / 15, 11.0],
            [-1.0, 0.6, 2.0, -0.2, 0.0, 0.0],
        ]
    )
    assert torch.allclose(quantize_groupwise(weight, 4, group_size=4), expected, atol=1e-6)
    assert torch.allclose(quantize_matrix(weight, 4, group_size=4), expected, atol=1e-6)
    # One group per row: row 0 spans [0, 11] in 15 steps.
    whole = quantize_groupwise(weight, 4, group_size=128)
    assert torch.allclose(whole[0], torch.round(weight[0] / (11 / 15)) * (11 / 15), atol=1e-6)
    # 2 bits: 4 levels per group.
    assert len(quantize_groupwise(weight[:1], 2, group_size=6).unique()) <= 4


@pytest.mark.parametrize(("arch", "per_layer"), [("llama", 7), ("gpt2", 4)])
def test_quantize_weights_touches_only_the_decoder_linears(arch, per_layer):
    from transformers.pytorch_utils import Conv1D

    model = make_model(arch)
    before = state(model)
    linears = quantizable_linears(model)
    assert len(linears) == 3 * per_layer
    names = {f"{name}.weight" for name, _ in linears}
    assert quantize_weights_(model, 4) == 3 * per_layer
    for key, value in model.state_dict().items():
        inside = any(key.endswith(name) for name in names)
        assert torch.equal(value, before[key]) != inside, key  # exactly the linear weights moved (no bias, norm, ...)
    for name, module in linears:
        original = before[next(k for k in before if k.endswith(f"{name}.weight"))]
        if isinstance(module, Conv1D):  # (in, out): output channels are columns
            assert torch.equal(module.weight, quantize_matrix(original.T, 4).T)
        else:
            assert torch.equal(module.weight, quantize_matrix(original, 4))


def test_quantized_logits_move_a_little_at_8_bits_and_more_at_4():
    model = make_model("llama")
    tokens = make_tokens(4, 16, seed=3)
    full = logits(model, tokens)
    moved = {}
    for bits in (8, 4):
        work = copy.deepcopy(model)
        quantize_weights_(work, bits)
        moved[bits] = float((logits(work, tokens) - full).abs().max())
    spread = float(full.abs().max())
    assert 0 < moved[8] < 0.02 * spread  # 255 levels per channel
    assert moved[8] * 4 < moved[4] < 0.3 * spread  # 16 levels per group: more, still bounded


def test_simulated_int8_is_what_the_torch_int8_kernel_stores():
    """torch's dynamic int8 kernel, given the same per-channel symmetric range [-127, 127], stores exactly the weights
    `quantize_weights_(model, 8)` computes; its logits differ only by its own activation quantization."""
    from torch.ao.quantization import QConfig, default_dynamic_quant_observer, quantize_dynamic
    from torch.ao.quantization.observer import PerChannelMinMaxObserver

    model = make_model("llama")
    observer = PerChannelMinMaxObserver.with_args(
        dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127
    )
    qconfig = QConfig(activation=default_dynamic_quant_observer, weight=observer)
    names = [f"model.layers.{name}" for name, _ in quantizable_linears(model)]
    with warnings.catch_warnings():  # torch.ao.quantization is deprecated; it is the reference here
        warnings.simplefilter("ignore")
        real = quantize_dynamic(copy.deepcopy(model), dict.fromkeys(names, qconfig), dtype=torch.qint8)
        real_weights = {name: real.get_submodule(name).weight().dequantize() for name in names}
    simulated = copy.deepcopy(model)
    quantize_weights_(simulated, 8)
    for name in names:
        assert torch.allclose(real_weights[name], simulated.get_submodule(name).weight, rtol=0, atol=1e-7)
    assert isinstance(real.model.layers[0].self_attn.q_proj, torch.ao.nn.quantized.dynamic.Linear)
    assert isinstance(real.lm_head, nn.Linear)  # only the decoder linears, as ours
    tokens = make_tokens(4, 16, seed=3)
    assert torch.allclose(logits(real, tokens), logits(simulated, tokens), atol=0.02)


def test_quantization_attack_scores_copies_and_leaves_the_model(corpora):
    model = make_model("llama")
    before = state(model)
    ctx = ctx_for(model)
    result = quantization_attack(
        ctx, forget_corpus=corpora["forget"], retain_corpora=[corpora["retain"]], max_tokens=512, **SPLIT
    )
    scores = result.scores
    assert set(scores) == {
        "forget_loss", "retain_loss", "forget_loss_8bit", "retain_loss_8bit", "forget_recovery_8bit",
        "forget_loss_4bit", "retain_loss_4bit", "forget_recovery_4bit",
    }  # fmt: skip
    assert result.group == "attack" and result.name == "quantization"
    assert unchanged(model, before)
    # The unquantized losses are the suite's heldout_loss rows.
    for corpus, key in ((corpora["forget"], "forget_loss"), (corpora["retain"], "retain_loss")):
        assert scores[key] == heldout_loss(ctx, corpus=corpus, max_tokens=512, **SPLIT).scores["loss"]
    for bits in (8, 4):
        work = copy.deepcopy(model)
        quantize_weights_(work, bits)
        loss = heldout_loss(ctx_for(work), corpus=corpora["forget"], max_tokens=512, **SPLIT).scores["loss"]
        assert scores[f"forget_loss_{bits}bit"] == pytest.approx(loss, abs=1e-6)
        assert scores[f"forget_recovery_{bits}bit"] == pytest.approx(scores["forget_loss"] - loss, abs=1e-6)
    assert abs(scores["forget_recovery_8bit"]) < abs(scores["forget_recovery_4bit"])
    assert [d["weights"] for d in result.details] == ["none", "8bit", "4bit"] and result.details[1]["matrices"] == 21


def test_quantization_leaves_the_bottleneck_and_its_adapters_in_full_precision():
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[0, 2], adapter_rank=2))
    assert bmodel.adapter_parameters()  # the adapters sit inside the decoder layers, on the base linears
    linears = quantizable_linears(bmodel)
    assert len(linears) == 21 and not any("lora_" in name for name, _ in linears)
    own = {k: v.clone() for k, v in bmodel.bottleneck_state().items()}
    work = copy.deepcopy(bmodel)
    assert quantize_weights_(work, 4) == 21
    assert all(torch.equal(v, own[k]) for k, v in work.bottleneck_state().items())
    q_proj = work.model.model.layers[1].self_attn.q_proj.get_base_layer().weight
    assert not torch.equal(q_proj, bmodel.model.model.layers[1].self_attn.q_proj.get_base_layer().weight)


@pytest.mark.parametrize("bits", [[1], [9], [], [4.0], [True], "4"])
def test_quantization_refuses_bad_bits_before_reading_any_text(tmp_path, bits):
    with pytest.raises(CodeunlearnError, match="bits=") as excinfo:
        quantization_attack(ctx_for(make_model("llama")), forget_corpus=str(tmp_path / "missing.txt"), bits=bits)
    assert_fix_error(excinfo)


def test_quantization_refuses_a_model_without_linear_weights(tmp_path):
    model = make_model("llama")
    model.model.layers = nn.ModuleList()  # no decoder layer, so no linear weight to quantize
    with pytest.raises(CodeunlearnError, match=r"no nn\.Linear") as excinfo:
        quantization_attack(ctx_for(model), forget_corpus=str(tmp_path / "missing.txt"))
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError, match=r"no nn\.Linear"):
        quantize_weights_(model, 8)
    with pytest.raises(CodeunlearnError, match="group_size"):
        quantize_weights_(make_model("llama"), 4, group_size=0)


# ------------------------------------------------------------------------------------------------ bypass


def test_bypassing_a_bottleneck_edit_gives_back_exactly_the_base_model(corpora, tmp_path):
    bmodel = trained_bmodel("llama", tmp_path / "run")
    for edit in topic_edits(bmodel):
        bmodel.apply_edit(edit)
    tokens = make_tokens(2, 12, seed=3)
    edited = logits(bmodel, tokens)
    ctx = ctx_for(bmodel)
    result = bypass_attack(ctx, forget_corpus=corpora["forget"], retain_corpora=[corpora["retain"]], **SPLIT)
    scores = result.scores
    assert list(scores) == [
        "forget_loss",
        "forget_loss_bypassed",
        "forget_recovery",
        "retain_loss",
        "retain_loss_bypassed",
        "has_switch",
    ]  # fmt: skip  (a codebook: no error-term scores)
    base = ctx_for(make_model("llama"))  # the same base weights, never bottlenecked
    assert scores["forget_loss_bypassed"] == heldout_loss(base, corpus=corpora["forget"], **SPLIT).scores["loss"]
    assert scores["retain_loss_bypassed"] == heldout_loss(base, corpus=corpora["retain"], **SPLIT).scores["loss"]
    assert scores["forget_loss"] == heldout_loss(ctx, corpus=corpora["forget"], **SPLIT).scores["loss"]
    assert scores["forget_loss"] != scores["forget_loss_bypassed"]  # the edits change the loss
    assert scores["forget_recovery"] == scores["forget_loss"] - scores["forget_loss_bypassed"]
    assert scores["has_switch"] == 1.0 and result.details[1]["switch"] == "disabled"
    assert torch.equal(logits(bmodel, tokens), edited)  # switched back on


def test_a_stock_model_has_no_switch(corpora):
    model = make_model("llama")
    assert switch_of(model) is None
    result = bypass_attack(ctx_for(model), forget_corpus=corpora["forget"], retain_corpora=[corpora["retain"]], **SPLIT)
    scores = result.scores
    assert scores["has_switch"] == 0.0 and scores["forget_recovery"] == 0.0
    assert scores["forget_loss_bypassed"] == scores["forget_loss"]
    assert scores["retain_loss_bypassed"] == scores["retain_loss"]
    assert "forget_loss_error_term" not in scores and "error_term_recovery" not in scores


def test_the_base_run_of_a_bottleneck_has_no_switch_and_stays_off(corpora):
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1], adapter_rank=2))
    with bmodel.disabled():  # how `eval --with_base` evaluates the base model of a bottleneck
        result = bypass_attack(ctx_for(bmodel), forget_corpus=corpora["forget"], **SPLIT)
        assert not any(w.enabled for w in bmodel.wrappers())
        assert all(layer.disable_adapters for layer in adapter_layers(bmodel.model))  # not switched back on either
    assert result.scores["has_switch"] == 0.0 and result.scores["forget_recovery"] == 0.0
    assert all(w.enabled for w in bmodel.wrappers())


def test_switched_off_restores_the_switch_after_an_error():
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1]))
    with pytest.raises(RuntimeError), switched_off(bmodel) as flipped:
        assert flipped and not bmodel.wrappers()[0].enabled
        raise RuntimeError("boom")
    assert bmodel.wrappers()[0].enabled


# ------------------------------------------------------------------------------------------------ error term


def clamped_sae_model() -> BottleneckedModel:
    """The context-free Llama with the hand-built SAE at layer 0, its topic feature clamped to -20."""
    model = context_free_model()
    bmodel = attach_sae(model, {0: topic_sae(model)})
    layers = {0: LayerCodes([0], scales=[1.0])}
    bmodel.apply_edit(
        Edit("topic", layers, "clamp", bottleneck_fingerprint=bmodel.fingerprint(), kind="sae", multiplier=-20.0)
    )
    return bmodel


def write_topic_corpus(path: Path, seed: int = 0) -> Path:
    """Documents where the topic token is frequent and followed by one fixed word."""
    rng = random.Random(seed)
    docs = []
    for _ in range(10):
        words: list[str] = []
        while len(words) < 60:
            words += [f"w{TOPIC}", "w20"] if rng.random() < 0.3 else [f"w{rng.randrange(30, 60)}"]
        docs.append(" ".join(words))
    path.write_text("\n".join(docs) + "\n")
    return path


def test_error_term_gradients_reach_the_states_only_through_the_error_term():
    bmodel = clamped_sae_model()
    bottleneck = bmodel.bottleneck(0)
    bottleneck.sae.requires_grad_(True)  # so that any gradient into the SAE would show
    emb = bmodel.model.model.embed_tokens.weight.detach()
    ids = torch.tensor([3, TOPIC, 9, TOPIC, 11])
    upstream = torch.randn(1, 5, HIDDEN, generator=torch.Generator().manual_seed(0))

    def backward(detached: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        bottleneck.sae.zero_grad(set_to_none=True)
        x = emb[ids][None].clone().requires_grad_(True)  # the states after layer 0 are the embeddings
        if detached:
            with bottleneck.error_term_gradients():
                y = bottleneck.quantize(x).output
        else:
            y = bottleneck.quantize(x).output
        (y * upstream).sum().backward()
        return y.detach(), x.grad, bottleneck.sae.W_enc.grad

    y_plain, grad_plain, enc_plain = backward(detached=False)
    y_detached, grad_detached, enc_detached = backward(detached=True)
    assert torch.equal(y_plain, y_detached)  # the clamp acts the same
    assert not torch.equal(y_plain[0, 1], emb[TOPIC])  # ... and it does act on the topic tokens
    assert torch.equal(grad_detached, upstream)  # d output / d states is the identity: the error term alone
    assert enc_detached is None and bottleneck.sae.W_dec.grad is None  # no gradient into the SAE
    # Without the hook the SAE path carries gradient (to the states at the topic tokens, and into the encoder).
    assert not torch.allclose(grad_plain[0, [1, 3]], upstream[0, [1, 3]])
    assert torch.equal(grad_plain[0, [0, 2, 4]], upstream[0, [0, 2, 4]])
    assert enc_plain is not None and enc_plain.abs().sum() > 0
    assert not bottleneck.error_term_gradients_only  # restored
    with (
        bmodel.splice("reconstruction"),
        pytest.raises(CodeunlearnError, match="no error term"),
        bottleneck.error_term_gradients(),
    ):
        pass


def test_error_term_attack_trains_only_the_layers_before_the_sae(tmp_path):
    bmodel = clamped_sae_model()
    chunks = make_tokens(8, SEQ, seed=1)
    attacked, trained = error_term_finetune(bmodel, chunks, steps=3, mode="full", learning_rate=1e-3)
    layer0 = sum(p.numel() for p in bmodel.model.model.layers[0].layer.parameters())  # the wrapped layer, no SAE
    assert trained == layer0  # the SAE is after layer 0: only layer 0 (embeddings, the SAE itself and later: never)
    original, changed = dict(bmodel.named_parameters()), dict(attacked.named_parameters())
    assert set(original) == set(changed)
    moved = {name for name in original if not torch.equal(original[name], changed[name])}
    assert moved and all(name.startswith("model.model.layers.0.layer.") for name in moved)
    assert [e.topic for e in attacked.edits] == ["topic"] and attacked.bottleneck(0).interventions
    _, trained = error_term_finetune(bmodel, chunks, steps=2, mode="lora")
    assert 0 < trained < layer0
    assert not any("lora_" in name for name, _ in bmodel.named_parameters())  # the original got no adapter


def test_error_term_attack_lowers_the_clamped_forget_loss(tmp_path):
    forget = str(write_topic_corpus(tmp_path / "forget.txt"))
    retain = str(write_words(tmp_path / "retain.txt", 2, range(60, 128)))
    bmodel = clamped_sae_model()
    before = state(bmodel)
    ctx = ctx_for(bmodel)
    result = bypass_attack(
        ctx, forget_corpus=forget, retain_corpora=[retain], seq_len=32, error_term_steps=20, error_term_mode="full",
        error_term_learning_rate=1e-3,
    )  # fmt: skip
    scores = result.scores
    assert scores["has_switch"] == 1.0 and scores["forget_recovery"] > 0  # the clamp raised the topic's loss
    assert scores["retain_loss"] == scores["retain_loss_bypassed"]  # no topic token in the retain text
    assert scores["error_term_recovery"] == scores["forget_loss"] - scores["forget_loss_error_term"]
    assert scores["error_term_recovery"] > 0  # with the clamp still on
    assert result.details[-1]["model"] == "error_term" and result.details[-1]["layers_trained"] == "0..0"
    assert unchanged(bmodel, before)
    # Spliced without its error term there is nothing to route through: no error-term scores.
    with bmodel.splice("reconstruction"):
        plain = bypass_attack(ctx, forget_corpus=forget, seq_len=32, error_term_steps=2)
    assert "error_term_recovery" not in plain.scores
    none = bypass_attack(ctx, forget_corpus=forget, seq_len=32, error_term_steps=0)
    assert "error_term_recovery" not in none.scores
    with pytest.raises(CodeunlearnError, match="error_term_steps"):
        bypass_attack(ctx, forget_corpus=forget, error_term_steps=-1)
    with pytest.raises(CodeunlearnError, match="unknown relearning mode"):
        bypass_attack(ctx, forget_corpus=forget, seq_len=32, error_term_mode="half")


# ------------------------------------------------------------------------------------------------ facts


def test_weight_attacks_rescore_held_out_facts(corpora, tmp_path):
    rows = [
        {"known_id": i, "subject": f"w{10 + i}", "attribute": f"w{50 + i}", "template": "{} is in",
         "prompt": f"w{10 + i} is in", "relation_id": "P30" if i % 2 else "P36", "prediction": ""}
        for i in range(6)
    ]  # fmt: skip
    facts = tmp_path / "facts.jsonl"
    facts.write_text("".join(json.dumps(row) + "\n" for row in rows))
    model = make_model("llama")
    ctx = ctx_for(model)
    top1 = fact_cloze(ctx, path=facts, relations=["P30"]).scores["top1"]
    common = {"forget_corpus": corpora["forget"], "facts_path": str(facts), "fact_relations": ["P30"], **SPLIT}
    bypass = bypass_attack(ctx, **common).scores
    assert bypass["facts_top1"] == bypass["facts_top1_bypassed"] == top1 and bypass["facts_recovery"] == 0.0
    quantized = quantization_attack(ctx, bits=[4], **common).scores
    work = copy.deepcopy(model)
    quantize_weights_(work, 4)
    at4 = fact_cloze(ctx_for(work), path=facts, relations=["P30"]).scores["top1"]
    assert quantized["facts_top1"] == top1 and quantized["facts_top1_4bit"] == at4
    assert quantized["facts_recovery_4bit"] == at4 - top1
    assert "retain_loss" not in quantized  # no retain corpora given


def test_the_fact_topic_suite_runs_the_weight_attacks_on_its_held_out_facts(tmp_path):
    from codeunlearn.evaluate.suite.config import load_suite_config
    from codeunlearn.evaluate.suite.fact_suite import write_fact_suite

    files = {"forget_train": "forget_train.jsonl", "probes_forget": "probes_forget.jsonl"}
    path = write_fact_suite(tmp_path, ["P30", "P36"], **files, probes_retain="probes_retain.jsonl")
    suite = load_suite_config(path)
    specs = {s.name: s for s in suite.specs(attacks=True)}
    for name, key in (("bypass", "facts_recovery"), ("quantization", "facts_recovery_4bit")):
        spec = specs[name]
        assert spec.group == "attack" and spec.key == key
        assert spec.params["forget_corpus"] == "./forget_train.jsonl"
        assert spec.params["facts_path"] == specs["geo_facts"].params["path"] == "./probes_forget.jsonl"
        assert spec.params["fact_relations"] == ["P30", "P36"] and spec.params["seq_len"] == 32
        assert suite.fast.metrics[name]["max_tokens"] == 1024
    assert suite.fast.metrics["bypass"]["error_term_steps"] == 5


# ------------------------------------------------------------------------------------------------ real model

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
HP_CORPUS = SHARED_DATA / "topics" / "harry_potter" / "corpus_wikipedia_plot_summaries.txt"


@pytest.mark.slow
@pytest.mark.skipif(not HP_CORPUS.is_file(), reason="needs ../shared/data beside the repository")
def test_quantizing_smollm2_costs_little_at_8_bits_and_more_at_4():
    """SmolLM2-135M: 8-bit per-channel weights leave the held-out loss almost where it was, 4-bit groups of 128
    raise it by a visible but bounded amount (what RTN does to a model this small)."""
    from codeunlearn.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("smollm2-135m")
    ctx = EvalContext(model, tokenizer, batch_size=4, progress=False)
    assert len(quantizable_linears(model)) == 30 * 7
    scores = quantization_attack(ctx, forget_corpus=str(HP_CORPUS), max_tokens=1024, seq_len=128).scores
    assert abs(scores["forget_recovery_8bit"]) < 0.02
    assert -1.0 < scores["forget_recovery_4bit"] < -abs(scores["forget_recovery_8bit"])  # 4 bits: loss goes up
