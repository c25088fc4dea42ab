"""Bad input fails with one CodeunlearnError line that names the fix, and never damages what is already saved."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from helpers import assert_fix_error, make_model, make_tokens, tiny_config

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.bottleneck.config import CONFIG_NAME, BottleneckConfig
from codeunlearn.bottleneck.edit import Edit, LayerCodes
from codeunlearn.bottleneck.model import WEIGHTS_NAME, BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.io import atomic_directory, load_tensors
from codeunlearn.unlearn.statistics import CodeStatistics


def snapshot(directory) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def raises_fix(call, *args, **kwargs) -> str:
    with pytest.raises(CodeunlearnError) as excinfo:
        call(*args, **kwargs)
    assert_fix_error(excinfo)
    return str(excinfo.value)


# ------------------------------------------------------------------------------------------------ attaching
@pytest.mark.parametrize("layers", [[3], [-1], [0, 7]], ids=["one-past-the-end", "negative", "far-out"])
def test_wrong_layer_index(layers):
    model = make_model("llama")
    message = raises_fix(BottleneckedModel.attach, model, tiny_config(layers=layers))
    assert "[0, 2]" in message  # names the valid range
    assert not any(type(layer).__name__ == "BottleneckLayer" for layer in decoder_layers(model))


def test_duplicate_and_missing_layers():
    raises_fix(BottleneckedModel.attach, make_model("llama"), tiny_config(layers=[1, 1]))
    raises_fix(BottleneckedModel.attach, make_model("llama"), tiny_config(layers=[]))


def test_unknown_architecture():
    model = make_model("bloom")
    assert model.config.model_type == "bloom"
    message = raises_fix(BottleneckedModel.attach, model, tiny_config(layers=[1]))
    assert "bloom" in message and "DECODER_LAYER_PATHS" in message


def test_headless_model_is_refused():
    base = make_model("llama").model  # LlamaModel: no LM head, and no `model.layers` path
    raises_fix(BottleneckedModel.attach, base, tiny_config(layers=[1]))
    raises_fix(BottleneckedModel.attach, torch.nn.Linear(2, 2), tiny_config(layers=[0]))


def test_num_heads_must_divide_hidden_size():
    message = raises_fix(BottleneckedModel.attach, make_model("llama"), tiny_config(num_heads=5))
    assert "32" in message and "num_heads=5" in message


@pytest.mark.parametrize(
    "overrides",
    [{"num_heads": 0}, {"codebook_size": 0}, {"num_stages": 0}, {"site": "attention"}, {"kind": "rvq"}],
    ids=lambda o: next(iter(o)),
)
def test_bad_bottleneck_config(overrides):
    raises_fix(BottleneckConfig.from_dict, {"layers": [0], **overrides})


def test_bad_config_files(tmp_path):
    raises_fix(BottleneckConfig.from_json_file, tmp_path / CONFIG_NAME)
    (tmp_path / CONFIG_NAME).write_text("{ not json")
    raises_fix(BottleneckConfig.from_json_file, tmp_path / CONFIG_NAME)
    raises_fix(BottleneckConfig.from_dict, {"layers": [1], "heads": 4})


# ------------------------------------------------------------------------------------------------ loading
@pytest.mark.parametrize(
    ("arch", "num_layers", "hidden", "what"),
    [
        ("llama", 4, 64, "hidden size"),
        ("llama", 3, 32, "layers"),
        ("gpt2", 4, 32, "model_type"),
    ],
)
def test_loading_onto_another_model(trained_dir, arch, num_layers, hidden, what):
    model = make_model(arch, num_layers=num_layers, hidden=hidden)
    message = raises_fix(BottleneckedModel.from_pretrained, model, trained_dir)
    assert what in message
    assert not any(type(layer).__name__ == "BottleneckLayer" for layer in decoder_layers(model))


@pytest.mark.parametrize(
    "damage",
    [
        lambda p: p.write_bytes(b"\x00\xff garbage, not a safetensors file \x13\x37" * 8),
        lambda p: p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2]),  # a save cut off halfway
        lambda p: p.write_bytes(b""),
        lambda p: p.unlink(),
    ],
    ids=["garbage", "truncated", "empty", "missing"],
)
def test_corrupt_weights(trained_dir, tmp_path, damage):
    copy = tmp_path / "bottleneck"
    shutil.copytree(trained_dir, copy)
    damage(copy / WEIGHTS_NAME)
    model = make_model("llama", num_layers=4)
    raises_fix(BottleneckedModel.from_pretrained, model, copy)
    assert not any(type(layer).__name__ == "BottleneckLayer" for layer in decoder_layers(model))


def test_weights_that_do_not_match_their_config(trained_dir, tmp_path):
    copy = tmp_path / "bottleneck"
    shutil.copytree(trained_dir, copy)
    config = json.loads((copy / CONFIG_NAME).read_text())
    config["codebook_size"] = 8
    (copy / CONFIG_NAME).write_text(json.dumps(config))
    raises_fix(BottleneckedModel.from_pretrained, make_model("llama", num_layers=4), copy)
    config["codebook_size"], config["layers"] = 16, [1, 3]  # layer 3 has no weights
    (copy / CONFIG_NAME).write_text(json.dumps(config))
    raises_fix(BottleneckedModel.from_pretrained, make_model("llama", num_layers=4), copy)
    config["layers"] = [1]  # layer 2's weights would be dropped without a word
    (copy / CONFIG_NAME).write_text(json.dumps(config))
    assert "[1]" in raises_fix(BottleneckedModel.from_pretrained, make_model("llama", num_layers=4), copy)


def test_corrupt_statistics_and_tensor_files(tmp_path):
    raises_fix(load_tensors, tmp_path / "nothing.safetensors")
    (tmp_path / "stats.safetensors").write_bytes(b"\x10" * 64)
    (tmp_path / "stats.json").write_text(json.dumps({"tokens": {"1": 3}}))
    raises_fix(CodeStatistics.load, tmp_path / "stats.safetensors")


# ------------------------------------------------------------------------------------------------ saving
def test_save_refuses_a_non_empty_directory_and_leaves_it_untouched(trained, tmp_path):
    target = tmp_path / "saved"
    trained.save_pretrained(target)
    before = snapshot(target)
    assert set(before) == {CONFIG_NAME, WEIGHTS_NAME}

    trained.apply_edit(Edit("t", {1: LayerCodes([1, 2])}, bottleneck_fingerprint=trained.fingerprint()))
    raises_fix(trained.save_pretrained, target)
    assert snapshot(target) == before
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # no temporary directory left behind

    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    raises_fix(trained.save_pretrained, other)
    assert snapshot(other) == {"notes.txt": b"mine"}

    raises_fix(trained.save_pretrained, other / "notes.txt")  # a file, not a directory

    trained.save_pretrained(target, overwrite=True)
    assert set(snapshot(target)) == {CONFIG_NAME, WEIGHTS_NAME, "edits.json"}
    reloaded = BottleneckedModel.from_pretrained(make_model("llama", num_layers=4), target)
    assert [e.topic for e in reloaded.edits] == ["t"]


def test_a_failed_save_keeps_the_old_directory(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "good.txt").write_text("good")
    with pytest.raises(RuntimeError), atomic_directory(target, overwrite=True) as tmp:
        (tmp / "half.txt").write_text("half")
        raise RuntimeError("crash while saving")
    assert snapshot(target) == {"good.txt": b"good"}
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_detach_twice_is_harmless():
    model = make_model("llama")
    bmodel = BottleneckedModel.attach(model, tiny_config(layers=[1]))
    original = bmodel.detach()
    layers = list(decoder_layers(original))
    assert bmodel.detach() is model
    assert list(decoder_layers(model)) == layers
    with torch.no_grad():
        model(input_ids=make_tokens(1, 4))


@pytest.mark.parametrize(
    "edits",
    [
        "[{not json",
        json.dumps({"topic": "x", "layers": {}}),  # one edit, not a list
        json.dumps([{"topic": "x", "layers": {"1": {"codes": [1]}}, "bottleneck_fingerprint": "0123456789abcdef"}]),
        json.dumps([{"topic": "x", "layers": {"1": {"codes": [9999]}}}]),
    ],
    ids=["not-json", "not-a-list", "other-bottleneck", "code-out-of-range"],
)
def test_bad_saved_edits_fail_without_touching_the_model(trained_dir, tmp_path, edits):
    copy = tmp_path / "bottleneck"
    shutil.copytree(trained_dir, copy)
    (copy / "edits.json").write_text(edits)
    model = make_model("llama", num_layers=4)
    raises_fix(BottleneckedModel.from_pretrained, model, copy)
    assert not any(type(layer).__name__ == "BottleneckLayer" for layer in decoder_layers(model))
    (copy / "edits.json").unlink()
    BottleneckedModel.from_pretrained(model, copy)  # the model is still free to take a bottleneck


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"layers": 5}, "list of integers"),
        ({"layers": [1], "num_heads": "8"}, "num_heads must be int"),
        ({"layers": [1], "adapter_rank": -1}, "adapter_rank"),
        ([1, 2], "not a JSON object"),
    ],
)
def test_ill_typed_bottleneck_config_is_one_line_error(data, message):
    with pytest.raises(CodeunlearnError, match=message) as excinfo:
        BottleneckConfig.from_dict(data)
    assert_fix_error(excinfo)


# ------------------------------------------------------------------------------------------------ numeric ranges
# Every numeric argument a command line or config file sets is refused out of its range when the flags are parsed:
# one `error: ... -- fix: ...` line naming the flag, exit code 2, before any file is read or written. The paths
# below need not exist: the range check comes first. A command `name:variant` adds the variant's flags (a baseline
# method, the bake export mode, an SAE bottleneck).
REQUIRED = {
    "train": ["--layers", "1", "--corpora", "missing.txt"],
    "train:sae": ["--layers", "1", "--corpora", "missing.txt", "--bottleneck", "sae"],
    "forget": ["--forget_stats", "f.safetensors", "--retain_stats", "r.safetensors"],
    "stats": ["--corpora", "missing.txt", "--bottleneck_dir", "missing", "--name", "x"],
    "eval": ["--bottleneck_dir", "missing", "--forget_corpora", "f.txt", "--retain_corpora", "r.txt"],
    "eval:suite": ["--suite", "harry_potter", "--model", "missing"],
    "calibrate": ["--bottleneck_dir", "missing", "--edit", "e.json", "--retain_corpora", "r.txt"],
    "export": ["--model", "missing", "--bottleneck", "missing"],
    "export:bake": ["--mode", "bake", "--model", "missing", "--bottleneck", "missing", "--edit", "e.json"],
    "relearn": ["--forget_corpora", "f.txt"],
    "inspect": ["--bottleneck_dir", "missing", "--edit", "e.json", "--forget_corpora", "f.txt"],
    "fact-topic": ["--known_facts", "missing.jsonl"],
    "demo": ["--data_dir", "missing"],
    **{f"baseline:{m}": ["--method", m, "--forget_corpora", "f.txt"] for m in ("ga", "grad_diff", "npo", "rmu")},
}
RANGE_CASES = [
    ("train", "max_tokens", "0"),
    ("train", "max_tokens", "-5"),
    ("train", "seq_len", "1"),
    ("train", "heldout_fraction", "1"),
    ("train", "heldout_fraction", "-0.1"),
    ("train", "key_steps", "0"),
    ("train", "value_steps", "-1"),
    ("train", "batch_size", "0"),
    ("train", "gradient_accumulation_steps", "0"),
    ("train", "kmeans_init_tokens", "0"),
    ("train", "learning_rate", "-0.01"),
    ("train", "learning_rate", "inf"),
    ("train", "sae_learning_rate", "inf"),
    ("train", "reconstruction_weight", "inf"),
    ("train", "adapter_learning_rate", "0"),
    ("train", "sae_learning_rate", "-1"),
    ("train", "warmup_steps", "-1"),
    ("train", "reconstruction_weight", "-1"),
    ("train", "sae_steps", "0"),
    ("train", "sae_updates_per_batch", "0"),
    ("train", "dead_feature_window", "0"),
    ("train", "checkpoint_every", "0"),
    ("train", "keep_checkpoints", "0"),
    ("train", "log_every", "0"),
    ("train", "stop_after_steps", "0"),
    ("train", "retain_statistics_tokens", "-1"),
    ("train", "ema_decay", "1.5"),
    ("train", "ema_decay", "nan"),
    ("train", "kmeans_iters", "-1"),
    ("train", "dead_code_threshold", "-0.5"),
    ("train", "dead_code_threshold", "nan"),
    ("train", "dead_code_threshold", "inf"),
    ("train", "massive_norm_factor", "-1"),
    ("train", "massive_norm_factor", "nan"),
    ("train", "massive_norm_factor", "inf"),
    ("train", "num_heads", "0"),
    ("train", "codebook_size", "0"),
    ("train", "num_stages", "0"),
    ("train", "adapter_rank", "-1"),
    ("train:sae", "sae_width", "-1"),
    ("train:sae", "sae_expansion_factor", "0"),
    ("train:sae", "sae_k", "0"),
    ("train:sae", "sae_l1_coefficient", "-1"),
    ("train:sae", "sae_l1_coefficient", "nan"),
    ("train:sae", "sae_l1_coefficient", "inf"),
    ("stats", "max_tokens", "0"),
    ("stats", "seq_len", "0"),
    ("forget", "num_codes", "0"),
    ("forget", "min_forget_count", "-1"),
    ("forget", "max_retain_frequency", "1.5"),
    ("forget", "max_retain_cost", "-0.1"),
    ("forget", "validation_tokens", "0"),
    ("forget", "validation_skip_tokens", "-1"),
    ("forget", "min_score", "nan"),
    ("forget", "min_score", "-inf"),
    ("forget", "multiplier", "0"),
    ("forget", "multiplier", "3"),
    ("forget", "multiplier", "-inf"),
    ("forget", "batch_size", "0"),
    ("eval", "batch_size", "0"),
    ("eval", "skip_positions", "-1"),
    ("eval:suite", "max_items", "0"),
    ("eval:suite", "max_length", "1"),
    ("calibrate", "window", "0"),
    ("calibrate", "target_fpr", "0"),
    ("calibrate", "target_fpr", "1"),
    ("calibrate", "multiplier", "0"),
    ("calibrate", "multiplier", "nan"),
    ("calibrate", "batch_size", "0"),
    ("export", "layer", "-1"),
    ("export", "rank", "0"),
    ("export", "batch_size", "0"),
    ("export:bake", "eval_max_tokens", "0"),
    ("export:bake", "eval_batch_size", "0"),
    ("export:bake", "log_every", "0"),
    ("export:bake", "learning_rate", "0"),
    ("export:bake", "learning_rate", "inf"),
    ("export:bake", "weight_decay", "-1"),
    ("export:bake", "warmup_ratio", "1"),
    ("export:bake", "max_grad_norm", "-1"),
    ("export:bake", "max_steps", "0"),
    ("export:bake", "batch_size", "0"),
    ("export:bake", "retain_weight", "-1"),
    ("export:bake", "perturb_alpha", "-0.1"),
    ("export:bake", "perturb_alpha", "1.5"),
    ("relearn", "steps", "0"),
    ("relearn", "learning_rate", "0"),
    ("relearn", "lora_learning_rate", "-1"),
    ("relearn", "lora_rank", "0"),
    ("relearn", "lora_alpha", "0"),
    ("relearn", "batch_size", "0"),
    ("relearn", "eval_batch_size", "0"),
    ("relearn", "max_grad_norm", "-1"),
    ("relearn", "skip_positions", "-1"),
    ("relearn", "relearn_tokens", "0"),
    ("inspect", "contexts", "-1"),
    ("inspect", "left", "-1"),
    ("inspect", "right", "-1"),
    ("inspect", "top_tokens", "-1"),
    ("inspect", "top", "-1"),
    ("inspect", "batch_size", "0"),
    ("fact-topic", "heldout_fraction", "0"),
    ("fact-topic", "heldout_fraction", "1"),
    ("demo", "eval_max_tokens", "0"),
    ("demo", "skip_positions", "-1"),
    ("demo", "retain_statistics_tokens", "0"),
    ("baseline:ga", "learning_rate", "0"),
    ("baseline:ga", "learning_rate", "inf"),
    ("baseline:ga", "weight_decay", "-1"),
    ("baseline:ga", "warmup_ratio", "1"),
    ("baseline:ga", "max_grad_norm", "nan"),
    ("baseline:ga", "max_steps", "0"),
    ("baseline:ga", "batch_size", "0"),
    ("baseline:ga", "gradient_accumulation_steps", "0"),
    ("baseline:ga", "log_every", "0"),
    ("baseline:ga", "checkpoint_every", "-1"),
    ("baseline:ga", "keep_checkpoints", "0"),
    ("baseline:ga", "stop_after_steps", "0"),
    ("baseline:ga", "eval_max_tokens", "0"),
    ("baseline:ga", "eval_batch_size", "0"),
    ("baseline:ga", "skip_positions", "-1"),
    ("baseline:grad_diff", "forget_weight", "-1"),
    ("baseline:grad_diff", "retain_weight", "inf"),
    ("baseline:npo", "beta", "0"),
    ("baseline:npo", "beta", "nan"),
    ("baseline:npo", "retain_weight", "-1"),
    ("baseline:rmu", "layer", "-1"),
    ("baseline:rmu", "steering_coeff", "0"),
    ("baseline:rmu", "steering_norm_ratio", "0"),
    ("baseline:rmu", "alpha", "-1"),
    ("baseline:rmu", "alpha", "inf"),
]


@pytest.mark.parametrize(("command", "name", "value"), RANGE_CASES, ids=[f"{c}-{n}={v}" for c, n, v in RANGE_CASES])
def test_out_of_range_arguments_are_one_line_errors(command, name, value, tmp_path, capsys):
    from helpers import run_error

    out = tmp_path / "out"
    if command in ("stats", "calibrate"):
        target = ["--output_file", str(out / "o.json" if command == "calibrate" else out / "s.safetensors")]
    else:
        target = ["--output_dir", str(out)]
    # `--name=value`: argparse would read a separate `-inf` as a flag
    error = run_error([command.split(":")[0], *REQUIRED[command], *target, f"--{name}={value}"], capsys)
    assert (f"--{name} {value}" in error and "out of range" in error) or f"{name} must be" in error, error
    assert not out.exists()  # refused before anything was written
