"""The real SmolLM2-135M (shipped GGUF, ~1 minute to load on a busy 2-core machine): run with `pytest -m slow`."""

from __future__ import annotations

import pytest
import torch
from helpers import tiny_args

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import pack_documents
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.train import train_bottleneck
from codeunlearn.unlearn.statistics import collect_code_statistics

pytestmark = pytest.mark.slow

LAYER = 15  # middle of 30
TEXT = [
    "The cathedral was built in the twelfth century and restored after the fire of 1834.",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "The striker scored twice in the second half, and the home side won the cup.",
    "To bake bread, mix flour, water, salt and yeast, then let the dough rise overnight.",
    "The treaty ended the war and redrew the borders of several European states.",
    "Neurons transmit signals across synapses using chemical messengers.",
] * 4


@pytest.fixture(scope="module")
def real():
    from codeunlearn.modeling import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("smollm2-135m")
    chunks = pack_documents(TEXT, tokenizer, seq_len=24)
    probe = chunks[:2]
    with torch.no_grad():
        base_logits = model(input_ids=probe, use_cache=False).logits.clone()
    bmodel = BottleneckedModel.attach(
        model, CodebookConfig(layers=[LAYER], num_heads=8, codebook_size=32, num_stages=2)
    )
    return {"model": model, "bmodel": bmodel, "chunks": chunks, "probe": probe, "base_logits": base_logits}


def test_disabled_bottleneck_gives_base_logits(real):
    bmodel = real["bmodel"]
    assert bmodel.config.hidden_size == 576 and bmodel.config.num_hidden_layers == 30
    with torch.no_grad(), bmodel.disabled():
        assert torch.equal(bmodel(input_ids=real["probe"], use_cache=False).logits, real["base_logits"])


def test_short_training_runs(real, tmp_path):
    bmodel = real["bmodel"]
    args = tiny_args(tmp_path, key_steps=3, value_steps=2, batch_size=2, kmeans_init_tokens=192)
    metrics = train_bottleneck(bmodel, real["chunks"], args)
    assert [r["phase"] for r in metrics] == ["keys"] * 3 + ["values"] * 2
    assert 0.0 < metrics[0]["fit_fvu"] < 1.0  # the k-means fit, on the states it was fitted to
    assert all(0.0 < r["fvu"] < 1.0 for r in metrics[1:])
    assert metrics[-1]["ppl_ratio"] > 0.5
    with torch.no_grad():
        logits = bmodel(input_ids=real["probe"], use_cache=False).logits
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits, real["base_logits"])
    with torch.no_grad(), bmodel.disabled():
        assert torch.equal(bmodel(input_ids=real["probe"], use_cache=False).logits, real["base_logits"])


def test_statistics_stop_at_the_deepest_bottleneck(real):
    bmodel, model = real["bmodel"], real["model"]
    if not bool(bmodel.bottleneck(LAYER).initialized):
        pytest.skip("needs the bottleneck trained by test_short_training_runs")
    later, reached = [], []
    hooks = [
        decoder_layers(model)[LAYER + 1].register_forward_hook(lambda *a: later.append(LAYER + 1)),
        model.lm_head.register_forward_hook(lambda *a: later.append("lm_head")),
        bmodel.wrappers()[0].layer.register_forward_hook(lambda *a: reached.append(LAYER)),
    ]
    try:
        chunks = real["chunks"][:4]
        stats = collect_code_statistics(bmodel, chunks, batch_size=2, progress=False, bf16=False)
    finally:
        for hook in hooks:
            hook.remove()
    assert later == []
    assert reached == [LAYER, LAYER]
    tokens = stats.tokens[LAYER]
    assert 0 < tokens <= chunks.numel() - len(chunks)  # position 0 (and rare massive tokens) are not counted
    assert int(stats.counts[LAYER].sum()) == tokens * 8 * 2  # one code per head and stage
