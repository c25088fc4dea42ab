"""The reliability record: run the fault-injection, bad-input, property and determinism tests and print what they
tried and what came of it (the counts in benchmarks/RESULTS.md, "Reliability").

    python benchmarks/reliability_record.py [--seed N]

Runs pytest on the test files below with a JUnit XML report and Hypothesis's statistics, then reads both back:
- faults injected: every SIGKILL of tests/test_kill_resume.py (each test records where it killed), and whether the
  resumed run ended bit for bit where the uninterrupted run ends;
- bad inputs tried: the cases of the bad-input tests (each asserts one `error: ... -- fix: ...` line and exit code 2),
  and for the matrix how many pre-existing files each case re-hashed afterwards;
- fuzzed inputs: the examples Hypothesis generated per property test;
- determinism: same seed, same weights and statistics (in-process and across fresh processes).

`--seed` fixes the random kill points (`KILL_RESUME_SEED`); without it one is drawn and printed, so a run can be
replayed. Exit code 1 if any test failed (the record is then not a record).
"""

from __future__ import annotations

import argparse
import os
import random
import re
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

from codeunlearn.tables import escape_pipes, markdown_table

REPO = Path(__file__).resolve().parents[1]
FAULTS = "tests/test_kill_resume.py"
BAD_INPUTS = (
    "tests/test_bad_input_matrix.py",
    "tests/test_bad_input.py",
    "tests/test_corpus_sources.py",
    "tests/test_train_outputs.py",
    "tests/test_trust_and_progress.py",
)
PROPERTIES = "tests/test_properties.py"
DETERMINISM = "tests/test_determinism.py"
HYPOTHESIS_LINE = re.compile(r"(\d+) passing, (\d+) failing,? (?:and )?(\d+) invalid")


def run_tests(seed: int, report: Path) -> str:
    """Run every file once under pytest; return its output (Hypothesis's statistics are printed there)."""
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}"]
    command += ["--hypothesis-show-statistics", FAULTS, *BAD_INPUTS, PROPERTIES, DETERMINISM]
    env = {**os.environ, "KILL_RESUME_SEED": str(seed), "PYTHONPATH": str(REPO)}
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    return result.stdout + result.stderr


def read_cases(report: Path) -> list[dict]:
    """Every test case of the JUnit report: file, name, outcome and the properties it recorded."""
    cases = []
    for case in ET.parse(report).getroot().iter("testcase"):
        failed = case.find("failure") is not None or case.find("error") is not None
        skipped = case.find("skipped") is not None
        properties = [(p.get("name"), p.get("value")) for p in case.iter("property")]
        module = case.get("classname", "").split(".")[-1]
        cases.append(
            {
                "file": f"tests/{module}.py",
                "name": case.get("name", ""),
                "outcome": "failed" if failed else "skipped" if skipped else "passed",
                "properties": properties,
            }
        )
    return cases


def hypothesis_examples(output: str) -> dict[str, tuple[int, int, int]]:
    """Per property test, Hypothesis's generated examples summed over its phases: passing, failing, invalid."""
    examples: dict[str, list[int]] = defaultdict(lambda: [0, 0, 0])
    test = None
    for line in output.splitlines():
        if line.startswith(PROPERTIES + "::") and line.rstrip().endswith(":"):
            test = line.rstrip()[len(PROPERTIES) + 2 : -1]
        match = HYPOTHESIS_LINE.search(line)
        if test and match:
            for i, value in enumerate(match.groups()):
                examples[test][i] += int(value)
    return {name: tuple(counts) for name, counts in examples.items()}


def outcome_counts(cases: list[dict]) -> str:
    passed = sum(c["outcome"] == "passed" for c in cases)
    failed = sum(c["outcome"] == "failed" for c in cases)
    return f"{len(cases)} run, {passed} passed, {failed} failed"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="KILL_RESUME_SEED (default: drawn and printed)")
    args = parser.parse_args()
    seed = random.SystemRandom().randrange(2**32) if args.seed is None else args.seed
    with tempfile.TemporaryDirectory(prefix="reliability_") as tmp:
        report = Path(tmp) / "junit.xml"
        output = run_tests(seed, report)
        if not report.is_file():
            print(output[-3000:])
            print("error: pytest wrote no report -- fix: run the command above and read its output", file=sys.stderr)
            return 2
        cases = read_cases(report)
    by_file: dict[str, list[dict]] = defaultdict(list)
    for case in cases:
        by_file[case["file"]].append(case)

    print(f"# Reliability record (KILL_RESUME_SEED={seed})\n")
    kill_tests = by_file[FAULTS]
    faults = [(c, value) for c in kill_tests for name, value in c["properties"] if name == "fault"]
    print(f"## Faults injected ({FAULTS}: {outcome_counts(kill_tests)})\n")
    rows = [[escape_pipes(fault), "yes" if case["outcome"] == "passed" else "NO"] for case, fault in faults]
    print(markdown_table(["fault", "the resumed run equals the uninterrupted one"], rows))
    resumed = sum(case["outcome"] == "passed" for case, _ in faults)
    print(f"\nfaults injected: {len(faults)}; resumed bit for bit: {resumed}\n")

    print("## Bad inputs (a refusal: one `error: ... -- fix: ...` line, exit code 2)\n")
    refusals = [c for c in kill_tests if not any(name == "fault" for name, _ in c["properties"])]
    rows = [[name, outcome_counts(by_file[name])] for name in BAD_INPUTS]
    rows.append([f"{FAULTS} (resume refusals)", outcome_counts(refusals)])
    print(markdown_table(["test file (its refusals and the accepted inputs beside them)", "cases"], rows))
    matrix = [c for c in by_file[BAD_INPUTS[0]] if c["name"].startswith("test_bad_input[")]
    checked = [int(v) for c in matrix for n, v in c["properties"] if n == "files_checked"]
    changed = sum(c["outcome"] == "failed" for c in matrix)
    print(
        f"\nmatrix: {len(matrix)} bad inputs against a workspace of pipeline outputs; after each, the sha256 of "
        f"all {max(checked, default=0)} pre-existing files re-checked ({sum(checked):,} checks); "
        f"cases that changed, added or lost a file: {changed}\n"
    )

    examples = hypothesis_examples(output)
    property_tests = by_file[PROPERTIES]
    print(f"## Fuzzed inputs ({PROPERTIES}: {outcome_counts(property_tests)})\n")
    rows = []
    for case in property_tests:
        counts = examples.get(case["name"])
        shown = " / ".join(f"{n:,}" for n in counts) if counts else "(not a Hypothesis test)"
        rows.append([escape_pipes(case["name"]), case["outcome"], shown])
    print(markdown_table(["property test", "outcome", "examples passing / failing / invalid"], rows))
    total = sum(counts[0] for counts in examples.values())
    print(f"\ngenerated examples that passed: {total:,}\n")

    print(f"## Determinism ({DETERMINISM}: {outcome_counts(by_file[DETERMINISM])})\n")
    for case in by_file[DETERMINISM]:
        print(f"- {case['name']}: {case['outcome']}")
    failed = [f"{c['file']}::{c['name']}" for c in cases if c["outcome"] == "failed"]
    print(f"\ntests failed: {len(failed)}" + "".join(f"\n  {name}" for name in failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
