"""The benchmark scripts run end to end in their `--tiny` mode (random tiny Llama, synthetic corpora) and write the
rows their options ask for, so a refactor of the library cannot silently break them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from codeunlearn.bottleneck.edit import Edit

ROOT = Path(__file__).resolve().parents[1]


def run_script(script: str, *argv: str, as_module: bool = False) -> subprocess.CompletedProcess:
    """Run a benchmark script from the repository root, as a file (`python benchmarks/x.py`) or as a module
    (`python -m benchmarks.x`): both ways must find the shared helpers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    target = ["-m", f"benchmarks.{Path(script).stem}"] if as_module else [str(ROOT / "benchmarks" / script)]
    done = subprocess.run([sys.executable, *target, *argv], capture_output=True, text=True, env=env, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def test_forget_curves_tiny_writes_one_row_per_point_and_method(tmp_path):
    out = tmp_path / "fc"
    run_script(
        "forget_curves.py",
        *("--tiny", "--num_codes", "2", "8", "--methods", "substitute", "random"),
        *("--stats_tokens", "1536", "--eval_tokens", "512", "--out", str(out), "--no-selection_report"),
        *("--statistics_cache", str(tmp_path / "stats"), "--validation_tokens", "512"),
    )
    result = json.loads((out / "curves.json").read_text())
    points = [(r["num_codes_per_layer"], r["method"]) for r in result["rows"] if r["num_codes_per_layer"]]
    assert points == [(2, "substitute"), (2, "random"), (8, "substitute"), (8, "random")]
    references = [r for r in result["rows"] if r["num_codes_per_layer"] is None]
    assert [r["method"] for r in references] == ["base model (bottleneck off)", "unedited bottleneck"]
    assert references[1]["delta"]["forget"] == 0.0  # deltas are measured against the unedited bottleneck
    edited = [r for r in result["rows"] if r["num_codes_per_layer"]]
    assert all(0.0 <= r["heldout_retain_slot_coverage"] <= 1.0 for r in edited)
    assert (out / "curves.png").stat().st_size > 0 and "| held-out retain slots |" in (out / "curves.md").read_text()
    # train, validation and held-out statistics of the forget and the retain text, each saved with its summary
    assert len(list((tmp_path / "stats").glob("*.safetensors"))) == 6

    # the cached statistics feed the model-free selection check; the synthetic topic has its own vocabulary, so its
    # codes take far more validation forget than retain slots, and a 1-stage bottleneck has no stage-1 code
    run_script(
        "selection_coverage.py",
        *("--cache", str(tmp_path / "stats"), "--topic", "micro", "--bottleneck", result["bottleneck"]["path"]),
        *("--num_codes", "2", "8", "--rules", '[{}, {"stages": [1]}]', "--out", str(tmp_path / "coverage.json")),
    )
    rows = json.loads((tmp_path / "coverage.json").read_text())["rows"]
    topic = [r for r in rows if r["rule"] == {}]
    assert [(r["layer"], r["num_codes"]) for r in topic] == [(1, 2), (1, 8), (2, 2), (2, 8)]
    assert all(r["slots"]["forget validation"] > 3 * r["slots"]["retain validation"] for r in topic)
    assert all(r["eligible"] == 0 and r["num_codes"] == 0 for r in rows if r["rule"] == {"stages": [1]})

    # a second run on the same bottleneck and data reads every statistics file back instead of recomputing it
    again = run_script(
        "forget_curves.py",
        *("--tiny", "--bottleneck", result["bottleneck"]["path"], "--num_codes", "2", "--methods", "substitute"),
        *("--stats_tokens", "1536", "--eval_tokens", "512", "--out", str(tmp_path / "again"), "--no-selection_report"),
        *("--statistics_cache", str(tmp_path / "stats"), "--validation_tokens", "512"),
        as_module=True,
    )
    assert again.stdout.count("loaded from") == 6
    repeated = json.loads((tmp_path / "again" / "curves.json").read_text())["rows"][2]
    assert repeated["retain_slot_coverage"] == edited[0]["retain_slot_coverage"]


def test_sae_curves_tiny_reports_quality_curves_and_the_padding_attack(tmp_path):
    out = tmp_path / "sae"
    run_script(
        "sae_curves.py",
        *("--tiny", "--num_features", "2", "8", "--methods", "zero", "clamp"),
        *("--stats_tokens", "4096", "--calibration_tokens", "2048", "--eval_tokens", "512"),
        *("--gate_eval_tokens", "1024", "--pad_tokens", "256", "--padding_passages", "2", "--out", str(out)),
        "--save_edits",
    )
    result = json.loads((out / "sae_curves.json").read_text())
    edited = {(r["n"], r["method"]) for r in result["rows"] if r["n"] is not None}
    assert edited == {(2, "zero"), (2, "clamp"), (8, "zero"), (8, "clamp")}
    assert sorted(p.name for p in (out / "edits").iterdir()) == [
        "clamp_2.json",
        "clamp_8.json",
        "zero_2.json",
        "zero_8.json",
    ]
    saved = Edit.load(out / "edits" / "zero_8.json")
    removed = next(r["removed"] for r in result["rows"] if (r["n"], r["method"]) == (8, "zero"))
    assert saved.intervention == "zero" and saved.num_codes == removed > 0  # the edit the row evaluated
    base = next(r for r in result["rows"] if r["method"] == "base")
    assert base["delta"]["forget"] == 0.0
    assert result["padding_attack"] and result["quality"]


def test_selection_coverage_refuses_unknown_rule_keys_in_one_line(tmp_path):
    (tmp_path / "bottleneck_config.json").write_text(json.dumps({"num_stages": 1, "num_heads": 2, "codebook_size": 4}))
    done = subprocess.run(
        [
            *(sys.executable, str(ROOT / "benchmarks" / "selection_coverage.py"), "--cache", str(tmp_path)),
            *("--topic", "micro", "--bottleneck", str(tmp_path), "--rules", '[{"min_forget": 3}]'),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1].startswith("unknown rule keys ['min_forget']: use [")


def test_stats_speed_tiny_reports_the_search_limit():
    out = run_script("stats_speed.py", "--tiny", "--tokens", "1024", "--repeats", "1", "--kmeans_tokens", "1024")
    header, _, fp32, bf16 = [line for line in out.stdout.splitlines() if line.startswith("|")][:4]
    columns = [c.strip() for c in header.strip("|").split("|")]
    assert "search GEMM tok/s" in columns and "t_stats / t_limit" in columns
    row = dict(zip(columns, (c.strip() for c in fp32.strip("|").split("|")), strict=True))
    speed = {k: float(row[k].replace(",", "")) for k in ("truncated fwd L0..3 tok/s", "search GEMM tok/s")}
    limit = float(row["limit (truncated + GEMM) tok/s"].replace(",", ""))
    # the limit adds the two times: it is slower than either part alone
    assert limit < min(speed.values())
    assert bf16.startswith("| bf16 |")


def test_train_throughput_tiny_reports_each_measure_against_the_base_step():
    out = run_script(
        "train_throughput.py",
        *("--tiny", "--precision", "fp32", "--kmeans_tokens", "512", "--value_steps", "2", "--repeats", "1"),
        *("--seq_len", "32", "--num_stages", "2"),
    )
    rows = [line for line in out.stdout.splitlines() if line.startswith("|")]
    assert rows[0] == "| measure | tokens/s | time per token / base step's | peak memory GiB |"
    cells = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:-1]] for row in rows[2:]}
    assert list(cells) == ["base step", "value step", "key fit"]
    assert cells["base step"][1] == "1.00" and cells["key fit"][0].replace(",", "").isdigit()
    assert all(c[2] == "not measured (CPU)" for c in cells.values())


def test_profile_summary_counts_each_sample_under_its_first_matching_rule(tmp_path):
    profile = tmp_path / "profile.txt"
    profile.write_text("main;train;states_at;forward 30\nmain;train;nearest;baddbmm 50\nmain;load 20\n")
    out = run_script(
        "profile_summary.py", str(profile), "--rule", "search=nearest", "--rule", "forward=states_at", "--rate", "10"
    ).stdout
    assert "| search | 50 | 5.0 | 50.0% |" in out
    assert "| forward | 30 | 3.0 | 30.0% |" in out
    assert "| other | 20 | 2.0 | 20.0% |" in out and "| total | 100 | 10.0 | 100% |" in out


def test_baselines_tiny_as_a_module_writes_a_row_per_method_and_ours(tmp_path):
    run_script(
        "baselines.py",
        *("--tiny", "--methods", "ga", "--steps", "2", "--batch_size", "2", "--eval_tokens", "512"),
        *("--train_tokens", "2048", "--stats_tokens", "2048", "--bottleneck", "tiny", "--num_codes", "4"),
        *("--out", str(tmp_path / "bl")),
        as_module=True,
    )
    rows = json.loads((tmp_path / "bl" / "baselines.json").read_text())["rows"]
    assert [r["method"] for r in rows][:2] == ["base model", "ours: bottleneck, unedited"]
    assert rows[-1]["method"] == "ga" and rows[-1]["steps"] == 2


def test_no_benchmark_script_edits_sys_path():
    """The scripts import their shared helpers as modules (see benchmarks/common.py), never by editing sys.path."""
    edits = re.compile(r"sys\.path\s*(\.\w+\(|\[|\+?=)")
    offenders = [p.name for p in (ROOT / "benchmarks").rglob("*.py") if edits.search(p.read_text())]
    assert offenders == []


RECORDED_SCRIPTS = sorted(
    p for p in (ROOT / "benchmarks" / "results").rglob("*.sh") if "faithful" not in p.relative_to(ROOT).parts
)


def test_recorded_scripts_run_from_the_repository_root_on_any_machine():
    """A recorded script holds no path of the machine it ran on and no wait on another job's log: run from the
    repository root, it repeats the measurement anywhere."""
    assert RECORDED_SCRIPTS
    for path in RECORDED_SCRIPTS:
        text = path.read_text()
        lines = text.splitlines()
        where = path.relative_to(ROOT)
        assert "/work/" not in text, f"{where}: absolute path"
        assert not any(line.strip().startswith("cd /") for line in lines), f"{where}: cd to an absolute path"
        assert not any("grep -q" in line and ".log" in line for line in lines), f"{where}: waits on a log"
        assert lines[0].startswith("#!") and lines[1].startswith("# "), f"{where}: no header saying what it measures"
        assert not any(w in path.name for w in ("session", "lane", "queue")), f"{where}: name tells history"


def test_open_weights_table_measures_what_is_left_against_the_base_model_attacked_alike(tmp_path):
    def report(name: str, forget: float, retain: float, bypassed: float, q8: float, q4: float, curve: list[float]):
        scores = {
            "hp_loss": {"loss": forget},
            "history_loss": {"loss": retain},
            "wikitext_loss": {"loss": retain + 0.5},
            "bypass": {"forget_loss": forget, "forget_loss_bypassed": bypassed},
            "quantization": {"forget_loss": forget, "forget_loss_8bit": q8, "forget_loss_4bit": q4},
            "relearning": {f"forget_loss_step_{s}": v for s, v in zip((0, 25, 50), curve, strict=True)},
        }
        metrics = [{"name": n, "scores": s} for n, s in scores.items()]
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps({"kind": "codeunlearn-suite-report", "metrics": metrics}))
        return f"{name}={path}"

    rows = [
        report("base", 3.0, 3.0, 3.0, 3.0, 3.5, [3.0, 2.5, 2.75]),
        report("edit", 5.0, 3.25, 3.0, 5.0, 5.0, [5.0, 3.5, 3.75]),  # rise 2.0; a switch gives the base back
        report("baked", 4.5, 3.0, 4.5, 4.5, 4.0, [4.5, 4.0, 3.75]),  # rise 1.5 = 75% of the edit's
    ]
    out = run_script("open_weights_table.py", "--baked", "baked", "--edit", "edit", *rows).stdout
    # bypass, 8 bit, 4 bit (against the base at 3.5), 50 steps (against 2.75), best step (against 2.5)
    assert (
        "| edit | +2.000 | +0.250 | +0.000 (0%) | +2.000 (100%) | +1.500 (75%) | +1.000 (50%) | +1.000 (50%) |" in out
    )
    assert "| baked | +1.500 (75% of edit) | +0.000 | +1.500 (100%) | +1.500 (100%) | +0.500 (33%) |" in out
    assert "75% of the edit's rise (goal >= 70%: met)" in out and "retain +0.000 (goal <= +0.05: met)" in out
    assert "50% of the edit's rise left after the relearning attack (goal >= 50%: met)" in out


def test_inspect_topic_words_counts_firings_inside_listed_words(tmp_path):
    """A firing token counts when the whole word around it is listed ("warts" of " Hogwarts", " Harry's"), not when
    it only looks alike (" Harrys", " the")."""
    from benchmarks.inspect_topic_words import whole_word

    window = [" Harry", "'s", " owl", " flew", " to", " Hog", "warts", "."]
    assert whole_word(window, 6) == "hogwarts" and whole_word(window, 5) == "hogwarts"
    assert whole_word(window, 0) == "harry" and whole_word(window, 1) == "harry"
    assert whole_word(window, 7) == ""

    def unit(group: str, score: float | None, firings: list[tuple[list[str], int]]) -> dict:
        contexts = [{"tokens": tokens, "firing": i} for tokens, i in firings]
        return {"group": group, "score": score, "forget": {"contexts": contexts}}

    units = [
        unit("edit", 2.0, [(window, 6), (window, 0)]),  # both in listed words
        unit("edit", 1.0, [([" the", " Harrys"], 1)]),  # not a listed word
        unit("control", None, [(window, 3), (window, 4)]),
    ]
    path = tmp_path / "inspect.json"
    path.write_text(json.dumps({"units": units}))
    printed = run_script("inspect_topic_words.py", str(path), "--top", "1").stdout
    rows = {line.split(" | ")[0].strip("| "): line.split(" | ")[1:5] for line in printed.splitlines() if "|" in line}
    assert rows["edit, top 1 by score"] == ["2", "2", "100%", "1 of 1"]
    assert rows["edit, all 2"] == ["3", "2", "67%", "1 of 2"]
    assert rows["control, all 1"] == ["2", "0", "0%", "0 of 1"]


def test_reliability_record_reads_the_faults_cases_and_examples_the_tests_report(tmp_path):
    """The record's counts come from the JUnit report (outcomes, recorded properties) and Hypothesis's statistics."""
    from benchmarks.reliability_record import hypothesis_examples, read_cases

    report = tmp_path / "junit.xml"
    report.write_text(
        """<testsuites><testsuite>
        <testcase classname="tests.test_kill_resume" name="test_a">
          <properties><property name="fault" value="train: SIGKILL at key step 3"/>
          <property name="fault" value="train: SIGKILL at value step 6"/></properties></testcase>
        <testcase classname="tests.test_bad_input_matrix" name="test_bad_input[found/x]">
          <properties><property name="files_checked" value="99"/></properties><failure message="changed"/></testcase>
        <testcase classname="tests.test_properties" name="test_p"><skipped/></testcase>
        </testsuite></testsuites>"""
    )
    cases = read_cases(report)
    assert [(c["file"], c["name"], c["outcome"]) for c in cases] == [
        ("tests/test_kill_resume.py", "test_a", "passed"),
        ("tests/test_bad_input_matrix.py", "test_bad_input[found/x]", "failed"),
        ("tests/test_properties.py", "test_p", "skipped"),
    ]
    assert cases[0]["properties"] == [
        ("fault", "train: SIGKILL at key step 3"),
        ("fault", "train: SIGKILL at value step 6"),
    ]
    output = """tests/test_properties.py::test_p:

  - during reuse phase (0.01 seconds):
    - 2 passing, 0 failing, and 0 invalid test cases
  - during generate phase (0.98 seconds):
    - 400 passing, 1 failing, and 64 invalid test cases
tests/test_properties.py::test_q:
    - 7 passing, 0 failing, and 3 invalid test cases
"""
    assert hypothesis_examples(output) == {"test_p": (402, 1, 64), "test_q": (7, 0, 3)}


def test_shape_table_joins_fidelity_demo_and_speed_rows_by_shape(tmp_path):
    fidelity = {
        "name": "s16_c256",
        "bits_per_token": 1024.0,
        "train_seconds": 53.0,
        "delta_ce": {"history": 0.1207, "wiki": 0.1138, "micro": 0.1443, "cyber": 0.1489, "hp": 0.3264},
        "relative_delta_ce": {"history": 0.0393, "wiki": 0.0341, "micro": 0.05, "cyber": 0.05, "hp": 0.1},
    }
    missing_demo = {**fidelity, "name": "s8_c4096"}  # no demo report: left out of the table
    (tmp_path / "fidelity.jsonl").write_text(json.dumps(missing_demo) + "\n" + json.dumps(fidelity) + "\n")
    (tmp_path / "demo_s16_c256_report.md").write_text(
        "- Selection: 128 codes removed, N chosen by the rule (retain cost on validation text by codes per layer "
        "(budget 0.05): 128*: +0.0139, 256: +0.0878).\n\n"
        "| row | codes removed | forget loss | retain loss | Δ forget | Δ retain | selectivity |\n"
        "|---|---:|---:|---:|---:|---:|---:|\n"
        "| edited (harry_potter codes) | 128 | 3.8 | 3.27 | +0.2090 | +0.0061 | +0.2028 |\n"
        "| random-codes control | 128 | 3.6 | 3.28 | +0.0475 | +0.0207 | +0.0267 |\n"
    )
    (tmp_path / "inference_speed_s16_c256.json").write_text(json.dumps({"prefill_ratio": 0.961, "decode_ratio": 0.987}))
    out = run_script("shape_table.py", "--results_dir", str(tmp_path)).stdout.splitlines()
    assert len(out) == 3  # header, alignment row, the one shape with all three files
    assert out[2] == (
        "| 16 x 256 | 1,024 | 4,096 | 53 | +0.121 (3.9%) | +0.114 (3.4%) | +0.144 / +0.149 / +0.326 "
        "| 128 (+0.0139; 256: +0.0878) | +0.2090 / +0.0061 | +0.0475 / +0.0207 | 0.96x, 0.99x |"
    )


def test_shape_table_counts_an_edits_codes_per_stage(tmp_path):
    (tmp_path / "bottleneck").mkdir()
    config = {"num_heads": 2, "codebook_size": 4, "num_stages": 3}
    (tmp_path / "bottleneck" / "bottleneck_config.json").write_text(json.dumps(config))
    # flat id = (stage * heads + head) * codes + code: 8 ids per stage
    (tmp_path / "edit.json").write_text(json.dumps({"layers": {"5": {"codes": [0, 9, 17, 23], "scores": [1] * 4}}}))
    out = run_script("shape_table.py", "--edit_stages", str(tmp_path)).stdout.splitlines()
    assert out[2:] == ["| 5 | 1 | 1 |", "| 5 | 2 | 1 |", "| 5 | 3 | 2 |"]


def test_search_bound_counts_one_candidate_when_the_bound_uses_every_dimension():
    """With p = the head dimension the bound is the distance itself: only the nearest key is a candidate; with
    p = 1 the bound is looser, so at least as many keys remain."""
    from helpers import make_model, make_tokens, tiny_config

    from benchmarks.search_bound import candidate_rows
    from codeunlearn.bottleneck.model import BottleneckedModel

    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1], num_stages=2))
    bottleneck = bmodel.bottleneck(1)
    states = bmodel.states_at(1, make_tokens(8, 12))
    bottleneck.initialize(states)
    flat = states.reshape(-1, states.shape[-1]).float()
    z = bottleneck._to_code_space(flat).view(len(flat), bottleneck.config.num_heads, -1)
    head_dim = z.shape[-1]
    rows = candidate_rows(bottleneck, z, [1, head_dim])
    assert [row[:2] for row in rows] == [["1", "1"], ["1", str(head_dim)], ["2", "1"], ["2", str(head_dim)]]
    assert all(row[2:5] == ["1", "1", "1"] for row in rows if row[1] == str(head_dim))
    assert all(float(loose[2]) >= 1 for loose in rows if loose[1] == "1")


def test_shape_table_refuses_a_folder_without_the_study_in_one_line(tmp_path):
    for argv in (["--results_dir", str(tmp_path)], ["--edit_stages", str(tmp_path)]):
        done = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "shape_table.py"), *argv], capture_output=True, text=True
        )
        assert done.returncode == 2 and done.stdout == ""
        assert re.fullmatch(r"error: .+ -- fix: .+\n", done.stderr)


def test_bf16_first_pass_keeps_one_candidate_for_separated_keys_and_every_key_for_equal_ones():
    """Keys far apart leave only the nearest as a candidate (points at a key of stage 1 plus a key of stage 2, a
    hundred times smaller); equal keys cannot be told apart, so every one of them stays. The bf16 errors stay inside
    the bound."""
    import torch
    from helpers import make_model, make_tokens, tiny_config

    from benchmarks.search_bound import bf16_candidate_rows
    from codeunlearn.bottleneck.model import BottleneckedModel

    bmodel = BottleneckedModel.attach(make_model("llama"), tiny_config(layers=[1], num_stages=2))
    bottleneck = bmodel.bottleneck(1)
    bottleneck.initialize(bmodel.states_at(1, make_tokens(8, 12)))
    heads, codes, dim = bottleneck.keys(0).shape
    code = torch.arange(codes)
    separated = 50.0 * (1 + code // dim).unsqueeze(-1) * torch.nn.functional.one_hot(code % dim, dim)
    with torch.no_grad():
        for stage, scale in ((0, 1.0), (1, 0.01)):
            bottleneck.keys(stage).copy_(scale * separated.expand(heads, -1, -1))
    generator = torch.Generator().manual_seed(0)
    first, second = torch.randint(0, codes, (2, 40, heads), generator=generator)
    z = separated[first] + 0.01 * separated[second] + 1e-4 * torch.randn(40, heads, dim, generator=generator)
    rows = bf16_candidate_rows(bottleneck, z)
    assert [row[:5] for row in rows] == [[str(stage), "1.0", "1", "1", "100%"] for stage in (1, 2)]
    assert all(float(row[5]) <= 1 for row in rows)
    with torch.no_grad():
        bottleneck.keys(1).copy_(torch.ones(heads, codes, dim))
    assert bf16_candidate_rows(bottleneck, z)[1][1:5] == [f"{codes:.1f}", str(codes), str(codes), "0%"]
