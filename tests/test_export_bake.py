"""`bake`: the edited bottleneck model distilled into the stock architecture. The KL is the known value on hand-made
distributions, the UNDO perturbation touches only decoder matrices and is seeded, distillation moves the student to
the edited teacher on forget text while retain text keeps it at the base model, and `codeunlearn export --mode bake`
writes a stock directory (no remote code, no switch) with its cost and held-out rows, refusing bad input with one
line and nothing written."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import pytest
import torch
from export_helpers import make_tokenizer, topic_edits, trained_bmodel
from helpers import make_model, make_tokens, run_error, run_ok
from transformers import AutoModelForCausalLM

from codeunlearn.bottleneck.architectures import decoder_layers
from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.bake import (
    BakeConfig,
    BakeDistillation,
    bake,
    perturb_,
    scratch_training_arguments,
    token_kl,
)
from codeunlearn.export.card import BAKE_SPEC_NAME

FORGET_WORDS = [f"w{i}" for i in range(3, 40)]
RETAIN_WORDS = [f"w{i}" for i in range(60, 128)]


def test_token_kl_is_the_known_value():
    teacher = torch.tensor([[[0.0, math.log(3.0)]]])  # p = (1/4, 3/4)
    student = torch.zeros(1, 1, 2)  # q = (1/2, 1/2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert float(token_kl(teacher, student)) == pytest.approx(expected, rel=1e-6)
    logits = torch.randn(2, 5, 7)
    assert float(token_kl(logits, logits)) == pytest.approx(0.0, abs=1e-6)
    # a mean over tokens: two tokens with KL a and 0 give a / 2
    pair = torch.cat([teacher, torch.zeros(1, 1, 2)], 1)
    assert float(token_kl(pair, torch.zeros(1, 2, 2))) == pytest.approx(expected / 2, rel=1e-6)


def test_perturbation_is_seeded_and_touches_only_decoder_matrices():
    base, model = make_model("llama"), make_model("llama")
    assert perturb_(model, 0.0, seed=0) > 0
    assert all(torch.equal(a, b) for a, b in zip(base.parameters(), model.parameters(), strict=True))
    changed = perturb_(model, 0.5, seed=3)
    again = make_model("llama")
    perturb_(again, 0.5, seed=3)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters(), strict=True))
    matrices = [p for layer in decoder_layers(model) for p in layer.parameters() if p.ndim == 2]
    assert changed == len(matrices)
    for (name, before), after in zip(base.named_parameters(), model.parameters(), strict=True):
        inside = name.startswith("model.layers.") and before.ndim == 2
        assert torch.equal(before, after) != inside, name
        if inside:  # (1 - a) W + a std(W) N: its correlation with W is about (1 - a) / sqrt((1 - a)^2 + a^2)
            corr = torch.corrcoef(torch.stack([before.flatten(), after.flatten()]))[0, 1]
            assert 0.5 < float(corr) < 0.9
    with pytest.raises(CodeunlearnError, match="perturb_alpha"):
        BakeConfig(perturb_alpha=1.5)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    bmodel = trained_bmodel("llama", tmp_path_factory.mktemp("bake") / "run")
    for edit in topic_edits(bmodel):
        bmodel.apply_edit(edit)
    return bmodel.eval().requires_grad_(False)


def mean_kl(target: torch.nn.Module, model: torch.nn.Module, tokens: torch.Tensor) -> float:
    with torch.no_grad():
        return float(token_kl(target(input_ids=tokens).logits, model(input_ids=tokens).logits))


def test_distillation_copies_the_edit_on_forget_text_and_the_base_on_retain(teacher, tmp_path):
    forget, retain = make_tokens(16, 10, seed=11), make_tokens(16, 10, seed=12)
    student = make_model("llama")  # the base model the bottleneck was trained on (seed 0)
    before = mean_kl(teacher, student, forget)
    assert before > 1e-3  # the edits change the teacher's predictions on this text
    config = BakeConfig(learning_rate=3e-3, max_steps=40, batch_size=4, warmup_ratio=0.0, lr_scheduler="constant")
    scratch, args = scratch_training_arguments(tmp_path / "out", seed=0, bf16=False, progress=False, log_every=10)
    with scratch:
        outcome = bake(teacher, student, forget, retain, config, args, {"forget": forget, "retain": retain})
    assert mean_kl(teacher, student, forget) < 0.3 * before
    with teacher.disabled():
        assert mean_kl(teacher, student, retain) < mean_kl(teacher, student, forget)
    assert outcome.result.steps == 40 and outcome.result.tokens == {"forget": 40 * 4 * 10, "retain": 40 * 4 * 10}
    assert [row["row"] for row in outcome.rows] == ["base", "edited bottleneck (teacher)", "baked (student)"]
    assert outcome.rows[0]["delta_forget"] == 0.0 and outcome.rows[2]["delta_forget"] > 0
    assert not list(tmp_path.iterdir())  # the loop's scratch directory is gone


def test_bake_refuses_bad_input(teacher, tmp_path):
    small = make_tokens(3, 10, seed=1)
    scratch, args = scratch_training_arguments(tmp_path / "o", seed=0, bf16=False, progress=False, log_every=1)
    with scratch, pytest.raises(CodeunlearnError, match="bake needs at least 8"):
        bake(teacher, make_model("llama"), small, make_tokens(16, 10), BakeConfig(max_steps=1), args)
    with scratch_training_arguments(tmp_path / "o", 0, False, False, 1)[0], pytest.raises(CodeunlearnError):
        bake(teacher, make_model("gpt2"), make_tokens(16, 10), make_tokens(16, 10), BakeConfig(max_steps=1), args)
    unedited = trained_bmodel("llama", tmp_path / "plain")
    with pytest.raises(CodeunlearnError, match="no active edit"):
        BakeDistillation(unedited, BakeConfig())


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, teacher) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bake-cli")
    model_dir = root / "model"
    make_model("llama").save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    teacher.save_pretrained(root / "bottleneck", with_edits=False)
    edits = []
    for edit in teacher.edits:
        edit.save(root / f"{edit.topic}.json")
        edits.append(str(root / f"{edit.topic}.json"))
    foreign = trained_bmodel("llama", root / "foreign", num_heads=2)
    topic_edits(foreign)[0].save(root / "foreign.json")
    forget = write_words(root / "forget.txt", FORGET_WORDS, seed=1)
    retain = write_words(root / "retain.txt", RETAIN_WORDS, seed=2)
    write_words(root / "tiny.txt", FORGET_WORDS, seed=3, docs=3)  # 2 train documents: 7 chunks of 16 tokens
    common = ["export", "--mode", "bake", "--model", str(model_dir), "--bottleneck", str(root / "bottleneck")]
    common += ["--seq_len", "16", "--heldout_fraction", "0.3", "--no_progress", "--max_steps", "3"]
    return {
        "root": root,
        "common": common,
        "edits": edits,
        "forget": forget,
        "retain": retain,
        "foreign": root / "foreign.json",
    }


def write_words(path: Path, words: list[str], seed: int, docs: int = 10) -> str:
    """`docs` documents of 60 words of the tiny vocabulary, one per line."""
    rng = random.Random(seed)
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(60)) for _ in range(docs)) + "\n")
    return str(path)


def test_cli_bake_writes_a_stock_model_with_its_cost(workspace, capsys):
    out = workspace["root"] / "baked"
    argv = [*workspace["common"], "--edit", *workspace["edits"], "--forget_corpora", workspace["forget"]]
    text = run_ok(
        [*argv, "--retain_corpora", workspace["retain"], "--batch_size", "2", "--license", "mit", "--out", str(out)],
        capsys,
    )
    assert "baked (student)" in text and "distilled 3 steps" in text
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "llama" and "auto_map" not in config
    assert not list(out.glob("*.py"))  # no remote code: nothing to switch off
    model = AutoModelForCausalLM.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM"
    spec = json.loads((out / BAKE_SPEC_NAME).read_text())
    assert spec["method"] == "bake" and spec["topics"] == ["wizards", "dragons"]
    distillation = spec["distillation"]
    assert distillation["steps"] == 3 and distillation["tokens"] == 2 * 3 * 2 * 16 and distillation["seconds"] > 0
    assert [row["row"] for row in spec["rows"]] == ["base", "edited bottleneck (teacher)", "baked (student)"]
    assert len((out / "bake_metrics.jsonl").read_text().splitlines()) == 1  # log_every 10: the last step only
    card = (out / "README.md").read_text()
    assert "baked by distillation" in card and "trust_remote_code=True" not in card and "\nlicense: mit\n" in card
    assert "There is no switch" in card or "no switch" in card.lower()


def test_cli_bake_bad_input_writes_nothing(workspace, tmp_path, capsys):
    argv = [*workspace["common"], "--forget_corpora", workspace["forget"], "--retain_corpora", workspace["retain"]]
    out = tmp_path / "o"
    line = run_error([*argv, "--edit", str(workspace["foreign"]), "--out", str(out)], capsys)
    assert "another bottleneck" in line
    small = [*workspace["common"], "--edit", *workspace["edits"], "--retain_corpora", workspace["retain"]]
    line = run_error([*small, "--forget_corpora", str(workspace["root"] / "tiny.txt"), "--out", str(out)], capsys)
    assert "forget corpora give" in line and "--forget_corpora" in line
    line = run_error([*workspace["common"], "--edit", *workspace["edits"], "--out", str(out)], capsys)
    assert "--forget_corpora" in line and "--retain_corpora" in line
    assert not out.exists()
    full = tmp_path / "full"
    full.mkdir()
    (full / "keep.txt").write_text("mine")
    line = run_error([*argv, "--edit", *workspace["edits"], "--out", str(full)], capsys)
    assert "is not empty" in line and (full / "keep.txt").read_text() == "mine"
    assert "unknown export mode" in run_error(["export", "--mode", "melt", "--out", str(out)], capsys)
    assert [p.name for p in tmp_path.iterdir()] == ["full"]


def test_bake_help_lists_the_distillation_settings(capsys):
    text = run_ok(["export", "--mode", "bake", "--help"], capsys)
    assert "--perturb_alpha" in text and "--retain_teacher" in text and "--max_steps" in text
