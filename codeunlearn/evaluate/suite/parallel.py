"""An evaluation suite run by several processes (`accelerate launch`, `torchrun`): the work dealt across them, the
outcomes gathered.

A unit of work is one metric on one model (the model under test, and the base model with `--with_base`). Every
process loads the models; each unit runs whole on one process, from the seeded random state it starts from in one
process (`runner.run_planned`), so the reports equal one process's score for score (only the seconds differ). The
units are dealt before any runs, longest expected first to the process with the least expected work so far (the LPT
rule), so that the processes finish close together without talking while they run. Then every process's outcomes are
gathered to every process (`distributed.all_gather_objects`): all end with the same reports, so all agree on the
failures and the exit code, and the caller lets the main process alone write and print. A metric that raises is
recorded as a failure on the process that ran it, as `run_suite(keep_going=True)` records it; the others do not wait
on it. Outside a process group every unit runs here in the config's order: the one-process run, exactly.

While its units run, a process acts as a run of its own (`distributed.alone`): a metric's held-out losses read all
of their chunks instead of a share. The equality with one process rests on every metric leaving the model as it
found it (the shipped attacks train and quantize copies, the bypass switch is restored), since a process runs only
some of the metrics that run before a given one in one process.

    from codeunlearn.evaluate.suite.parallel import SuiteModel, run_suites

    report, base = run_suites([SuiteModel(ctx, loaded.description), SuiteModel(base_ctx, "base", evaluating_base)],
                              load_suite_config("harry_potter"), "../shared/data", fast=True)
"""

from __future__ import annotations

import contextlib
import heapq
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from codeunlearn import distributed
from codeunlearn.evaluate.metrics.base import EvalContext
from codeunlearn.evaluate.suite.config import SuiteConfig
from codeunlearn.evaluate.suite.runner import (
    MetricOutcome,
    PlannedMetric,
    SuiteReport,
    assemble_report,
    plan_suite,
    run_planned,
)

# Expected seconds of one metric of each kind, full run and --fast, at the shipped suites' caps: SmolLM2-135M in one CPU
# process. Full: the full microbiology suite (benchmarks/RESULTS.md, "1,490 s"); the kinds it lacks are scaled from
# their --fast seconds to the full caps (multiple_choice, familiarity, rephrased_facts) or counted as the held-out
# losses they score (bypass 6, quantization 9). Fast: the median over the --fast base-model reports of
# benchmarks/results/eval_fast/ (bypass and quantization counted as their losses). Only the order and rough ratios
# matter: a --fast run is dominated by MMLU, a full run by the attacks.
KIND_SECONDS: dict[str, tuple[float, float]] = {  # kind: (full, fast)
    "relearning_attack": (353.0, 43.0),
    "quantization_attack": (340.0, 35.0),
    "bypass_attack": (230.0, 30.0),
    "padding_attack": (190.0, 10.5),
    "arc_easy": (164.0, 21.0),
    "mmlu": (145.0, 128.0),
    "familiarity": (136.0, 54.5),
    "fact_cloze": (111.0, 6.0),
    "lettered_choice": (107.0, 65.5),
    "sports_cloze": (76.0, 12.0),
    "short_answer": (66.0, 9.0),
    "multiple_choice": (60.0, 8.0),
    "latent_probe": (54.0, 11.0),
    "fluency": (40.0, 11.6),
    "heldout_loss": (38.0, 9.0),
    "rephrased_facts": (25.0, 23.2),
}
UNKNOWN_SECONDS = (100.0, 20.0)  # a metric registered later: about the median kind


@dataclass
class SuiteModel:
    """One model the suite runs on.

    Attributes:
        ctx: the model and how to run it.
        description: the report's one-line model description.
        context: entered around this process's metrics on the model (e.g. a bottleneck switched off for its base
            model); entered at most once, and only on a process that runs some of them.
        announce: printed before the first of them runs here (nothing when empty).
    """

    ctx: EvalContext
    description: str
    context: contextlib.AbstractContextManager = field(default_factory=contextlib.nullcontext)
    announce: str = ""


def expected_seconds(item: PlannedMetric, fast: bool, max_items: int | None = None) -> float:
    """The expected run time of `item` in a full or a `fast` run, for dealing only (`KIND_SECONDS`, measured at the
    config's item caps); a command line cap `max_items` below the metric's own scales it down in proportion."""
    seconds = KIND_SECONDS.get(item.spec.metric, UNKNOWN_SECONDS)[fast]
    if max_items is not None and item.max_items is not None and max_items < item.max_items:
        seconds *= max_items / item.max_items
    return seconds


def deal(costs: Sequence[float], processes: int) -> list[list[int]]:
    """Deal the units with expected `costs` to `processes` processes: longest first, each to the process with the
    least expected work so far (ties: the lower unit index first, the lower rank first). Returns each process's unit
    indices in ascending order; every index is dealt exactly once, and the same costs always deal the same way."""
    if processes < 1:
        raise ValueError(f"processes must be >= 1, not {processes}")
    shares: list[list[int]] = [[] for _ in range(processes)]
    loads = [(0.0, rank) for rank in range(processes)]  # a heap: (expected seconds so far, rank)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        load, rank = heapq.heappop(loads)
        shares[rank].append(index)
        heapq.heappush(loads, (load + costs[index], rank))
    return [sorted(share) for share in shares]


def run_suites(
    models: Sequence[SuiteModel],
    config: SuiteConfig,
    data_dir: str | Path | None,
    attacks: bool = False,
    fast: bool = False,
    shared: dict[str, Any] | None = None,
    verbose: bool = True,
) -> list[SuiteReport]:
    """The report of `config`'s metrics on each of `models` (as `run_suite(..., keep_going=True)` gives it), the
    metrics dealt across this launch's processes (see the module docstring). Every process of the group must call
    it with the same models and arguments; every process returns the same reports."""
    planned = plan_suite(config, data_dir, attacks, fast, shared)
    units = [(m, k) for m in range(len(models)) for k in range(len(planned))]
    costs = [expected_seconds(planned[k], fast, models[m].ctx.max_items) for m, k in units]
    mine = deal(costs, distributed.world_size())[distributed.rank()]
    where = f" rank {distributed.rank()}" if distributed.world_size() > 1 else ""
    outcomes: dict[tuple[int, int], MetricOutcome] = {}
    with distributed.alone():  # a metric's own data-parallel passes (held-out losses) must not wait on the others
        for m, model in enumerate(models):
            here = [units[i][1] for i in mine if units[i][0] == m]
            if not here:
                continue
            if verbose and model.announce:
                print(model.announce, flush=True)
            with model.context:
                for k in here:
                    label = f"[{k + 1}/{len(planned)}{where}]"
                    outcomes[m, k] = run_planned(model.ctx, planned[k], label, verbose, keep_going=True)
    gathered: dict[tuple[int, int], MetricOutcome] = {}
    for part in distributed.all_gather_objects(outcomes):
        gathered.update(part)
    return [
        assemble_report(
            model.ctx, config, [gathered[m, k] for k in range(len(planned))], model.description, attacks, fast
        )
        for m, model in enumerate(models)
    ]
