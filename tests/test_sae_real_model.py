"""SAE bottlenecks on the real SmolLM2-135M (shipped GGUF): run with `pytest -m slow tests/test_sae_real_model.py`."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_args

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import pack_documents
from codeunlearn.kinds.sae import attach_sae
from codeunlearn.kinds.sae.config import SAEConfig
from codeunlearn.train import train_bottleneck
from codeunlearn.unlearn.guardrail import calibrate_guardrail
from codeunlearn.unlearn.selection import SelectionRule, select_codes
from codeunlearn.unlearn.statistics import collect_code_statistics

pytestmark = pytest.mark.slow

LAYER = 15
BIOLOGY = [
    "Bacteria divide by binary fission, and some form endospores that survive boiling and drying.",
    "The virus attaches to receptors on the host cell and injects its genome into the cytoplasm.",
    "Antibodies produced by plasma cells bind antigens on the surface of the invading pathogen.",
] * 4
OTHER = [
    "The colonists protested the Stamp Act, and the assemblies sent petitions to Parliament.",
    "The railroad reached the western territories, and new towns grew along the line.",
    "The treaty ended the war and redrew the borders of several European states.",
] * 4


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    from codeunlearn.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("smollm2-135m")
    biology = pack_documents(BIOLOGY, tokenizer, seq_len=24)
    other = pack_documents(OTHER, tokenizer, seq_len=24)
    probe = torch.cat([biology[:1], other[:1]])
    with torch.no_grad():
        base_logits = model(input_ids=probe, use_cache=False).logits.clone()
    config = SAEConfig(layers=[LAYER], sae_width=1152, sae_k=16)
    bmodel = BottleneckedModel.attach(model, config)
    out = tmp_path_factory.mktemp("sae-real")
    args = tiny_args(out, sae_steps=3, batch_size=4, kmeans_init_tokens=192, sae_learning_rate=1e-3)
    metrics = train_bottleneck(bmodel, torch.cat([biology, other]), args)
    return {"model": model, "bmodel": bmodel, "biology": biology, "other": other, "probe": probe,
            "base_logits": base_logits, "metrics": metrics, "dir": out / "bottleneck"}  # fmt: skip


def logits(model, tokens):
    with torch.no_grad():
        return model(input_ids=tokens, use_cache=False).logits


def test_trained_sae_keeps_the_base_model_and_saves_for_sae_lens(real):
    from sae_lens import SAE

    bmodel = real["bmodel"]
    assert [r["phase"] for r in real["metrics"]] == ["sae"] * 3
    assert all(r["l0"] == pytest.approx(16.0) and 0.0 < r["fvu"] < 2.0 for r in real["metrics"])
    assert bmodel.config.hidden_size == 576 and bmodel.config.num_hidden_layers == 30
    assert torch.equal(logits(bmodel, real["probe"]), real["base_logits"])  # error term: nothing changes
    with bmodel.splice("reconstruction"):
        assert not torch.allclose(logits(bmodel, real["probe"]), real["base_logits"], atol=1e-3)
    sae = SAE.load_from_disk(real["dir"] / f"layer_{LAYER}")
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.metadata.hook_name) == (576, 1152, f"blocks.{LAYER}.hook_resid_post")


def test_statistics_stop_at_layer_15_and_edits_act(real):
    bmodel, model = real["bmodel"], real["model"]
    later = []
    hooks = [
        decoder_layers(model)[LAYER + 1].register_forward_hook(lambda *a: later.append(LAYER + 1)),
        model.lm_head.register_forward_hook(lambda *a: later.append("lm_head")),
    ]
    try:
        forget = collect_code_statistics(
            bmodel, real["biology"], batch_size=4, corpus="bio", progress=False, bf16=False
        )
        retain = collect_code_statistics(
            bmodel, real["other"], batch_size=4, corpus="other", progress=False, bf16=False
        )
    finally:
        for hook in hooks:
            hook.remove()
    assert later == []
    assert forget.kind == "sae" and forget.tokens[LAYER] > 0
    rule = SelectionRule(num_codes=16, min_forget_count=1, score="mean_activation_difference")
    edit = select_codes(forget, retain, rule, "bio", multiplier=-10.0)
    bmodel.apply_edit(edit)
    edited = logits(bmodel, real["probe"])
    assert torch.isfinite(edited).all() and not torch.allclose(edited, real["base_logits"], atol=1e-3)
    guard = calibrate_guardrail(bmodel, edit, real["other"], window=8, target_fpr=0.1)
    assert guard.guardrail.calibration["fpr"][LAYER] <= 0.1
    bmodel.clear_edits()
    assert torch.equal(logits(bmodel, real["probe"]), real["base_logits"])


def test_saved_sae_directory_attaches_by_its_hook_name(real):
    """Last in the module: it takes the trained SAE off the shared model."""
    bmodel = real["bmodel"]
    model = bmodel.detach()
    attached = attach_sae(model, real["dir"] / f"layer_{LAYER}")
    assert attached.layers == [LAYER] and attached.fingerprint() == bmodel.fingerprint()
    assert torch.equal(logits(attached, real["probe"]), real["base_logits"])
    attached.detach()
