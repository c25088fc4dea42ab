"""Attaching bottlenecks to every supported family: disabled = base model bit for bit, training never touches the
base weights, detach restores the original layers, and incremental decoding with a KV cache quantizes new tokens."""

from __future__ import annotations

import pytest
import torch
from helpers import ARCHITECTURES, assert_fix_error, make_model, make_tokens, tiny_args, tiny_config

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.model import BottleneckedModel, BottleneckLayer
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.codebook.config import CodebookConfig
from codeunlearn.train import train_bottleneck

PROBE = make_tokens(2, 10, seed=7)


@pytest.fixture(scope="module", params=ARCHITECTURES)
def trained_arch(request, tmp_path_factory):
    """Per architecture: the base model's logits and weights, and a bottleneck trained a few steps on it."""
    arch = request.param
    model = make_model(arch)
    with torch.no_grad():
        base_logits = model(input_ids=PROBE).logits.clone()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    original_layers = list(decoder_layers(model))

    bmodel = BottleneckedModel.attach(model, tiny_config(layers=[0, 2]))
    for index in (0, 2):
        assert isinstance(decoder_layers(model)[index], BottleneckLayer)
    assert decoder_layers(model)[1] is original_layers[1]
    with torch.no_grad(), bmodel.disabled():
        disabled_before = model(input_ids=PROBE).logits.clone()

    out = tmp_path_factory.mktemp(f"train-{arch}")
    train_bottleneck(bmodel, make_tokens(24, 10, seed=1), tiny_args(out, key_steps=2, value_steps=2))
    with torch.no_grad(), bmodel.disabled():
        disabled_after = model(input_ids=PROBE).logits.clone()
    with torch.no_grad():
        bottlenecked = bmodel(input_ids=PROBE).logits.clone()
    grads_off = all(not p.requires_grad for p in model.parameters())
    restored = bmodel.detach()
    return {
        "arch": arch,
        "base_logits": base_logits,
        "base_state": base_state,
        "original_layers": original_layers,
        "model": model,
        "restored": restored,
        "disabled_before": disabled_before,
        "disabled_after": disabled_after,
        "bottlenecked": bottlenecked,
        "grads_off": grads_off,
        "saved": out / "bottleneck",
    }


def test_disabled_bottleneck_is_bit_identical_to_base(trained_arch):
    assert torch.equal(trained_arch["disabled_before"], trained_arch["base_logits"])
    assert torch.equal(trained_arch["disabled_after"], trained_arch["base_logits"])


def test_trained_bottleneck_changes_logits(trained_arch):
    bottlenecked, base = trained_arch["bottlenecked"], trained_arch["base_logits"]
    assert bottlenecked.shape == base.shape
    assert torch.isfinite(bottlenecked).all()
    assert not torch.allclose(bottlenecked, base)


def test_training_leaves_base_weights_untouched(trained_arch):
    assert trained_arch["grads_off"]
    after = trained_arch["model"].state_dict()
    before = trained_arch["base_state"]
    assert sorted(after) == sorted(before)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert changed == []


def test_detach_restores_original_layers(trained_arch):
    model = trained_arch["model"]
    assert trained_arch["restored"] is model
    layers = decoder_layers(model)
    assert len(layers) == len(trained_arch["original_layers"])
    for layer, original in zip(layers, trained_arch["original_layers"], strict=True):
        assert layer is original
        assert not isinstance(layer, BottleneckLayer)
    with torch.no_grad():
        assert torch.equal(model(input_ids=PROBE).logits, trained_arch["base_logits"])


def test_generate_with_kv_cache_quantizes_new_tokens(trained_arch):
    bmodel = BottleneckedModel.from_pretrained(make_model(trained_arch["arch"]), trained_arch["saved"])
    prompt = make_tokens(2, 5, seed=3)
    calls: dict[int, list[torch.Tensor]] = {0: [], 2: []}

    def observe(layer, states, result):
        calls[layer].append(result.codes.clone())

    new_tokens = 4
    kwargs = {
        "max_new_tokens": new_tokens,
        "do_sample": False,
        "pad_token_id": 0,
        "attention_mask": torch.ones_like(prompt),
    }
    with torch.no_grad(), bmodel.observing(observe):
        cached = bmodel.model.generate(prompt, use_cache=True, **kwargs)
    assert cached.shape == (2, 5 + new_tokens)
    assert torch.equal(cached[:, :5], prompt)
    for layer in (0, 2):
        prefill, *steps = calls[layer]
        assert prefill.shape == (2, 5, 1, 4)
        assert (prefill[:, 0] == -1).all()  # attention sink
        assert (prefill[:, 1:] >= 0).all()
        assert len(steps) == new_tokens - 1
        for codes in steps:
            assert codes.shape == (2, 1, 1, 4)
            assert (codes >= 0).all(), "a token decoded at position > 0 was left unquantized"

    # Incremental decoding must quantize each token as a full forward over the same sequence does.
    full: dict[int, list[torch.Tensor]] = {0: [], 2: []}
    with torch.no_grad(), bmodel.observing(lambda layer, s, r: full[layer].append(r.codes.clone())):
        bmodel(input_ids=cached[:, :-1], use_cache=False)
    for layer in (0, 2):
        assert torch.equal(torch.cat(calls[layer], dim=1), full[layer][0])

    with torch.no_grad():
        uncached = bmodel.model.generate(prompt, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_untrained_bottleneck_refuses_to_run():
    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1]))
    with pytest.raises(CodeunlearnError) as excinfo, torch.no_grad():
        bmodel(input_ids=PROBE)
    assert_fix_error(excinfo)
    with torch.no_grad(), bmodel.disabled():
        bmodel(input_ids=PROBE)  # the base model still runs


def test_attach_twice_is_refused_without_touching_other_layers():
    model = make_model("llama")
    first = BottleneckedModel.attach(model, tiny_config(layers=[1]))
    wrapper = decoder_layers(model)[1]
    with pytest.raises(CodeunlearnError) as excinfo:
        BottleneckedModel.attach(model, tiny_config(layers=[0, 1]))
    assert_fix_error(excinfo)
    layers = decoder_layers(model)
    assert not isinstance(layers[0], BottleneckLayer)  # no half-attached bottleneck at layer 0
    assert layers[1] is wrapper and not isinstance(layers[1].layer, BottleneckLayer)
    first.detach()
    BottleneckedModel.attach(model, tiny_config(layers=[0, 1]))  # after detach() it is accepted


def test_attach_records_model_facts():
    bmodel = BottleneckedModel.attach(make_model("gpt2", num_layers=4), tiny_config(layers=[3, 1]))
    config = bmodel.config
    assert config.layers == [1, 3]
    assert (config.hidden_size, config.num_hidden_layers, config.model_type) == (32, 4, "gpt2")
    assert config.head_dim == 8
    assert sorted(bmodel.bottlenecks) == ["1", "3"]


def test_block_output_site_quantizes_what_the_layer_writes(tmp_path):
    model = make_model("qwen2")
    with torch.no_grad():
        base_logits = model(input_ids=PROBE).logits.clone()
    bmodel = BottleneckedModel.attach(model, tiny_config(layers=[1], site="block_output"))
    train_bottleneck(bmodel, make_tokens(24, 10, seed=1), tiny_args(tmp_path, key_steps=2, value_steps=1))
    wrapper = bmodel.wrappers()[0]
    seen = {}

    def inner_hook(module, args, output):
        seen["input"], seen["update"] = args[0], (output[0] if isinstance(output, tuple) else output) - args[0]

    def outer_hook(module, args, output):
        seen["wrapper_output"] = output[0] if isinstance(output, tuple) else output

    hooks = [wrapper.layer.register_forward_hook(inner_hook), wrapper.register_forward_hook(outer_hook)]
    try:
        with torch.no_grad(), bmodel.observing(lambda layer, states, result: seen.update(states=states, result=result)):
            bottlenecked = bmodel(input_ids=PROBE).logits
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.equal(seen["states"], seen["update"])
    assert torch.equal(seen["wrapper_output"], seen["result"].output + seen["input"])
    assert not torch.allclose(bottlenecked, base_logits)
    with torch.no_grad(), bmodel.disabled():
        assert torch.equal(bmodel(input_ids=PROBE).logits, base_logits)


def test_downstream_adapters_keep_disabled_equal_to_base_and_detach_cleanly(tmp_path):
    pytest.importorskip("peft")
    if "adapter_rank" not in CodebookConfig.__dataclass_fields__:
        pytest.skip("this version has no downstream adapters")
    model = make_model("llama")
    with torch.no_grad():
        base_logits = model(input_ids=PROBE).logits.clone()
    base_state = {k: v.clone() for k, v in model.state_dict().items()}
    bmodel = BottleneckedModel.attach(model, tiny_config(layers=[0], adapter_rank=2))
    assert bmodel.adapter_parameters()  # LoRA on the layers after the bottleneck
    train_bottleneck(bmodel, make_tokens(24, 10, seed=1), tiny_args(tmp_path, key_steps=2, value_steps=3))
    lora_b = [p for name, p in bmodel.adapter_parameters().items() if "lora_B" in name]
    assert lora_b and any(p.abs().sum() > 0 for p in lora_b)  # B starts at zero: nonzero means the adapters trained
    with torch.no_grad(), bmodel.disabled():
        assert torch.equal(model(input_ids=PROBE).logits, base_logits)
    with torch.no_grad():
        bottlenecked = bmodel(input_ids=PROBE).logits.clone()

    loaded = BottleneckedModel.from_pretrained(make_model("llama"), tmp_path / "bottleneck")
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=PROBE).logits, bottlenecked)

    restored = bmodel.detach()
    assert sorted(restored.state_dict()) == sorted(base_state)
    assert all(torch.equal(v, base_state[k]) for k, v in restored.state_dict().items())
    with torch.no_grad():
        assert torch.equal(restored(input_ids=PROBE).logits, base_logits)


def test_adapters_are_drawn_from_the_config_seed_and_leave_the_global_generator_alone():
    """Two attaches of one config give the same LoRA A matrices (processes of a data-parallel run must start from
    the same adapters), another seed gives others, and the global random stream is where it was."""

    def adapters(model: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
        bmodel = BottleneckedModel.attach(model, tiny_config(layers=[1], adapter_rank=2, seed=seed))
        return {name: p.detach().clone() for name, p in bmodel.adapter_parameters().items()}

    models = [make_model() for _ in range(3)]  # (make_model seeds the global generator itself)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = adapters(models[0], 0)
    assert torch.equal(torch.rand(3), expected_next)
    second, other = adapters(models[1], 0), adapters(models[2], 1)
    a_names = [name for name in first if "lora_A" in name]
    assert a_names and first.keys() == second.keys()
    assert all(torch.equal(first[name], second[name]) for name in first)
    assert all(not torch.equal(first[name], other[name]) for name in a_names)
