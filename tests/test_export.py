"""The exported directory is exactly the in-memory edited model: for every tiny architecture (plus LoRA adapters,
two stages and the block-output site) its reloaded logits equal the edited `BottleneckedModel`'s, an empty edit list
gives the unedited bottleneck and `bottleneck_enabled=False` the base model; generate with and without a KV cache,
left-padded batches, `dtype`/`torch_dtype`/`device_map`, and a load in a subprocess where codeunlearn is hidden."""

from __future__ import annotations

import json

import pytest
import torch
from export_helpers import PROBE, make_tokenizer, run_without_codeunlearn, text_of, topic_edits, trained_bmodel
from helpers import ARCHITECTURES, assert_fix_error, make_model, make_tokens
from safetensors.torch import load_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.remote_code import modeling_codeunlearn
from codeunlearn.export.save import BOTTLENECK_SUBDIR, save_pretrained

CASES = [(arch, {}) for arch in ARCHITECTURES] + [
    ("llama", {"adapter_rank": 2, "num_stages": 2}),
    ("gpt2", {"adapter_rank": 2}),  # LoRA on GPT-2's transposed Conv1D weights
    ("qwen2", {"site": "block_output"}),
]
IDS = [arch + "".join(f"-{k}={v}" for k, v in extra.items()) for arch, extra in CASES]
EXACT = 1e-5  # reloads reproduce the same fp32 operations; allow only rounding


def max_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def load(path, **kwargs):
    return AutoModelForCausalLM.from_pretrained(str(path), trust_remote_code=True, **kwargs).eval()


@pytest.fixture(scope="module", params=CASES, ids=IDS)
def exported(request, tmp_path_factory):
    """Per case: a trained bottleneck with two edits, exported edited and unedited, and the reference logits."""
    arch, extra = request.param
    root = tmp_path_factory.mktemp("export")
    bmodel = trained_bmodel(arch, root / "run", **extra)
    tokenizer = make_tokenizer()
    with torch.no_grad():
        unedited = bmodel(input_ids=PROBE).logits.clone()
        with bmodel.disabled():
            base = bmodel(input_ids=PROBE).logits.clone()
    save_pretrained(bmodel, root / "unedited", tokenizer)
    for edit in topic_edits(bmodel):
        bmodel.apply_edit(edit)
    with torch.no_grad():
        edited = bmodel(input_ids=PROBE).logits.clone()
    save_pretrained(bmodel, root / "edited", tokenizer)
    return {
        "arch": arch,
        "extra": extra,
        "bmodel": bmodel,
        "tokenizer": tokenizer,
        "root": root,
        "dir": root / "edited",
        "unedited_dir": root / "unedited",
        "base": base,
        "unedited": unedited,
        "edited": edited,
    }


def test_reloaded_export_equals_in_memory_edited_model(exported):
    assert max_difference(exported["edited"], exported["unedited"]) > 1e-3, "the edits must change the probe"
    model = load(exported["dir"])
    assert type(model).__name__ == "CodeunlearnForCausalLM"
    with torch.no_grad():
        assert max_difference(model(input_ids=PROBE).logits, exported["edited"]) <= EXACT
        other = make_tokens(3, 12, seed=11)  # tokens the export's own verification never saw
        expected = exported["bmodel"](input_ids=other).logits
        assert max_difference(model(input_ids=other).logits, expected) <= EXACT


def test_empty_edit_list_gives_unedited_bottleneck_and_disabled_gives_base(exported):
    unedited = load(exported["unedited_dir"])
    assert unedited.config.edits == []
    with torch.no_grad():
        assert max_difference(unedited(input_ids=PROBE).logits, exported["unedited"]) <= EXACT
    for path in (exported["unedited_dir"], exported["dir"]):
        base = load(path, bottleneck_enabled=False)
        with torch.no_grad():
            assert max_difference(base(input_ids=PROBE).logits, exported["base"]) <= 1e-6
    with torch.no_grad():
        fresh = make_model(exported["arch"])(input_ids=PROBE).logits  # the untouched base model
    assert max_difference(fresh, exported["base"]) == 0.0


def test_generate_with_and_without_kv_cache_equals_in_memory_greedy(exported):
    model, bmodel = load(exported["dir"]), exported["bmodel"]
    prompt = make_tokens(2, 5, seed=3)
    kwargs = {"max_new_tokens": 6, "do_sample": False, "pad_token_id": 0, "attention_mask": torch.ones_like(prompt)}
    cached = model.generate(prompt, use_cache=True, **kwargs)
    uncached = model.generate(prompt, use_cache=False, **kwargs)
    with torch.no_grad():
        reference = bmodel.model.generate(prompt, use_cache=True, **kwargs)
    assert cached.shape == (2, 11)
    assert torch.equal(cached, uncached)
    assert torch.equal(cached, reference)


def test_left_padded_batch_equals_unpadded_rows(exported):
    model = load(exported["dir"])
    long, short = make_tokens(1, 8, seed=4)[0], make_tokens(1, 5, seed=5)[0]
    pad = 1
    input_ids = torch.stack([long, torch.cat([torch.full((3,), pad), short])])
    attention_mask = torch.stack([torch.ones(8, dtype=torch.long), torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])])
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batched = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids).logits
        alone_long = model(input_ids=long[None]).logits[0]
        alone_short = model(input_ids=short[None]).logits[0]
    assert max_difference(batched[0], alone_long) <= 1e-4
    assert max_difference(batched[1, 3:], alone_short) <= 1e-4

    kwargs = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": pad}
    together = model.generate(input_ids, attention_mask=attention_mask, **kwargs)
    for row, prompt in enumerate((long, short)):
        single = model.generate(prompt[None], attention_mask=torch.ones(1, len(prompt), dtype=torch.long), **kwargs)
        assert torch.equal(together[row, 8:], single[0, len(prompt) :])


def test_without_trust_remote_code_no_stock_model_is_loaded(exported):
    """The reason for our own model_type: transformers must not fall back to the stock class of the base model."""
    with pytest.raises(ValueError, match="trust_remote_code"):
        AutoModelForCausalLM.from_pretrained(str(exported["dir"]), trust_remote_code=False)


def test_directory_layout_config_and_weights(exported):
    path, bmodel = exported["dir"], exported["bmodel"]
    names = {p.name for p in path.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "modeling_codeunlearn.py",
        "generation_config.json",
        "README.md",
    } <= names
    assert {"tokenizer.json", "tokenizer_config.json", BOTTLENECK_SUBDIR} <= names
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in names)
    config = json.loads((path / "config.json").read_text())
    assert config["model_type"] == "codeunlearn"
    assert config["base_model_type"] == config["base_config"]["model_type"] == exported["arch"]
    assert config["auto_map"] == {
        "AutoConfig": "modeling_codeunlearn.CodeunlearnConfig",
        "AutoModelForCausalLM": "modeling_codeunlearn.CodeunlearnForCausalLM",
    }
    assert [e["topic"] for e in config["edits"]] == ["wizards", "dragons"]
    assert [e["intervention"] for e in config["edits"]] == ["substitute", "exclude"]
    assert config["edits"][0]["layers"]["0"]["codes"] == bmodel.edits[0].layers[0].codes
    assert config["bottleneck"]["layers"] == [0, 2]

    tensors = load_file(str(path / "model.safetensors"))
    # The base weights are stored unchanged under their stock names.
    base_state = make_model(exported["arch"]).state_dict()
    stored = {k.removeprefix("causal_lm."): v for k, v in tensors.items() if k.startswith("causal_lm.")}
    assert set(stored) <= set(base_state)
    assert all(torch.equal(stored[k], base_state[k]) for k in stored)
    # The masks are exactly the ones the config's edit list implies.
    for layer in bmodel.layers:
        bottleneck = bmodel.bottleneck(layer)
        for mask in ("excluded", "substituted"):
            assert torch.equal(tensors[f"bottlenecks.{layer}.{mask}"], getattr(bottleneck, mask))
    flat = tensors["bottlenecks.0.substituted"].flatten().nonzero().flatten().tolist()
    assert sorted(flat) == sorted(config["edits"][0]["layers"]["0"]["codes"])
    flat = tensors["bottlenecks.2.excluded"].flatten().nonzero().flatten().tolist()
    assert sorted(flat) == sorted(config["edits"][1]["layers"]["2"]["codes"])


def test_codeunlearn_bottleneck_subdir_reloads_the_same_edits(exported):
    reloaded = BottleneckedModel.from_pretrained(make_model(exported["arch"]), exported["dir"] / BOTTLENECK_SUBDIR)
    assert [e.topic for e in reloaded.edits] == ["wizards", "dragons"]
    with torch.no_grad():
        assert max_difference(reloaded(input_ids=PROBE).logits, exported["edited"]) == 0.0


def test_remote_code_imports_only_torch_and_transformers_and_knows_every_architecture():
    import ast
    from pathlib import Path

    from codeunlearn.bottleneck.architectures import DECODER_LAYER_PATHS

    source = Path(modeling_codeunlearn.__file__).read_text()
    imported = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add((node.module or "").split(".")[0])
    assert imported <= {"__future__", "functools", "typing", "torch", "transformers"}
    assert modeling_codeunlearn.DECODER_LAYER_PATHS == DECODER_LAYER_PATHS


@pytest.fixture(scope="module")
def llama_export(tmp_path_factory):
    """One edited single-stage Llama export for the dtype, device-map and subprocess tests."""
    root = tmp_path_factory.mktemp("llama-export")
    bmodel = trained_bmodel("llama", root / "run")
    for edit in topic_edits(bmodel):
        bmodel.apply_edit(edit)
    save_pretrained(bmodel, root / "export", make_tokenizer())
    with torch.no_grad():
        logits = bmodel(input_ids=PROBE).logits.clone()
    return {"bmodel": bmodel, "dir": root / "export", "logits": logits}


@pytest.mark.parametrize("argument", ["dtype", "torch_dtype"])
def test_bfloat16_load_keeps_the_search_in_fp32(llama_export, argument):
    model = load(llama_export["dir"], **{argument: torch.bfloat16})
    assert model.causal_lm.lm_head.weight.dtype == torch.bfloat16
    assert all(t.dtype in (torch.float32, torch.bool) for t in model.bottlenecks.buffers())
    # The in-memory reference: a bf16 base model with the bottleneck (fp32, as codeunlearn keeps it) attached.
    reference = BottleneckedModel.from_pretrained(
        make_model("llama").to(torch.bfloat16), llama_export["dir"] / BOTTLENECK_SUBDIR
    )
    with torch.no_grad():
        got = model(input_ids=PROBE).logits
        expected = reference(input_ids=PROBE).logits
    assert got.dtype == torch.bfloat16
    assert max_difference(got, expected) <= 1e-2
    assert max_difference(got, llama_export["logits"]) <= 0.05  # bf16 vs fp32: close, not equal


@pytest.mark.parametrize("device_map", ["cpu", "auto"])
def test_device_map(llama_export, device_map):
    model = load(llama_export["dir"], device_map=device_map)
    assert {p.device.type for p in model.parameters()} == {"cpu"}
    with torch.no_grad():
        assert max_difference(model(input_ids=PROBE).logits, llama_export["logits"]) <= EXACT


def test_loads_and_generates_where_codeunlearn_is_not_installed(llama_export, tmp_path):
    prompt = PROBE[0, :6]
    script = f"""
    import json
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import codeunlearn  # noqa: F401
        raise SystemExit("codeunlearn is importable")
    except ModuleNotFoundError:
        pass
    path = {str(llama_export["dir"])!r}
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True)
    inputs = tokenizer({text_of(prompt)!r}, return_tensors="pt")
    with torch.no_grad():
        logits = model(**inputs).logits
    generated = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    loaded = sorted(name for name in __import__("sys").modules if name.startswith("codeunlearn"))
    print()
    print(json.dumps({{"ids": inputs["input_ids"][0].tolist(), "logits": logits[0].tolist(),
                      "text": tokenizer.decode(generated[0]), "generated": generated[0].tolist(),
                      "class": type(model).__name__, "codeunlearn_modules": loaded}}))
    """
    result = run_without_codeunlearn(script, cwd=tmp_path)
    assert result["codeunlearn_modules"] == []
    assert result["class"] == "CodeunlearnForCausalLM"
    assert result["ids"] == prompt.tolist()
    bmodel = llama_export["bmodel"]
    with torch.no_grad():
        expected = bmodel(input_ids=prompt[None]).logits[0]
        reference = bmodel.model.generate(prompt[None], max_new_tokens=5, do_sample=False, pad_token_id=1)
    assert max_difference(torch.tensor(result["logits"]), expected) <= EXACT
    assert result["generated"] == reference[0].tolist()
    assert result["text"].split()[:6] == text_of(prompt).split()


def test_config_round_trips_through_auto_config(llama_export):
    config = AutoConfig.from_pretrained(str(llama_export["dir"]), trust_remote_code=True)
    assert config.model_type == "codeunlearn"
    assert config.base_config.model_type == "llama"
    assert config.get_text_config() is config.base_config
    assert config.vocab_size == 128 and config.max_position_embeddings == 64
    tokenizer = AutoTokenizer.from_pretrained(str(llama_export["dir"]))
    assert tokenizer.convert_tokens_to_ids("w5") == 5


def test_verify_rejects_an_export_of_another_model(llama_export, tmp_path):
    """The check `save_pretrained` runs before moving a directory into place fails where it should."""
    import shutil

    from codeunlearn.bottleneck.edit import Edit, LayerCodes
    from codeunlearn.export.save import verify_export

    bmodel = llama_export["bmodel"]
    assert verify_export(bmodel, llama_export["dir"]).max_abs_difference <= EXACT
    extra = Edit("more", {2: LayerCodes(list(range(0, 64, 2)))}, "substitute")  # half of every head's codes
    with bmodel.edited(extra), pytest.raises(CodeunlearnError) as excinfo:
        verify_export(bmodel, llama_export["dir"])
    assert_fix_error(excinfo)
    assert "differs from the in-memory edited model" in str(excinfo.value)

    tampered = tmp_path / "tampered"
    shutil.copytree(llama_export["dir"], tampered)
    with open(tampered / "modeling_codeunlearn.py", "a") as handle:
        handle.write("\n# changed\n")
    with pytest.raises(CodeunlearnError) as excinfo:
        verify_export(bmodel, tampered)
    assert "does not load as the edited model" in str(excinfo.value)


# ------------------------------------------------------------------------------------------------ bad input


class FailingTokenizer:
    """A tokenizer whose save fails midway (a full disk), to show the old export survives."""

    def save_pretrained(self, path):
        raise OSError("No space left on device")


def test_existing_directory_refused_unless_overwrite_and_then_replaced_atomically(llama_export, tmp_path):
    bmodel = llama_export["bmodel"]
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    with pytest.raises(CodeunlearnError) as excinfo:
        save_pretrained(bmodel, out, make_tokenizer())
    assert_fix_error(excinfo)
    assert "--overwrite" in str(excinfo.value)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]

    with pytest.raises(OSError, match="No space"):
        save_pretrained(bmodel, out, FailingTokenizer(), overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]  # a failed overwrite keeps the old contents
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # and leaves no temporary directory behind

    save_pretrained(bmodel, out, make_tokenizer(), overwrite=True)
    assert not (out / "keep.txt").exists()
    assert (out / "model.safetensors").is_file()


def test_missing_tokenizer_and_bad_eval_report_are_one_line_errors(llama_export, tmp_path):
    bmodel = llama_export["bmodel"]
    with pytest.raises(CodeunlearnError) as excinfo:
        save_pretrained(bmodel, tmp_path / "a", None)
    assert_fix_error(excinfo)
    assert "tokenizer" in str(excinfo.value)
    bad = tmp_path / "report.json"
    bad.write_text('{"no": "rows"}')
    with pytest.raises(CodeunlearnError) as excinfo:
        save_pretrained(bmodel, tmp_path / "b", make_tokenizer(), eval_report=bad)
    assert_fix_error(excinfo)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_untrained_bottleneck_is_refused(tmp_path):
    from helpers import tiny_config

    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1]))
    with pytest.raises(CodeunlearnError) as excinfo:
        save_pretrained(bmodel, tmp_path / "out", make_tokenizer())
    assert_fix_error(excinfo)
    assert not (tmp_path / "out").exists()
