"""The markdown table writer (`codeunlearn.tables`) and every table the package writes with it.

The second half pins each table of the library byte for byte: the expected text was printed by the hand-built tables
these calls replaced (commit 0e07ae4), from the same inputs. Only the table lines (`|`...) are compared where a
function writes prose around its table."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest

from codeunlearn.tables import escape_pipes, markdown_table

# ------------------------------------------------------------------------------------------------------- the writer


def test_header_alignment_and_rows() -> None:
    text = markdown_table(["row", "n", "loss"], [["base", 1, "2.5000"], ("edit", 12, "2.7500")], align="lrr")
    assert text == "| row | n | loss |\n|---|---:|---:|\n| base | 1 | 2.5000 |\n| edit | 12 | 2.7500 |"


def test_default_alignment_is_plain() -> None:
    assert markdown_table(["a", "b"], [["1", "2"]]) == "| a | b |\n|---|---|\n| 1 | 2 |"


def test_no_rows_gives_header_and_alignment_only() -> None:
    assert markdown_table(["a", "b"], [], align="rl") == "| a | b |\n|---:|---|"
    assert markdown_table(["a"], iter(())) == "| a |\n|---|"


def test_empty_cells_and_generators() -> None:
    rows = ([name, ""] for name in ("x", ""))
    assert markdown_table(["a", "b"], rows) == "| a | b |\n|---|---|\n| x |  |\n|  |  |"


def test_table_without_header() -> None:
    assert markdown_table(None, [["base model", "`m`"]], align="ll") == "| | |\n|---|---|\n| base model | `m` |"


def test_cells_are_not_escaped() -> None:
    # the writer lays out only: a `|` in a cell is written as is (the caller escapes, where a cell may hold one)
    assert markdown_table(["a"], [["x|y"]]) == "| a |\n|---|\n| x|y |"
    assert markdown_table(["a"], [[escape_pipes("x|y")]]) == "| a |\n|---|\n| x\\|y |"
    assert escape_pipes("no pipe") == "no pipe"
    assert escape_pipes("|a||") == "\\|a\\|\\|"


@pytest.mark.parametrize(
    ("header", "rows", "align"),
    [
        (["a", "b"], [["1"]], None),  # a short row
        (["a"], [["1", "2"]], None),  # a long row
        (["a", "b"], [], "r"),  # align of the wrong length
        (["a", "b"], [], "lc"),  # an unknown letter
        (None, [], None),  # no header and no align
    ],
)
def test_bad_tables_raise(header, rows, align) -> None:
    with pytest.raises(ValueError):
        markdown_table(header, rows, align=align)


# ------------------------------------------------------------------------------------- every table of the package


def table_lines(text: str) -> str:
    return "\n".join(line for line in text.splitlines() if line.startswith("|"))


ROWS = [
    {
        "row": "base",
        "codes_removed": None,
        "forget_loss": 2.5,
        "retain_loss": 3.0,
        "delta_forget": None,
        "delta_retain": None,
        "selectivity": None,
    },
    {
        "row": "edit|x",  # not escaped by the loss table (as before)
        "codes_removed": 12,
        "forget_loss": 2.75,
        "retain_loss": 3.01,
        "delta_forget": 0.25,
        "delta_retain": 0.01,
        "selectivity": 0.24,
    },
]
EDITS = [
    {"topic": "hp", "intervention": "substitute", "layers": {"3": {"codes": [1, 2]}, "5": {"codes": [4]}}},
    {"topic": "lotr", "intervention": "zero", "multiplier": 0.0, "layers": {"3": {"codes": [7]}}},
]
SUITE = {
    "kind": "codeunlearn-suite-report",
    "config": "hp",
    "topic": "hp",
    "fast": True,
    "attacks": True,
    "seed": 0,
    "metrics": [
        {"group": "forget", "name": "trivia", "scores": {"acc": 0.5}, "headline": "acc", "n": 1200},
        {"group": "attack", "name": "bypass", "scores": {"recovery": 0.1, "n": 3}, "n": 0},
        {"group": "attack", "name": "relearning", "scores": {}},
        {"group": "general", "name": "empty", "scores": {}},
    ],
    "failures": {"broken": "x"},
}


def test_loss_tables() -> None:
    from codeunlearn.evaluate.loss_table import fidelity_table, loss_table, sae_quality_table

    assert loss_table(ROWS) == (
        "| row | codes removed | forget loss | retain loss | Δ forget | Δ retain | selectivity |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| base | - | 2.5000 | 3.0000 | - | - | - |\n"
        "| edit|x | 12 | 2.7500 | 3.0100 | +0.2500 | +0.0100 | +0.2400 |"
    )
    assert loss_table([]) == (
        "| row | codes removed | forget loss | retain loss | Δ forget | Δ retain | selectivity |\n"
        "|---|---:|---:|---:|---:|---:|---:|"
    )
    fidelity = {"layer": 3, "corpus": "wiki", "fvu_ordinary": 0.1234, "fvu_all": 0.2, "passthrough_fraction": 0.015}
    assert fidelity_table([fidelity | {"codes_used": 300}]) == (
        "| layer | corpus | FVU (quantized tokens) | FVU (all tokens) | passthrough tokens | codes used |\n"
        "|---:|---|---:|---:|---:|---:|\n"
        "| 3 | wiki | 0.1234 | 0.2000 | 1.50% | 300 |"
    )
    quality = {"layer": 3, "corpus": "wiki", "l0": 40.0, "fvu": 0.1, "dead_features": 2, "num_features": 1024}
    quality |= {"ce_base": 3.0, "ce_spliced": 3.2, "ce_delta_spliced": 0.2, "ce_recovered": 0.95}
    assert sae_quality_table([quality]) == (
        "| layer | corpus | L0 | FVU | dead features | CE base | CE spliced (no error term) | Δ CE | CE recovered |\n"
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|\n"
        "| 3 | wiki | 40.0 | 0.1000 | 2 of 1024 | 3.0000 | 3.2000 | +0.2000 | 95.00% |"
    )


def test_token_loss_tables() -> None:
    from codeunlearn.evaluate.loss_table import token_loss_markdown

    tokens = [
        {"position": 2, "token": " the", "reference_loss": 1.0, "loss": 1.5, "increase": 0.5},
        {"position": 3, "token": "|\n", "reference_loss": 2.0, "loss": 1.75, "increase": -0.25},
    ]
    data = {
        "reference": "bottleneck",
        "chunks": 2,
        "skip_positions": 1,
        "mean_increase": {"edit": 0.5, "a|b": -0.25},
        "passage": {"row": "edit", "chunk": 0, "tokens": tokens},
        "top": tokens[:1],
    }
    assert table_lines(token_loss_markdown(data, "fig")) == (
        "| row | mean increase (the table's Δ forget) |\n"
        "|---|---:|\n"
        "| edit | +0.5000 |\n"
        "| a\\|b | -0.2500 |\n"
        "| position | token | increase |\n"
        "|---:|---|---:|\n"
        "| 2 | ' the' | +0.5000 |\n"
        "| position | token | bottleneck loss | loss | increase |\n"
        "|---:|---|---:|---:|---:|\n"
        "| 2 | ' the' | 1.0000 | 1.5000 | +0.5000 |\n"
        "| 3 | '\\|\\n' | 2.0000 | 1.7500 | -0.2500 |"
    )


def test_relearn_table() -> None:
    from codeunlearn.evaluate.attacks.relearn import RelearnCurve

    curve = RelearnCurve("full", [0, 10], [2.0, 1.5], [3.0, 3.1], 1.0, 5, 10, 10, {})
    assert curve.markdown() == (
        "| step | forget loss | recovered | retain loss |\n"
        "|---:|---:|---:|---:|\n"
        "| 0 | 2.0000 | +0.0000 | 3.0000 |\n"
        "| 10 | 1.5000 | +0.5000 | 3.1000 |"
    )
    curve.retain_loss = None
    assert curve.markdown() == (
        "| step | forget loss | recovered | retain loss |\n"
        "|---:|---:|---:|---:|\n"
        "| 0 | 2.0000 | +0.0000 | - |\n"
        "| 10 | 1.5000 | +0.5000 | - |"
    )


def suite_report(model: str, forget: float, acc: float, failures: dict | None = None):
    from codeunlearn.evaluate.metrics.base import MetricResult
    from codeunlearn.evaluate.suite.runner import SuiteReport

    results = [
        MetricResult("forget_loss", {"loss": forget}, {}, 10, [], "forget"),
        MetricResult("trivia", {"acc": acc, "acc_norm": acc + 0.01}, {"acc": 0.25, "acc_norm": 0.25}, 20, [], "forget"),
        MetricResult("retain_loss", {"loss": forget + 1}, {}, 10, [], "retain"),
    ]
    return SuiteReport(
        model=model,
        config="hp",
        topic="harry_potter",
        results=results,
        seconds={"forget_loss": 1.25, "trivia": 2.0},
        headline={"forget_loss": "loss", "trivia": "acc", "retain_loss": "loss"},
        failures=failures or {},
    )


def test_suite_report_tables(tmp_path: Path) -> None:
    from codeunlearn.evaluate.suite.report import combine_reports, markdown_report, write_report

    assert table_lines(markdown_report(suite_report("m", 2.0, 0.5, {"x": "boom"}))) == (
        "| metric | score | this model | chance | n | seconds |\n"
        "|---|---|---:|---:|---:|---:|\n"
        "| forget_loss | loss | 2.0000 | - | 10 | 1.2 |\n"
        "| trivia | acc | 0.5000 | 0.2500 | 20 | 2.0 |\n"
        "|  | acc_norm | 0.5100 | 0.2500 |  |  |\n"
        "| metric | score | this model | chance | n | seconds |\n"
        "|---|---|---:|---:|---:|---:|\n"
        "| retain_loss | loss | 3.0000 | - | 10 |  |"
    )
    with_base = markdown_report(suite_report("m", 2.0, 0.5), suite_report("base", 1.5, 0.75))
    assert table_lines(with_base) == (
        "| metric | score | this model | base model | Δ vs base | chance | n | seconds |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n"
        "| forget_loss | loss | 2.0000 | 1.5000 | +0.5000 | - | 10 | 1.2 |\n"
        "| trivia | acc | 0.5000 | 0.7500 | -0.2500 | 0.2500 | 20 | 2.0 |\n"
        "|  | acc_norm | 0.5100 | 0.7600 | -0.2500 | 0.2500 |  |  |\n"
        "| metric | score | this model | base model | Δ vs base | chance | n | seconds |\n"
        "|---|---|---:|---:|---:|---:|---:|---:|\n"
        "| retain_loss | loss | 3.0000 | 2.5000 | +0.5000 | - | 10 |  |"
    )
    paths = {}
    for name, forget, acc in (("base", 1.5, 0.75), ("edit|1", 2.0, 0.5)):
        write_report(suite_report(name, forget, acc), tmp_path / name.replace("|", "_"))
        paths[name] = tmp_path / name.replace("|", "_") / "report.json"
    with contextlib.redirect_stdout(io.StringIO()):
        combined = combine_reports(paths, tmp_path / "table")
        picked = combine_reports(paths, tmp_path / "table2", columns=["trivia:acc_norm", "forget_loss"])
    assert table_lines(combined) == (
        "| model | forget_loss (loss) | trivia (acc) | retain_loss (loss) | Δ forget loss vs base | Δ retain loss vs base |\n"
        "|---|---:|---:|---:|---:|---:|\n"
        "| *section* | *forget* | *forget* | *retain* | *forget* | *retain* |\n"
        "| base | 1.5000 | 0.7500 | 2.5000 | +0.0000 | +0.0000 |\n"
        "| edit\\|1 | 2.0000 | 0.5000 | 3.0000 | +0.5000 | +0.5000 |\n"
        "| chance | - | 0.2500 | - |  |  |"
    )
    assert table_lines(picked) == (
        "| model | trivia (acc_norm) | forget_loss (loss) | Δ forget loss vs base | Δ retain loss vs base |\n"
        "|---|---:|---:|---:|---:|\n"
        "| *section* | *forget* | *forget* | *forget* | *retain* |\n"
        "| base | 0.7600 | 1.5000 | +0.0000 | +0.0000 |\n"
        "| edit\\|1 | 0.5100 | 2.0000 | +0.5000 | +0.5000 |\n"
        "| chance | 0.2500 | - |  |  |"
    )


def test_card_tables(tmp_path: Path) -> None:
    from codeunlearn.export import card

    assert table_lines(card._suite_table(SUITE)) == (
        "| section | metric | score | value | items |\n"
        "|---|---|---|---:|---:|\n"
        "| forget | trivia | acc | 0.5000 | 1,200 |\n"
        "| attack | bypass | recovery | 0.1000 | - |\n"
        "| attack | relearning | - | - | - |\n"
        "| general | empty | - | - | - |\n"
        "| - | broken | failed | - | - |"
    )
    report = tmp_path / "report.json"
    report.write_text(json.dumps(SUITE))
    assert table_lines(card._attacks_table(report, "me/x")) == (
        "| attack | score | value |\n"
        "|---|---|---:|\n"
        "| bypass | recovery | 0.1000 |\n"
        "| bypass | n | 3 |\n"
        "| relearning | - | - |"
    )
    assert table_lines(card._edits_section(EDITS, 4096)) == (
        "| # | topic | intervention | codes removed | per layer |\n"
        "|---:|---|---|---:|---|\n"
        "| 1 | hp | substitute | 3 | layer 3: 2/4096, layer 5: 1/4096 |\n"
        "| 2 | lotr | zero | 1 | layer 3: 1/4096 |"
    )
    assert table_lines(card._sae_edits_section(EDITS, {"3": 16384})) == (
        "| # | topic | intervention | features edited | per layer |\n"
        "|---:|---|---|---:|---|\n"
        "| 1 | hp | clamp to None x scale | 3 | layer 3: 2/16384, layer 5: 1/? |\n"
        "| 2 | lotr | zero | 1 | layer 3: 1/16384 |"
    )
    teacher_edits = [{"topic": "hp", "intervention": "substitute", "num_codes": 1234}, "junk"]
    assert card._bake_edits_table(teacher_edits) == (
        "| # | topic | intervention | codes removed |\n|---:|---|---|---:|\n| 1 | hp | substitute | 1,234 |"
    )
    assert card._bake_edits_table([]) == "No teacher edit was recorded."
    fidelity = card.FidelityReport("eval", [("wiki", 0.0123, 0.004), ("hp", -0.5, None)], [("layer 3", 0.25)], {})
    assert table_lines(card._fidelity_section(fidelity)) == (
        "| corpus | ΔCE (nat/token) | ΔCE (%) |\n"
        "|---|---:|---:|\n"
        "| wiki | +0.0123 | +0.40% |\n"
        "| hp | -0.5000 | - |\n"
        "| FVU | value |\n"
        "|---|---:|\n"
        "| layer 3 | 0.2500 |"
    )
    measured = tmp_path / "measured.json"
    measured.write_text(json.dumps({"rows": [], "fidelity": [{"layer": 3, "corpus": "wiki", "l0": 41.25}]}))
    bottleneck = {"layers": [3, 5], "sae_error_term": False, "massive_norm_factor": 100}
    saes = {"3": {"architecture": "topk", "d_sae": 16384, "k": 32, "sae_lens_dir": "a/b"}}
    assert table_lines(card._sae_table({"bottleneck": bottleneck, "saes": saes}, measured)) == (
        "| layer | architecture | width (features) | active features per token | sae-lens directory |\n"
        "|---:|---|---:|---|---|\n"
        "| 3 | topk | 16384 | k = 32 (TopK); measured L0 41.2 (wiki) | `a/b` |\n"
        "| 5 | ? | ? | L0 not measured (`codeunlearn eval`) | `?` |"
    )


def test_card_statistics_table(tmp_path: Path) -> None:
    from codeunlearn.export import card
    from codeunlearn.unlearn.statistics_cache import STATISTICS_DIR

    (tmp_path / STATISTICS_DIR).mkdir()
    summary = {"corpus": "/home/me/wiki.txt", "tokens": {"3": 12345}, "codes_seen": {"3": 999}}
    (tmp_path / STATISTICS_DIR / "abc.json").write_text(json.dumps(summary))
    assert table_lines(card._statistics_section(tmp_path)) == (
        "| file | corpus | tokens per layer | codes seen per layer |\n"
        "|---|---|---|---|\n"
        "| `statistics/abc.safetensors` | wiki.txt | 3: 12,345 | 3: 999 |"
    )


def test_export_card_tables(tmp_path: Path) -> None:
    from codeunlearn.export import card

    config = {
        "base_config": {"model_type": "llama", "_name_or_path": "HuggingFaceTB/SmolLM2-135M"},
        "bottleneck": {
            "layers": [3],
            "num_heads": 4,
            "codebook_size": 1024,
            "num_stages": 1,
            "massive_norm_factor": 100,
        },
        "edits": EDITS[:1],
        "adapters": {"rank": 8, "targets": ["a", "b"]},
    }
    assert table_lines(card._bottleneck_card(config, tmp_path / "none.json", "me/x")[1]) == (
        "| # | topic | intervention | codes removed | per layer |\n"
        "|---:|---|---|---:|---|\n"
        "| 1 | hp | substitute | 3 | layer 3: 2/4096, layer 5: 1/4096 |\n"
        "| setting | value |\n"
        "|---|---|\n"
        "| layers | [3] |\n"
        "| site | residual |\n"
        "| heads x codebook size x stages | 4 x 1024 x 1 (4096 codes per layer, 40 bits per token) |\n"
        "| passthrough | position 0: True; norm above 100 x typical |\n"
        "| downstream LoRA adapters | rank 8 on 2 modules |"
    )
    distillation = {
        "steps": 100,
        "tokens": 10000,
        "learning_rate": 1e-5,
        "batch_size": 4,
        "seq_len": 256,
        "forget_corpora": ["hp.txt"],
        "retain_corpora": ["wiki.txt"],
        "retain_teacher": "base",
        "seconds": 3600.0,
        "perturb": {"alpha": 0.1, "seed": 1},
    }
    spec = {
        "base_model": "HuggingFaceTB/SmolLM2-135M",
        "base_model_type": "llama",
        "topics": ["hp"],
        "teacher": {"bottleneck": "x", "edits": [{"topic": "hp", "intervention": "substitute", "num_codes": 5}]},
        "distillation": distillation,
        "rows": ROWS,
    }
    assert table_lines(card._bake_card(spec, tmp_path / "none.json", "me/x")[1]) == (
        "| # | topic | intervention | codes removed |\n"
        "|---:|---|---|---:|\n"
        "| 1 | hp | substitute | 5 |\n"
        "| setting | value |\n"
        "|---|---|\n"
        "| steps | 100 |\n"
        "| tokens | 10,000 |\n"
        "| wall time | 3,600 s (1.00 h) |\n"
        "| learning rate | 1e-05 |\n"
        "| chunks per step (forget + retain) x tokens | 4 + 4 x 256 |\n"
        "| forget corpora | `hp.txt` |\n"
        "| retain corpora | `wiki.txt` |\n"
        "| retain teacher | the base model (bottleneck off) |\n"
        "| weight perturbation | alpha 0.1, seed 1 |\n"
        "| row | codes removed | forget loss | retain loss | Δ forget | Δ retain | selectivity |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| base | - | 2.5000 | 3.0000 | - | - | - |\n"
        "| edit|x | 12 | 2.7500 | 3.0100 | +0.2500 | +0.0100 | +0.2400 |"
    )


@pytest.mark.parametrize("kind", ["vq", "sae"])
def test_bottleneck_repository_card_tables(tmp_path: Path, kind: str) -> None:
    from codeunlearn.export.card import bottleneck_card
    from codeunlearn.kinds.codebook.config import CodebookConfig
    from codeunlearn.kinds.sae.config import SAEConfig

    shape = {
        "vq": {"num_heads": 2, "codebook_size": 64, "adapter_rank": 4},
        "sae": {"sae_architecture": "topk", "sae_k": 8, "sae_width": 512},
    }
    config = (CodebookConfig if kind == "vq" else SAEConfig)(
        base_model="HuggingFaceTB/SmolLM2-135M",
        layers=[3],
        hidden_size=576,
        num_hidden_layers=30,
        model_type="llama",
        **shape[kind],
    )
    (tmp_path / "bottleneck_config.json").write_text(config.to_json_string())
    expected = {
        "vq": (
            "| setting | value |\n"
            "|---|---|\n"
            "| kind | vq: codebook (multi-head residual vector quantization) |\n"
            "| layers | [3] |\n"
            "| site | residual |\n"
            "| heads x codes x stages | 2 x 64 x 8 (1,024 codes per layer) |\n"
            "| bits per token | 96 |\n"
            "| downstream LoRA adapters | rank 4 |\n"
            "| passthrough | position 0: True; norm above 20.0 x typical |"
        ),
        "sae": (
            "| setting | value |\n"
            "|---|---|\n"
            "| kind | sae: sparse autoencoder (topk) |\n"
            "| layers | [3] |\n"
            "| site | residual |\n"
            "| features per layer | 512 (top-k, k = 8) |\n"
            "| error term | kept |\n"
            "| bits per token | - (continuous feature activations) |\n"
            "| passthrough | position 0: True; norm above 20.0 x typical |"
        ),
    }
    base_model = (
        "| | |\n"
        "|---|---|\n"
        "| base model | `HuggingFaceTB/SmolLM2-135M` (recorded as `SmolLM2-135M`) |\n"
        "| model_type | llama |\n"
        "| hidden size, decoder layers | 576, 30 |\n"
        "| revision | not recorded |"
    )
    assert table_lines(str(bottleneck_card(tmp_path))) == expected[kind] + "\n" + base_model


def test_inspection_table() -> None:
    from codeunlearn.inspection.contexts import Context
    from codeunlearn.inspection.logit_lens import LogitEffects, TokenEffect
    from codeunlearn.inspection.page import render_markdown
    from codeunlearn.inspection.report import CorpusFiring, EditInfo, InspectionReport, InspectOptions, UnitReport

    def firing(corpus: str, count: int) -> CorpusFiring:
        contexts = [Context(["a", " b|", "c"], firing=1, strength=2.5, chunk=0, position=4)] if count else []
        return CorpusFiring(corpus=corpus, tokens=1000, count=count, contexts=contexts)

    lens = LogitEffects([TokenEffect(1, " wand", 3.25), TokenEffect(2, "|x", 1.0)], [TokenEffect(3, " the", -2.0)])
    units = [
        UnitReport("edit", 3, 17, "17", 0.123456, firing("hp", 30), firing("wiki", 1), lens),
        UnitReport("control", 3, 99, "99", None, firing("hp", 0), firing("wiki", 0), lens),
    ]
    report = InspectionReport(
        kind="vq",
        unit_name="codes",
        fingerprint="abc",
        strength_meaning="closeness",
        forget_corpus="hp",
        retain_corpus="wiki",
        edit=EditInfo("hp", "substitute", 1, {}),
        control=EditInfo("random", "substitute", 1, {}),
        units=units,
        options=InspectOptions(),
    )
    assert table_lines(render_markdown(report)) == (
        "| set | layer | code | score | forget freq | retain freq | forget/retain | logit lens top tokens |\n"
        "|---|---:|---:|---:|---:|---:|---:|---|\n"
        "| edit | 3 | 17 | 0.1235 | 3% | 0.1% | 30 |  wand (+3.25), \\|x (+1) |\n"
        "| control | 3 | 99 | — | 0% | 0% | — |  wand (+3.25), \\|x (+1) |"
    )


def test_demo_timing_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import codeunlearn.cli.demo as demo
    from codeunlearn.runtime import Stopwatch

    watch = Stopwatch(verbose=False)
    watch.seconds = {"load": 1.25, "train": 100.0, "eval": 3.0}
    monkeypatch.setattr(demo, "render_report", lambda *args: args[-1])  # report.md: the timing table alone
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        demo.write_report(tmp_path, {}, 0, None, None, watch)
    expected = (
        "| stage | seconds |\n"
        "|---|---:|\n"
        "| load | 1.2 |\n"
        "| train | 100.0 |\n"
        "| retain | 0.0 |\n"
        "| forget | 0.0 |\n"
        "| apply | 0.0 |\n"
        "| eval | 3.0 |\n"
        "| save | 0.0 |\n"
        "| reload | 0.0 |\n"
        "| total | 104.2 |"
    )
    assert (tmp_path / "report.md").read_text() == expected + "\n"
    assert table_lines(printed.getvalue()) == expected
