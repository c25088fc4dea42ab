"""Kill-and-resume is exact: real SIGKILLs of `codeunlearn train` and `codeunlearn stats` subprocesses, at a random
step or batch and in the middle of a save, then `--resume`, end with exactly (bit for bit) the weights and
statistics of an uninterrupted run, lose nothing that was saved before the kill and leave no temporary behind.

Kill points are drawn from `random.Random(SEED)`. SEED is drawn anew for every test session and printed in every
assertion message; `KILL_RESUME_SEED=1234 pytest tests/test_kill_resume.py` replays that session's kill points (the
same steps, batches, saves and delays; an outside kill still lands wherever the process is after its delay).

Every run has one thread (OMP_NUM_THREADS=1 in the subprocesses, `torch.set_num_threads(1)` here), so runs differ
only in where they were killed. Training runs are subprocesses; the statistics' uninterrupted references run in this
process (a subprocess costs seconds of imports), so they also show that counting does not depend on the process. A
killed run goes through `INJECTOR`, a wrapper of the CLI that injects faults and nothing else:
- `KILL_TEST_PAUSE_AFTER=module:Class.method` sleeps after each call of that method (a metrics record, a partial
  statistics save), long enough for this test to see the progress it wrote and SIGKILL the process from outside;
- `KILL_TEST_SAVE_MATCH=REGEX` + `KILL_TEST_SAVE_NTH=N`: the N-th tensor file whose temporary path matches is
  written half and the process SIGKILLs itself, in the middle of a real atomic save.
Weights are compared tensor by tensor (`load_tensors` + `torch.equal`), not as file bytes: safetensors writes its
metadata keys in no fixed order.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from helpers import FORGET_WORDS, make_cli_workspace, run_error, run_ok, write_corpus

from codeunlearn.io import load_tensors
from codeunlearn.unlearn.statistics import partial_statistics_path, read_partial_state

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(1)  # the in-process references count with the subprocesses' one thread
SEED = int(os.environ.get("KILL_RESUME_SEED") or random.SystemRandom().randrange(2**32))
WHERE = f"(KILL_RESUME_SEED={SEED} replays this)"
PAUSE = 0.2  # seconds a killed run waits after each step or partial save: the window the test kills in
STATS_PAUSE = 0.1
TIMEOUT = 120.0
# A hidden temporary of `codeunlearn.io`'s atomic saves (`.NAME.XXXXXXXX`, `.NAME.tmp.XXXXXXXX`).
TEMPORARY = re.compile(r"\..+\.((tmp|old)\.)?[a-z0-9_]{8}")

KEY_STEPS, VALUE_STEPS = 4, 4
TOTAL = KEY_STEPS + VALUE_STEPS
SHAPE = ["--layers", "1", "--num_heads", "4", "--codebook_size", "16", "--num_stages", "1"]
TRAIN = [
    *SHAPE,
    "--key_steps",
    str(KEY_STEPS),
    "--value_steps",
    str(VALUE_STEPS),
    "--batch_size",
    "4",
    "--kmeans_init_tokens",
    "64",
    "--seq_len",
    "16",
    "--checkpoint_every",
    "1",
    "--log_every",
    "1",
    "--retain_statistics_tokens",
    "256",
    "--no_progress",
]
STATS = ["--seq_len", "32", "--batch_size", "1", "--checkpoint_every", "1", "--no_bf16", "--no_progress"]

INJECTOR = '''
"""The codeunlearn CLI with the fault injectors of test_kill_resume (see its docstring)."""
import importlib
import os
import re
import signal
import sys
import time

import codeunlearn.io

pause_after = os.environ.get("KILL_TEST_PAUSE_AFTER")
if pause_after:
    module, _, attribute = pause_after.partition(":")
    owner = importlib.import_module(module)
    *parents, name = attribute.split(".")
    for parent in parents:
        owner = getattr(owner, parent)
    original = getattr(owner, name)
    seconds = float(os.environ["KILL_TEST_PAUSE_SECONDS"])

    def paused(*args, **kwargs):
        result = original(*args, **kwargs)
        time.sleep(seconds)
        return result

    setattr(owner, name, paused)

save_match = os.environ.get("KILL_TEST_SAVE_MATCH")
if save_match:
    real_save = codeunlearn.io.save_file
    countdown = [int(os.environ["KILL_TEST_SAVE_NTH"])]

    def dying_save(tensors, filename, metadata=None):
        if re.search(save_match, str(filename)):
            countdown[0] -= 1
            if countdown[0] == 0:  # write the whole file, keep its first half, die before the rename
                real_save(tensors, filename, metadata=metadata)
                data = open(filename, "rb").read()
                with open(filename, "wb") as handle:
                    handle.write(data[: len(data) // 2])
                os.kill(os.getpid(), signal.SIGKILL)
        return real_save(tensors, filename, metadata=metadata)

    codeunlearn.io.save_file = dying_save

from codeunlearn.cli import main

sys.exit(main(sys.argv[1:]))
'''


def environment(**faults: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    env["TOKENIZERS_PARALLELISM"] = "false"
    for name in ("KILL_TEST_PAUSE_AFTER", "KILL_TEST_PAUSE_SECONDS", "KILL_TEST_SAVE_MATCH", "KILL_TEST_SAVE_NTH"):
        env.pop(name, None)
    env.update(faults)
    return env


def run_cli(argv: list[str], injector: Path | None = None, **faults: str) -> subprocess.CompletedProcess:
    """Run the CLI in a subprocess (through the fault injector when given) to its end, whatever that is."""
    entry = [str(injector)] if injector else ["-m", "codeunlearn"]
    return subprocess.run(
        [sys.executable, *entry, *argv], env=environment(**faults), capture_output=True, text=True, timeout=TIMEOUT
    )


def run_finished(argv: list[str]) -> None:
    result = run_cli(argv)
    assert result.returncode == 0, f"{WHERE}\n{result.stdout}\n{result.stderr}"


def run_killed_in_save(argv: list[str], injector: Path, match: str, nth: int) -> None:
    """Run until the `nth` save whose temporary path matches `match` SIGKILLs the process halfway through."""
    result = run_cli(argv, injector, KILL_TEST_SAVE_MATCH=match, KILL_TEST_SAVE_NTH=str(nth))
    assert result.returncode == -signal.SIGKILL, (
        f"not killed in save {nth} matching {match} {WHERE}\n{result.stdout}\n{result.stderr}"
    )


def run_killed_at(
    argv: list[str],
    injector: Path,
    pause_after: str,
    pause: float,
    reached: Callable[[], tuple[int, int] | None],
    pick_target: Callable[[int], int],
    jitter: float,
    log: Path,
) -> int:
    """Start a run that pauses `pause` s after each `pause_after` call, SIGKILL it from outside `jitter` s after
    `reached()` (progress, out of a total) first shows the target `pick_target(total)`; returns the target."""
    env = environment(KILL_TEST_PAUSE_AFTER=pause_after, KILL_TEST_PAUSE_SECONDS=str(pause))
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as output:
        process = subprocess.Popen(
            [sys.executable, str(injector), *argv], env=env, stdout=output, stderr=subprocess.STDOUT
        )
        try:
            target, deadline = None, time.monotonic() + TIMEOUT
            while True:
                progress = reached()
                if progress is not None:
                    target = pick_target(progress[1]) if target is None else target
                    if progress[0] >= target:
                        break
                assert process.poll() is None, f"run ended before {target} {WHERE}\n{log.read_text()}"
                assert time.monotonic() < deadline, f"no progress to {target} {WHERE}\n{log.read_text()}"
                time.sleep(0.01)
            time.sleep(jitter)
            process.send_signal(signal.SIGKILL)
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL, f"finished before the kill at {target} {WHERE}\n{log.read_text()}"
    return target


def last_logged_step(metrics: Path) -> tuple[int, int] | None:
    """The last step in a training run's metrics.jsonl (a line being written is skipped) and the run's total."""
    steps = []
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError, KeyError):  # a line still being written
                steps.append(json.loads(line)["step"])
    return (steps[-1], TOTAL) if steps else None


def batches_done(partial: Path) -> tuple[int, int] | None:
    """Batches counted so far by the single process of a statistics pass, out of its total, from its partial
    state."""
    file = partial / "rank-0.safetensors"
    if not file.is_file():
        return None
    state = read_partial_state(file)
    return state["batches_done"], state["num_batches"]


def assert_same_tensors(path: Path, reference: Path) -> None:
    mine, theirs = load_tensors(path), load_tensors(reference)
    assert mine.keys() == theirs.keys(), f"{path} {WHERE}"
    for name, tensor in theirs.items():
        assert mine[name].dtype == tensor.dtype and torch.equal(mine[name], tensor), f"{path}: {name} {WHERE}"


def assert_same_tree(directory: Path, reference: Path) -> None:
    """Every tensor file under `reference` is under `directory` with equal tensors, and no other is."""
    files = sorted(p.relative_to(reference) for p in reference.rglob("*.safetensors"))
    assert files == sorted(p.relative_to(directory) for p in directory.rglob("*.safetensors")), f"{directory} {WHERE}"
    for relative in files:
        assert_same_tensors(directory / relative, reference / relative)


def temporaries(root: Path) -> list[Path]:
    return [p for p in root.rglob(".*") if TEMPORARY.fullmatch(p.name)]


def without_time(metrics: Path) -> list[dict]:
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in metrics.read_text().splitlines()]


def checkpoint_state(checkpoint: Path) -> dict:
    """trainer_state.json without its arguments (the reference keeps more checkpoints)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    state.pop("args")
    return state


def hashes(directory: Path) -> dict[str, str]:
    """sha256 of every file under `directory`, by relative path."""
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    """The tiny Llama and corpora, a sharded corpus (a folder of 8 files) and the fault-injecting CLI wrapper."""
    ws = make_cli_workspace(tmp_path_factory.mktemp("kill_resume"))
    shards = ws["root"] / "shards"
    shards.mkdir()
    for index in range(8):
        write_corpus(shards / f"part-{index:02d}.txt", FORGET_WORDS, docs=1, seed=100 + index)
    injector = ws["root"] / "inject_faults.py"
    injector.write_text(INJECTOR)
    return {**ws, "shards": shards, "injector": injector}


def train_argv(ws: dict[str, Path], output_dir: Path) -> list[str]:
    corpora = ["--model_name_or_path", str(ws["model"]), "--corpora", str(ws["retain"])]
    return ["train", *corpora, *TRAIN, "--output_dir", str(output_dir)]


@pytest.fixture(scope="module")
def reference_run(workspace) -> Path:
    """An uninterrupted training subprocess that keeps every checkpoint: the reference of every resumed run, and
    the bottleneck the statistics passes count on."""
    out = workspace["root"] / "reference"
    run_finished([*train_argv(workspace, out), "--keep_checkpoints", "100"])
    return out


def test_training_killed_at_random_steps_resumes_exactly(workspace, reference_run, tmp_path, record_property):
    """SIGKILLed from outside at a random key step, resumed, SIGKILLed at a random value step, resumed: the
    weights, the retain statistics and the metrics equal the uninterrupted run's."""
    rng = random.Random(f"{SEED}-train-steps")
    out = tmp_path / "run"
    argv = train_argv(workspace, out)
    metrics = out / "metrics.jsonl"
    kill = dict(injector=workspace["injector"], pause_after="codeunlearn.train.base:TrainingRun.log", pause=PAUSE)
    # A kill lands less than two pauses after the target is logged (in that pause, its checkpoint save or the next
    # step), so each target leaves a step after it: the run never finishes before the kill. Step 1 is no target: a
    # kill before its checkpoint leaves nothing to resume.
    key = run_killed_at(
        argv,
        **kill,
        reached=lambda: last_logged_step(metrics),
        pick_target=lambda _: rng.randint(2, KEY_STEPS - 1),
        jitter=rng.uniform(0, 1.5 * PAUSE),
        log=tmp_path / "key.log",
    )
    assert not (out / "bottleneck").exists(), WHERE
    value = run_killed_at(
        [*argv, "--resume"],
        **kill,
        reached=lambda: last_logged_step(metrics),
        pick_target=lambda _: rng.randint(KEY_STEPS + 1, TOTAL - 2),
        jitter=rng.uniform(0, 1.5 * PAUSE),
        log=tmp_path / "value.log",
    )
    assert not (out / "bottleneck").exists(), WHERE
    run_finished([*argv, "--resume"])
    message = f"killed at steps {key} and {value} {WHERE}"
    record_property("fault", f"train: SIGKILL at key step {key}")  # read by benchmarks/reliability_record.py
    record_property("fault", f"train: SIGKILL at value step {value}")
    assert_same_tree(out / "bottleneck", reference_run / "bottleneck")
    assert without_time(metrics) == without_time(reference_run / "metrics.jsonl"), message
    assert temporaries(out) == [], message


def test_training_killed_during_saves_resumes_exactly(workspace, reference_run, tmp_path, record_property):
    """SIGKILLed halfway through writing a random file of a random checkpoint, resumed, SIGKILLed halfway through
    the final bottleneck save, resumed: the checkpoints saved before each kill are intact, the temporaries are
    cleaned, and the weights equal the uninterrupted run's."""
    rng = random.Random(f"{SEED}-train-saves")
    out = tmp_path / "run"
    argv = train_argv(workspace, out)
    checkpoints, reference_checkpoints = out / "checkpoints", reference_run / "checkpoints"
    step = rng.randint(2, TOTAL)
    nth = rng.randint(1, 3)  # a checkpoint writes 3 tensor files: bottleneck, codebook usage, RNG state
    run_killed_in_save(argv, workspace["injector"], rf"/checkpoints/\.step-{step:07d}\.tmp\.", nth)
    message = f"killed in file {nth} of checkpoint {step} {WHERE}"
    record_property("fault", f"train: SIGKILL halfway through file {nth} of 3 of checkpoint {step}")
    assert len(list(checkpoints.glob(f".step-{step:07d}.tmp.*"))) == 1, message  # the kill left it mid-save
    kept = sorted(p.name for p in checkpoints.glob("step-*"))
    assert kept == [f"step-{s:07d}" for s in range(max(1, step - 2), step)], message  # the 2 newest, intact:
    for name in kept:
        assert_same_tree(checkpoints / name, reference_checkpoints / name)
        assert checkpoint_state(checkpoints / name) == checkpoint_state(reference_checkpoints / name), message

    # OUT/.bottleneck.tmp.X/: a checkpoint's bottleneck is saved as CHECKPOINT/.bottleneck.tmp.Y/ too.
    final_save = re.escape(str(out)) + r"/\.bottleneck\.tmp\.[a-z0-9_]{8}/"
    run_killed_in_save([*argv, "--resume"], workspace["injector"], final_save, 1)
    message = f"{message}, then in the final save"
    record_property("fault", "train: SIGKILL halfway through the final bottleneck save")
    leftover = list(out.glob(".bottleneck.tmp.*"))  # the checkpoint's went when its step was saved again
    assert len(leftover) == 1, message
    assert all(p == leftover[0] or leftover[0] in p.parents for p in temporaries(out)), message
    assert not (out / "bottleneck").exists(), message
    last = f"step-{TOTAL:07d}"
    assert_same_tree(checkpoints / last, reference_checkpoints / last)

    run_finished([*argv, "--resume"])
    assert temporaries(out) == [], message
    assert_same_tree(out / "bottleneck", reference_run / "bottleneck")
    assert without_time(out / "metrics.jsonl") == without_time(reference_run / "metrics.jsonl"), message


# Statistics over the sharded corpus -------------------------------------------------------------------------------


def stats_argv(ws: dict[str, Path], bottleneck: Path, output: Path) -> list[str]:
    corpora = ["--model_name_or_path", str(ws["model"]), "--corpora", str(ws["shards"])]
    return ["stats", "--bottleneck_dir", str(bottleneck), *corpora, *STATS, "--output_file", str(output)]


def assert_same_statistics(output: Path, reference: Path, message: str) -> None:
    assert_same_tensors(output, reference)
    summary, expected = (json.loads(p.with_suffix(".json").read_text()) for p in (output, reference))
    assert summary == expected, message
    assert not partial_statistics_path(output).exists(), message  # removed once the result was saved
    assert temporaries(output.parent) == [], message


def kill_stats_at_random_batch(ws: dict[str, Path], argv: list[str], output: Path, rng: random.Random) -> int:
    """SIGKILL a statistics pass from outside at a random batch (each saved, then a pause); returns it."""
    partial = partial_statistics_path(output)
    return run_killed_at(
        argv,
        ws["injector"],
        "codeunlearn.unlearn.statistics:StatisticsCheckpoint.save",
        STATS_PAUSE,
        reached=lambda: batches_done(partial),
        pick_target=lambda total: rng.randint(1, total - 3),
        jitter=rng.uniform(0, 1.5 * STATS_PAUSE),
        log=output.with_suffix(".log"),
    )


def run_in_process(argv: list[str]) -> None:
    """Run the CLI in this process (one thread, as the subprocesses): cheaper than a subprocess, for references
    and the SAE the statistics count on."""
    from codeunlearn.cli import main

    assert main(argv) == 0, argv


@pytest.fixture(scope="module")
def stats_reference(workspace, reference_run) -> Path:
    """An uninterrupted statistics pass over the sharded corpus."""
    output = workspace["root"] / "stats_reference" / "forget.safetensors"
    run_in_process(stats_argv(workspace, reference_run / "bottleneck", output))
    return output


@pytest.fixture(scope="module")
def interrupted_stats(workspace, reference_run) -> Path:
    """A statistics pass SIGKILLed at a random batch (its folder holds only the partial state); tests copy it."""
    output = workspace["root"] / "stats_interrupted" / "forget.safetensors"
    argv = stats_argv(workspace, reference_run / "bottleneck", output)
    kill_stats_at_random_batch(workspace, argv, output, random.Random(f"{SEED}-stats-batch"))
    output.with_suffix(".log").unlink()
    return output


def copy_of(interrupted: Path, tmp_path: Path) -> Path:
    shutil.copytree(interrupted.parent, tmp_path / "stats")
    return tmp_path / "stats" / interrupted.name


def test_statistics_killed_at_a_random_batch_and_in_a_save_resume_exactly(
    workspace, reference_run, stats_reference, interrupted_stats, tmp_path, record_property
):
    """Killed from outside at a random batch, resumed and killed halfway through writing a random partial state,
    resumed: the statistics and their summary equal the uninterrupted pass's, and the partial state is gone."""
    rng = random.Random(f"{SEED}-stats-save")
    output = copy_of(interrupted_stats, tmp_path)
    argv = stats_argv(workspace, reference_run / "bottleneck", output)
    partial = partial_statistics_path(output)
    done, total = batches_done(partial)
    assert not output.exists() and 1 <= done < total, WHERE
    nth = rng.randint(1, total - done - 1)  # the resumed pass saves after each of its batches but the last
    run_killed_in_save([*argv, "--resume"], workspace["injector"], r"/\.rank-0\.safetensors\.[a-z0-9_]{8}$", nth)
    message = f"killed after batch {done}, then in partial save {nth} {WHERE}"
    record_property("fault", f"stats (sharded codebook): SIGKILL after batch {done} of {total}")
    record_property("fault", f"stats (sharded codebook): SIGKILL halfway through partial save {nth} after resuming")
    assert len(temporaries(partial)) == 1 and not output.exists(), message
    assert batches_done(partial) == (done + nth - 1, total), message  # the state saved before the kill is intact
    run_finished([*argv, "--resume"])
    assert_same_statistics(output, stats_reference, message)


def test_sae_statistics_killed_at_a_random_batch_resume_exactly(workspace, tmp_path, record_property):
    """An SAE's float64 activation sums (where the order of additions matters) resume bit for bit."""
    rng = random.Random(f"{SEED}-sae")
    run = tmp_path / "sae"
    sae = ["--bottleneck", "sae", "--layers", "1", "--sae_width", "64", "--sae_k", "4", "--sae_steps", "3"]
    corpora = ["--model_name_or_path", str(workspace["model"]), "--corpora", str(workspace["retain"])]
    steps = ["--batch_size", "4", "--kmeans_init_tokens", "64", "--seq_len", "16", "--retain_statistics_tokens", "0"]
    run_in_process(["train", *corpora, *sae, *steps, "--no_progress", "--output_dir", str(run)])
    reference, output = tmp_path / "reference" / "forget.safetensors", tmp_path / "killed" / "forget.safetensors"
    run_in_process(stats_argv(workspace, run / "bottleneck", reference))
    assert load_tensors(reference)["1.activation_sum"].dtype == torch.float64
    argv = stats_argv(workspace, run / "bottleneck", output)
    batch = kill_stats_at_random_batch(workspace, argv, output, rng)
    record_property("fault", f"stats (SAE): SIGKILL at batch {batch}")
    run_finished([*argv, "--resume"])
    assert_same_statistics(output, reference, f"killed at batch {batch} {WHERE}")


def test_two_process_statistics_killed_in_a_save_resume_exactly(
    workspace, reference_run, stats_reference, tmp_path, capsys, record_property
):
    """Data-parallel (torchrun, 2 processes): one process SIGKILLed halfway through writing its partial state takes
    the launch down; each process kept its own state, a resume on 1 process is refused without touching them, and a
    resume on 2 processes counts exactly what one uninterrupted process counts."""
    rng = random.Random(f"{SEED}-two-processes")
    output = tmp_path / "stats" / "forget.safetensors"
    argv = stats_argv(workspace, reference_run / "bottleneck", output)
    torchrun = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2"]
    nth = rng.randint(2, 5)  # of 10 (22 chunks, 11 batches a process): both have saved a state by then
    faults = environment(KILL_TEST_SAVE_MATCH=r"/\.rank-1\.safetensors\.[a-z0-9_]{8}$", KILL_TEST_SAVE_NTH=str(nth))
    killed = subprocess.run(
        [*torchrun, str(workspace["injector"]), *argv], env=faults, capture_output=True, text=True, timeout=TIMEOUT
    )
    message = f"process 1 killed in partial save {nth} {WHERE}"
    record_property("fault", f"stats (2 processes): SIGKILL of process 1 halfway through its partial save {nth}")
    assert killed.returncode != 0 and "exitcode  : -9" in killed.stderr, f"{message}\n{killed.stderr[-3000:]}"
    partial = partial_statistics_path(output)
    assert sorted(p.name for p in partial.iterdir() if not p.name.startswith(".")) == [
        "rank-0.safetensors",
        "rank-1.safetensors",
    ], message
    # Process 1's half-written state; process 0 may leave one too (torchrun ends it with SIGTERM, maybe mid-save).
    assert [p.name.split(".")[1] for p in temporaries(partial)] in (["rank-1"], ["rank-0", "rank-1"]), message
    assert read_partial_state(partial / "rank-1.safetensors")["batches_done"] == nth - 1, message

    before = hashes(partial)
    error = run_error([*argv, "--resume"], capsys)
    assert "world_size 2, this run has 1" in error and "launch 2 process(es)" in error
    assert hashes(partial) == before and not output.exists()

    resumed = subprocess.run(
        [*torchrun, "--module", "codeunlearn", *argv, "--resume"],
        env=environment(),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert resumed.returncode == 0, f"{message}\n{resumed.stderr}"
    assert_same_statistics(output, stats_reference, message)


# The command line's refusals (one line, exit 2, nothing changed) -------------------------------------------------


def test_partial_state_without_resume_is_refused_and_kept(workspace, interrupted_stats, tmp_path, capsys):
    output = copy_of(interrupted_stats, tmp_path)
    before = hashes(output.parent)
    argv = stats_argv(workspace, tmp_path / "unused", output)
    error = run_error(argv, capsys)
    assert str(partial_statistics_path(output)) in error and "batches" in error
    assert "--resume to continue" in error and "--overwrite to start over" in error
    assert hashes(output.parent) == before
    # An earlier result beside it: the partial state is named first (the output's own fix, --overwrite, would
    # throw the interrupted count away without saying so).
    output.write_bytes(b"an earlier result")
    before = hashes(output.parent)
    assert "--resume to continue" in run_error(argv, capsys)
    error = run_error([*argv, "--resume", "--overwrite"], capsys)
    assert "--resume" in error and "--overwrite alone" in error
    assert hashes(output.parent) == before


def test_resume_without_partial_state_names_where_it_looked(workspace, tmp_path, capsys):
    output = tmp_path / "stats" / "forget.safetensors"
    error = run_error([*stats_argv(workspace, tmp_path / "unused", output), "--resume"], capsys)
    assert str(partial_statistics_path(output)) in error and "--output_file" in error
    assert "drop --resume" not in error
    assert not (tmp_path / "stats").exists()


def test_resume_with_another_batch_size_is_refused(workspace, reference_run, interrupted_stats, tmp_path, capsys):
    output = copy_of(interrupted_stats, tmp_path)
    before = hashes(output.parent)
    argv = stats_argv(workspace, reference_run / "bottleneck", output)
    error = run_error([*argv, "--resume", "--batch_size", "2"], capsys)
    assert "batch_size 1" in error and "--batch_size" in error.split("-- fix:")[1]
    assert hashes(output.parent) == before


def test_overwrite_discards_the_partial_state(
    workspace, reference_run, stats_reference, interrupted_stats, tmp_path, capsys
):
    output = copy_of(interrupted_stats, tmp_path)
    run_ok([*stats_argv(workspace, reference_run / "bottleneck", output), "--overwrite"], capsys)
    assert_same_statistics(output, stats_reference, WHERE)


@pytest.mark.parametrize("flag", ["--checkpoint_every", "--batch_size"])
def test_stats_counts_are_range_checked(workspace, tmp_path, capsys, flag):
    output = tmp_path / "forget.safetensors"
    error = run_error([*stats_argv(workspace, tmp_path / "unused", output), flag, "0"], capsys)
    assert f"{flag} 0 is out of range" in error and ">= 1" in error
    assert list(tmp_path.iterdir()) == []
