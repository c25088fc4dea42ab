"""Data parallelism with real CPU processes over gloo: 2 ranks against 1 process.

- the collectives of `codeunlearn.distributed` and the k-means fit, in 2 spawned processes;
- `codeunlearn train` under `accelerate launch` (configs/accelerate/cpu.yaml) at batch b per rank against one process
  at batch 2b: the same learning-rate schedule, keys equal to float rounding, values within a stated tolerance, the
  retain statistics exactly equal, one writer;
- `codeunlearn stats` under `torchrun`: exactly the counts of one process;
- resuming a 2-process run in one process, and the launches that are refused.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from helpers import make_cli_workspace
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from codeunlearn import distributed
from codeunlearn.cli import main
from codeunlearn.errors import CodeunlearnError
from codeunlearn.kinds.codebook.kmeans import kmeans

REPO = Path(__file__).resolve().parents[1]
CPU_CONFIG = REPO / "configs" / "accelerate" / "cpu.yaml"
BIN = Path(sys.executable).parent


# ----------------------------------------------------------------------------------------------- collectives
def _points() -> torch.Tensor:
    return torch.randn(2, 203, 3, generator=torch.Generator().manual_seed(5))


def _collectives(rank: int, world: int, init_file: str, results: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        rows = torch.arange(7 * 2).view(7, 2)
        mine = distributed.share(rows)
        points = _points()
        keys, counts, assign = kmeans(
            distributed.share(points.transpose(0, 1)).transpose(0, 1), 8, 3, torch.Generator().manual_seed(0)
        )
        out = {
            "share": mine,
            "gathered": distributed.gather_rows(mine),
            "sum": distributed.all_sum(rank + 1),
            "mean": distributed.all_mean(mine.float(), 0),
            "keys": keys,
            "counts": counts,
            "assign": distributed.gather_rows(assign.T.contiguous()).T,
        }
        try:
            distributed.check_same_everywhere("a value", f"rank {rank}", "launch every process alike")
        except CodeunlearnError as err:
            out["disagreement"] = str(err)
        distributed.check_same_everywhere("a value", "the same", "unused")  # agreement passes
        torch.save(out, Path(results) / f"{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_collectives_and_kmeans_across_two_processes(tmp_path):
    """Shares split rows in rank order (7 rows: 4 + 3) and gather back; sums and means are over both; two ranks
    fit the k-means keys of one process holding every point (same start, summed sums and counts)."""
    mp.spawn(_collectives, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    got = [torch.load(tmp_path / f"{rank}.pt", weights_only=True) for rank in range(2)]
    rows = torch.arange(14).view(7, 2)
    assert torch.equal(got[0]["share"], rows[:4]) and torch.equal(got[1]["share"], rows[4:])
    single_keys, single_counts, single_assign = kmeans(_points(), 8, 3, torch.Generator().manual_seed(0))
    for out in got:
        assert torch.equal(out["gathered"], rows)
        assert out["sum"] == 3
        torch.testing.assert_close(out["mean"], rows.float().mean(0))
        torch.testing.assert_close(out["keys"], single_keys, rtol=1e-5, atol=1e-6)
        assert torch.equal(out["counts"], single_counts)
        assert torch.equal(out["assign"], single_assign)
        assert out["disagreement"] == "the 2 processes disagree on a value -- fix: launch every process alike"
    assert torch.equal(got[0]["keys"], got[1]["keys"])  # every process holds the same keys, bit for bit


# ----------------------------------------------------------------------------------------------- commands
@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> dict[str, Path]:
    return make_cli_workspace(tmp_path_factory.mktemp("distributed"))


def flags(ws: dict[str, Path]) -> list[str]:
    return ["--model_name_or_path", str(ws["model"]), "--seq_len", "16", "--heldout_fraction", "0.3"]


def train_flags(ws: dict[str, Path], batch_size: int, output_dir: Path) -> list[str]:
    return [
        *flags(ws),
        "--corpora",
        str(ws["retain"]),
        "--layers",
        "1",
        "--codebook_size",
        "16",
        "--num_stages",
        "2",
        "--num_heads",
        "2",
        "--key_steps",
        "3",
        "--value_steps",
        "5",
        "--warmup_steps",
        "1",
        "--kmeans_init_tokens",
        "64",
        "--retain_statistics_tokens",
        "256",
        "--log_every",
        "1",
        "--checkpoint_every",
        "2",
        "--no_progress",
        "--batch_size",
        str(batch_size),
        "--output_dir",
        str(output_dir),
    ]


def launch(launcher: list[str], argv: list[str], **env: str) -> subprocess.CompletedProcess:
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    return subprocess.run(
        [*launcher, *argv], capture_output=True, text=True, cwd=REPO, env=environment, timeout=600, check=False
    )


ACCELERATE = [str(BIN / "accelerate"), "launch", "--config_file", str(CPU_CONFIG), str(BIN / "codeunlearn")]
TORCHRUN = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--module", "codeunlearn"]


def weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(run / "bottleneck" / "bottleneck.safetensors")


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def retain_counts(run: Path) -> dict[str, torch.Tensor]:
    (path,) = glob.glob(str(run / "bottleneck" / "statistics" / "*.safetensors"))
    return load_file(path)


@pytest.fixture(scope="module")
def one_and_two(workspace) -> tuple[Path, Path, subprocess.CompletedProcess]:
    """The same training run in one process at batch 4 and in two (accelerate launch) at batch 2 each."""
    root = workspace["root"]
    assert main(["train", *train_flags(workspace, 4, root / "one")]) == 0
    two = launch(ACCELERATE, ["train", *train_flags(workspace, 2, root / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    return root / "one", root / "two", two


def test_two_processes_train_what_one_process_trains(one_and_two):
    one, two, launched = one_and_two
    first, second = metrics(one), metrics(two)
    # One writer: every step logged once; the schedule advances once per optimizer step (cosine to 0, no climb back).
    assert [m["step"] for m in second] == [m["step"] for m in first] == list(range(1, 9))
    assert [m.get("lr") for m in second] == [m.get("lr") for m in first]
    # codebook usage over both processes' shares: what one process reading both counts (layer 1 reads the frozen
    # model's states, so the codes are the same)
    for usage in ("codes_used_in_batch", "dead_codes_in_window"):
        assert [m.get(usage) for m in second] == [m.get(usage) for m in first], usage
    assert all(m.get("codes_used_in_batch") for m in first[1:])
    assert [m["lr"] for m in first if "lr" in m][-1] == 0.0
    assert {m["effective_batch"] for m in second} == {4}
    # one writer: the bottleneck and its training curves, each once
    assert launched.stdout.count("wrote ") == 2 and "2 processes x batch_size 2 = 4 chunks per step" in launched.stdout
    a, b = weights(one), weights(two)
    assert a.keys() == b.keys()
    for name in a:
        if "values" in name:
            # Adam steps on gradients that differ only in summation order: well under one learning-rate step (1e-2).
            torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-4, msg=name)
        else:  # keys, counts, mean, norm: summed k-means and EMA statistics, equal to float rounding
            torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-6, msg=name)
    count_a, count_b = retain_counts(one), retain_counts(two)
    assert all(torch.equal(count_a[k], count_b[k]) for k in count_a)


def test_statistics_of_two_torchrun_processes_equal_one_process(one_and_two, workspace, tmp_path):
    one, _, _ = one_and_two
    argv = [*flags(workspace), "--corpora", str(workspace["forget"]), "--bottleneck_dir", str(one / "bottleneck")]
    assert main(["stats", *argv, "--output_file", str(tmp_path / "one.safetensors"), "--no_progress"]) == 0
    two = launch(TORCHRUN, ["stats", *argv, "--output_file", str(tmp_path / "two.safetensors"), "--no_progress"])
    assert two.returncode == 0, two.stderr[-3000:]
    a, b = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert int(a["1"].sum()) > 0
    summaries = [json.loads((tmp_path / f"{n}.json").read_text()) for n in ("one", "two")]
    assert summaries[0]["tokens"] == summaries[1]["tokens"]


def test_a_two_process_run_resumes_in_one_process(one_and_two, workspace, tmp_path):
    """Stopped after step 4 on 2 processes x 2 chunks, continued on 1 process x 4 chunks: the same chunks per step,
    so it ends where the uninterrupted one-process run ends; 1 x 2 chunks is refused, and nothing is written."""
    one, _, _ = one_and_two
    run = tmp_path / "resumed"
    stopped = launch(ACCELERATE, ["train", *train_flags(workspace, 2, run), "--stop_after_steps", "4"])
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    wrong = launch([str(BIN / "codeunlearn")], ["train", *train_flags(workspace, 2, run), "--resume"])
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1] == (
        "error: checkpoint step-0000004 was trained at 2 process(es) x batch_size 2 = 4 chunks per step; this run "
        "reads 2 -- fix: resume with processes x batch_size x gradient_accumulation_steps = 4 (e.g. --batch_size 4 "
        "on 1 process(es), if it divides)"
    )
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before
    assert main(["train", *train_flags(workspace, 4, run), "--resume"]) == 0
    usage = [[m.get(k) for k in ("codes_used_in_batch", "dead_codes_in_window")] for m in metrics(one)]
    assert [[m.get(k) for k in ("codes_used_in_batch", "dead_codes_in_window")] for m in metrics(run)] == usage
    a, b = weights(one), weights(run)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-5, atol=1e-4, msg=name)


def test_two_processes_train_the_sae_one_process_trains(workspace, tmp_path):
    """An SAE: the schedule once per optimizer step, gradients averaged over equal shares (every chunk has the same
    ordinary tokens here), so the weights are one process's to well under one Adam step (3e-3)."""
    sae = [*flags(workspace), "--corpora", str(workspace["retain"]), "--bottleneck", "sae", "--layers", "1"]
    sae += ["--sae_width", "64", "--sae_k", "4", "--sae_steps", "6", "--sae_learning_rate", "3e-3"]
    sae += ["--kmeans_init_tokens", "64", "--warmup_steps", "1", "--log_every", "1", "--no_progress"]
    sae += ["--retain_statistics_tokens", "0"]
    assert main(["train", *sae, "--batch_size", "4", "--output_dir", str(tmp_path / "one")]) == 0
    two = launch(ACCELERATE, ["train", *sae, "--batch_size", "2", "--output_dir", str(tmp_path / "two")])
    assert two.returncode == 0, two.stderr[-3000:]
    first, second = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["lr"] for m in second] == [m["lr"] for m in first] and first[-1]["lr"] == 0.0
    assert len(second) == 6
    (a_file,) = glob.glob(str(tmp_path / "one" / "bottleneck" / "**" / "*.safetensors"), recursive=True)
    a = load_file(a_file)
    b = load_file(a_file.replace(str(tmp_path / "one"), str(tmp_path / "two")))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=2e-4, msg=name)


FSDP_CONFIG = REPO / "configs" / "accelerate" / "fsdp.yaml"


def test_two_fsdp_processes_shard_the_base_and_train_what_one_process_trains(workspace, tmp_path):
    """configs/accelerate/fsdp.yaml on 2 CPU processes: each holds half of the base weights, the bottleneck and its
    downstream LoRA adapters stay whole, and the run ends where one process at twice the batch ends. Odd chunk counts (5 k-means chunks, 17 retain
    statistics chunks) give the processes unequal shares, which a sharded forward must still run in lockstep."""
    uneven = ["--kmeans_init_tokens", "80", "--retain_statistics_tokens", "272", "--adapter_rank", "2"]
    assert main(["train", *train_flags(workspace, 4, tmp_path / "one"), *uneven]) == 0
    launcher = [str(BIN / "accelerate"), "launch", "--config_file", str(FSDP_CONFIG), "--num_processes", "2"]
    two = launch(
        [*launcher, str(BIN / "codeunlearn")], ["train", *train_flags(workspace, 2, tmp_path / "two"), *uneven]
    )
    assert two.returncode == 0, two.stderr[-3000:]
    line = next(x for x in two.stdout.splitlines() if x.startswith("FSDP:"))
    held, total = (int(n.replace(",", "")) for n in line.split("(")[1].split(" parameters")[0].split(" of its "))
    assert total == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(workspace["model"]).parameters())
    assert abs(held - total / 2) <= 64, line  # each process holds half, up to the rounding of odd dimensions
    first, second = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m.get("lr") for m in second] == [m.get("lr") for m in first] and len(second) == 8
    a, b = weights(tmp_path / "one"), weights(tmp_path / "two")
    for name in a:  # the tolerances of the DDP test above: FSDP changes where the base weights live, not the math
        trained = "values" in name or "lora" in name
        torch.testing.assert_close(
            b[name], a[name], rtol=0 if trained else 1e-5, atol=1e-4 if trained else 1e-6, msg=name
        )
    count_a, count_b = retain_counts(tmp_path / "one"), retain_counts(tmp_path / "two")
    assert all(torch.equal(count_a[k], count_b[k]) for k in count_a) and int(count_a["1"].sum()) > 0


def test_launches_that_would_run_copies_are_refused(workspace, tmp_path):
    """WORLD_SIZE > 1 without a process group to join, or a one-process command under a launcher: one line each."""
    cli = [str(BIN / "codeunlearn")]
    lonely = launch(cli, ["train", *train_flags(workspace, 2, tmp_path / "x")], WORLD_SIZE="2", RANK="0")
    assert lonely.returncode == 2
    line = lonely.stderr.strip().splitlines()[-1]
    assert line.startswith("error: launched with WORLD_SIZE=2 but the process group could not be joined")
    assert "-- fix: launch with `accelerate launch --config_file configs/accelerate/FILE.yaml" in line
    assert not (tmp_path / "x").exists()
    export = launch(TORCHRUN, ["export", "--help"])
    assert export.returncode != 0
    assert (
        "error: `codeunlearn export` runs in one process, but it was launched as 2 processes -- fix: run it without"
        in (export.stderr)
    )


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="checks the CPU-only join")
def test_join_outside_a_launch_is_one_process():
    accelerator = distributed.join()
    assert accelerator.num_processes == 1 and distributed.world_size() == 1 and distributed.is_main_process()


def test_every_accelerate_config_file_loads():
    """The config files the docs name are ones accelerate reads, each a local launch of the kind its name says."""
    from accelerate.commands.config.config_args import ClusterConfig

    expected = {"cpu": ("MULTI_GPU", 2, 1), "gpu": ("NO", 1, 1), "multi_gpu": ("MULTI_GPU", 8, 1)}
    expected["multi_node"] = ("MULTI_GPU", 16, 2)
    expected["fsdp"] = ("FSDP", 8, 1)
    files = sorted((REPO / "configs" / "accelerate").glob("*.yaml"))
    assert {f.stem for f in files} == set(expected)
    for path in files:
        config = ClusterConfig.from_yaml_file(str(path))
        kind, processes, machines = expected[path.stem]
        assert (str(config.distributed_type).split(".")[-1], config.num_processes, config.num_machines) == (
            kind,
            processes,
            machines,
        ), path.name
        assert config.mixed_precision == "no", path.name  # precision is the command's --bf16
    doc = (REPO / "docs" / "multi-gpu.md").read_text()
    assert all(f"configs/accelerate/{f.name}" in doc for f in files)
