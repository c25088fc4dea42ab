"""The linear-projection export (a different method, folded into the stock weights): the folded model equals the
base model with the directions projected out of every residual-stream write by hooks, its stream up to layer L has
no component along them, it saves and reloads with the stock `model_type` and no remote code, directions derived
from data are the known ones on synthetic states, and `codeunlearn export --mode linear` runs end to end with the
same held-out loss as `codeunlearn eval` measures."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import torch
from export_helpers import make_tokenizer
from helpers import HIDDEN, VOCAB, assert_fix_error, make_model, make_tokens
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.cli import main
from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.linear import (
    check_directions,
    fold_projection,
    layer_states,
    mean_difference_directions,
    projection_hooks,
    save_linear_export,
)

PROBE = make_tokens(2, 10, seed=7)
LAYER = 1


def make_extra_model(arch: str) -> torch.nn.Module:
    """Tiny models of the foldable architectures that tests/helpers.py does not build."""
    import transformers as tf

    common = {"vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": 2 * HIDDEN, "num_hidden_layers": 3}
    common.update(num_attention_heads=4, max_position_embeddings=64)
    if arch == "qwen3":
        config, cls = tf.Qwen3Config(**common, num_key_value_heads=2, head_dim=8), tf.Qwen3ForCausalLM
    elif arch == "phi3":
        config, cls = tf.Phi3Config(**common, num_key_value_heads=2, pad_token_id=0), tf.Phi3ForCausalLM
    elif arch == "olmo":
        config, cls = tf.OlmoConfig(**common, num_key_value_heads=2, pad_token_id=0), tf.OlmoForCausalLM
    elif arch == "gemma":
        config, cls = tf.GemmaConfig(**common, num_key_value_heads=2, head_dim=8), tf.GemmaForCausalLM
    elif arch == "gpt_neox":
        config, cls = tf.GPTNeoXConfig(**common), tf.GPTNeoXForCausalLM
    else:
        return make_model(arch)
    torch.manual_seed(0)
    return cls(config).eval().requires_grad_(False)


FOLDABLE = ["llama", "qwen2", "mistral", "gpt2", "qwen3", "phi3", "olmo", "gemma", "gpt_neox"]


def random_directions(rank: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(rank, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("arch", FOLDABLE)
def test_fold_equals_projecting_every_write_and_reloads_as_the_stock_model(arch, tmp_path):
    model = make_extra_model(arch)
    directions = random_directions()
    basis = check_directions(directions, HIDDEN).float()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    head_before = model.get_output_embeddings().weight.clone()
    with torch.no_grad():
        base = model(input_ids=PROBE).logits
        with projection_hooks(model, directions, LAYER):
            hooked = model(input_ids=PROBE).logits
    fold_projection(model, directions, LAYER)
    with torch.no_grad():
        out = model(input_ids=PROBE, output_hidden_states=True)
    assert float((out.logits - hooked).abs().max()) <= 1e-5
    assert float((out.logits - base).abs().max()) > 1e-3  # the projection changes the model
    for index in range(LAYER + 2):  # embeddings and the outputs of layers 0..LAYER
        stream = out.hidden_states[index]
        assert float((stream @ basis.T).abs().max()) <= 1e-5 * max(1.0, float(stream.abs().max()))
    assert torch.equal(model.get_output_embeddings().weight, head_before)  # the unembedding is untouched
    later = [k for k in before if any(f".{i}." in k for i in range(LAYER + 1, 3))]
    assert later and all(torch.equal(model.state_dict()[k], before[k]) for k in later)

    save_linear_export(model, make_tokenizer(), tmp_path / "out", directions, LAYER)
    names = {p.name for p in (tmp_path / "out").iterdir()}
    assert "modeling_codeunlearn.py" not in names and {"README.md", "codeunlearn_linear.json"} <= names
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()  # no trust_remote_code needed
    assert type(reloaded) is type(model) and reloaded.config.model_type == arch
    with torch.no_grad():
        assert float((reloaded(input_ids=PROBE).logits - out.logits).abs().max()) <= 1e-5
    spec = json.loads((tmp_path / "out" / "codeunlearn_linear.json").read_text())
    assert spec["layer"] == LAYER and spec["rank"] == 2 and spec["base_model_type"] == arch
    assert torch.allclose(torch.tensor(spec["directions"]).float(), basis, atol=1e-6)


@pytest.mark.parametrize("arch", ["gemma2", "gemma3_text"])
def test_architectures_with_post_norms_are_refused(arch):
    model = make_model(arch)
    with pytest.raises(CodeunlearnError) as excinfo:
        fold_projection(model, random_directions(), LAYER)
    assert_fix_error(excinfo)
    assert "bottleneck export" in str(excinfo.value)


def test_mean_difference_directions_find_the_known_directions():
    generator = torch.Generator().manual_seed(0)
    retain = torch.randn(4000, HIDDEN, generator=generator)
    forget = torch.randn(4000, HIDDEN, generator=generator)
    forget[:, 3] += 2.0  # the topic shifts the mean along e3 ...
    forget[:, 5] *= 3.0  # ... and carries extra energy along e5
    directions = mean_difference_directions(forget, retain, rank=2)
    assert directions.shape == (2, HIDDEN)
    assert torch.allclose(directions @ directions.T, torch.eye(2, dtype=directions.dtype), atol=1e-10)
    assert float(directions[0, 3]) > 0.99  # the mean difference, pointing from retain to forget
    assert abs(float(directions[1, 5])) > 0.99


def test_bad_directions_and_layers():
    for bad in (torch.zeros(1, HIDDEN), torch.randn(2, HIDDEN + 1), torch.ones(2, HIDDEN)):
        with pytest.raises(CodeunlearnError) as excinfo:
            check_directions(bad, HIDDEN)
        assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        fold_projection(make_model("llama"), random_directions(), 7)
    assert_fix_error(excinfo)
    with pytest.raises(CodeunlearnError) as excinfo:
        mean_difference_directions(torch.ones(4, HIDDEN), torch.ones(4, HIDDEN))
    assert_fix_error(excinfo)


def test_layer_states_stop_at_the_layer_and_skip_position_zero():
    model = make_model("llama")
    reached = []
    hook = decoder_layers(model)[LAYER + 1].register_forward_hook(lambda *a: reached.append(True))
    try:
        states = layer_states(model, make_tokens(3, 10, seed=1), LAYER, batch_size=2)
    finally:
        hook.remove()
    assert reached == []
    assert states.shape == (3 * 9, HIDDEN)
    with torch.no_grad():
        full = model(input_ids=make_tokens(3, 10, seed=1), output_hidden_states=True).hidden_states[LAYER + 1]
    assert torch.allclose(states, full[:, 1:].reshape(-1, HIDDEN), atol=1e-6)


# ------------------------------------------------------------------------------------------------ CLI


def write_corpus(path: Path, words: range, seed: int) -> str:
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(f"w{rng.choice(words)}" for _ in range(60)) for _ in range(10)) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("linear-cli")
    make_model("llama").save_pretrained(root / "model")
    make_tokenizer().save_pretrained(root / "model")
    forget = write_corpus(root / "forget.txt", range(3, 40), seed=1)
    retain = write_corpus(root / "retain.txt", range(60, 128), seed=2)
    data = ["--seq_len", "16", "--heldout_fraction", "0.3", "--forget_corpora", forget, "--retain_corpora", retain]
    return {"root": root, "model": root / "model", "data": data, "forget": forget, "retain": retain}


def test_cli_linear_export_end_to_end(workspace, capsys):
    out = workspace["root"] / "linear"
    argv = ["export", "--mode", "linear", "--model", str(workspace["model"]), "--layer", "1", "--rank", "2"]
    assert main([*argv, *workspace["data"], "--out", str(out), "--no_progress"]) == 0
    printed = capsys.readouterr().out
    assert "| base |" in printed and "| linear projection (layer 1, rank 2) |" in printed

    report = json.loads((out / "eval_report.json").read_text())
    rows = {row["row"]: row for row in report["rows"]}
    assert list(rows) == ["base", "linear projection (layer 1, rank 2)"]
    # The base row is what `codeunlearn eval` measures: mean next-token loss on the same held-out split.
    from codeunlearn.data import DataArguments, read_corpora
    from codeunlearn.evaluate.evaluation import mean_loss

    data = DataArguments(
        forget_corpora=[workspace["forget"]], seq_len=16, heldout_fraction=0.3, retain_corpora=[workspace["retain"]]
    )
    base = AutoModelForCausalLM.from_pretrained(workspace["model"]).eval()
    heldout = read_corpora(data.forget_corpora, data).pack(make_tokenizer(), "heldout")
    assert rows["base"]["forget_loss"] == pytest.approx(mean_loss(base, heldout), abs=1e-6)
    linear = AutoModelForCausalLM.from_pretrained(out).eval()
    assert linear.config.model_type == "llama"
    assert rows["linear projection (layer 1, rank 2)"]["forget_loss"] == pytest.approx(
        mean_loss(linear, heldout), abs=1e-6
    )

    spec = json.loads((out / "codeunlearn_linear.json").read_text())
    assert spec["rank"] == 2 and spec["layer"] == 1 and "difference of mean" in spec["directions_method"]
    card = (out / "README.md").read_text()
    assert "linear projection" in card and "different method" in card
    assert "| linear projection (layer 1, rank 2) |" in card
    # The base model was a local directory: the card names it by its last path component, never the whole path.
    assert str(workspace["model"]) not in card and str(workspace["root"]) not in card
    assert "\n# model with a topic projected out (codeunlearn, linear mode)\n" in card
    assert "**No switch.**" in card and "codeunlearn eval --suite TOPIC --model DIR --attacks" in card


def test_cli_linear_export_from_a_directions_file(workspace, tmp_path, capsys):
    directions = random_directions(rank=1, seed=3)
    save_file({"directions": directions}, str(tmp_path / "u.safetensors"))
    argv = ["export", "--mode", "linear", "--model", str(workspace["model"]), "--layer", "0"]
    argv += ["--directions", str(tmp_path / "u.safetensors"), "--out", str(tmp_path / "out"), "--no_progress"]
    assert main(argv) == 0
    assert not (tmp_path / "out" / "eval_report.json").exists()  # no corpora, no table
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    with torch.no_grad():
        stream = model(input_ids=PROBE, output_hidden_states=True).hidden_states[1]
    unit = directions[0] / directions[0].norm()
    assert float((stream @ unit).abs().max()) <= 1e-5
    bad = tmp_path / "bad.safetensors"
    save_file({"other": directions}, str(bad))
    argv[argv.index(str(tmp_path / "u.safetensors"))] = str(bad)
    argv[argv.index(str(tmp_path / "out"))] = str(tmp_path / "out2")
    assert main(argv) == 2
    assert "no tensor named `directions`" in capsys.readouterr().err
    assert not (tmp_path / "out2").exists()
