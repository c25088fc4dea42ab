"""`codeunlearn eval`: held-out forget and retain loss of the base model, the unedited bottleneck and each edit; or,
with --suite, a whole evaluation suite on any model; or, with --combine, one table of several suite reports.

Loss table (the default):

    codeunlearn eval --bottleneck_dir outputs/run/bottleneck \\
        --forget_corpora ../shared/data/demo/forget_harry_potter.txt \\
        --retain_corpora ../shared/data/demo/retain_wikitext.txt \\
        --edits outputs/run/edits/edit.json outputs/run/edits/random_control.json --output_dir outputs/run/eval

Rows: `base` (bottleneck disabled: the original model), `bottleneck` (no edit), `bottleneck + saved edits` (when
--bottleneck_dir holds edits, e.g. the output of `codeunlearn apply`), then one row per --edits file applied alone.
Losses are mean next-token cross-entropy in nat/token on the HELD-OUT documents (same --split_seed and
--heldout_fraction as `stats`), deltas are against the unedited bottleneck. Also reports the bottleneck's
reconstruction FVU (SAE: L0, FVU, dead features and the CE loss with the bare reconstruction spliced in, and for a
guardrail edit the share of forget and retain windows it gates). --bottleneck_dir may also be a sae-lens SAE
directory. Writes OUTPUT/report.json and OUTPUT/report.md.

Evaluation suite (`codeunlearn.evaluate.suite`):

    codeunlearn eval --suite harry_potter --model outputs/demo/edited --data_dir ../shared/data \\
        --with_base --output_dir outputs/eval/hp_edited [--fast] [--attacks] [--max_items 50] [--seed 0]

--suite is a shipped suite (microbiology, harry_potter, cyber, geography) or a suite .yaml file; --model is the
model under test: a bottleneck directory (attached to --model_name_or_path, its saved edits active), an exported
directory, any transformers model directory (a baseline's OUTPUT/model) or `smollm2-135m` (default: the base model
--model_name_or_path itself; --bottleneck_dir works as --model too). Data paths of the suite are inside --data_dir;
--heldout_fraction, --split_seed, --seq_len, --text_field (and --max_tokens when given) reach every metric that
splits or packs a corpus, so pass the values `stats` used. --with_base evaluates the base model too (for a
bottleneck: the same model with the bottleneck off; for an export: its `bottleneck_enabled=False` load) and writes
it to OUTPUT/base/; --baseline_report reuses an earlier base-model report instead. Writes OUTPUT/report.json,
OUTPUT/report.md, OUTPUT/details/<metric>.jsonl and OUTPUT/plots/<section>.png. (`--config FILE` stays the argument
file of every subcommand; a suite config is passed with --suite.)

Combined table of suite reports, one row per model (the first row is the reference of the loss changes):

    codeunlearn eval --combine base=outputs/eval/hp_edited/base codebook=outputs/eval/hp_edited \\
        npo=outputs/eval/hp_npo --output_dir outputs/eval/hp_table [--columns hp_loss hp_trivia_hard:acc]

writes OUTPUT/table.md, OUTPUT/table.json and OUTPUT/tradeoff.png (forget vs retain loss increase). A row may
come from a table written earlier, `rmu=benchmarks/results/eval_fast/micro/table.json#rmu_configured`, when that
model's suite settings are unchanged: it is refused unless that table's reference row has this one's losses.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.cli.arguments import DataArguments, ModelArguments, bf16_is_fast, parse_arguments
from codeunlearn.cli.common import load_bottlenecked, read_corpora, resolve_bottleneck_dir
from codeunlearn.errors import CodeunlearnError
from codeunlearn.evaluate.evaluation import bottleneck_fidelity, mean_loss, sae_loss_recovered, sae_quality
from codeunlearn.evaluate.suite.config import named_configs
from codeunlearn.io import atomic_write_text

DESCRIPTION = (
    "Held-out forget/retain loss (nat/token) of base, unedited bottleneck and edits, plus bottleneck FVU; "
    "--suite NAME runs an evaluation suite on any model; --combine tabulates suite reports."
)
REFERENCE_ROW = "bottleneck"


@dataclass
class EvalArguments:
    """What to evaluate and where the report goes."""

    output_dir: str = field(metadata={"help": "Directory for report.json and report.md (with --combine: table.md)."})
    bottleneck_dir: str | None = field(
        default=None,
        metadata={
            "help": "Bottleneck directory (or an edited one from `codeunlearn apply`); required without --suite."
        },
    )
    edits: list[str] = field(
        default_factory=list, metadata={"help": "Edit files; each one is evaluated alone as a row."}
    )
    batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass."})
    skip_positions: int = field(
        default=0, metadata={"help": "Ignore the first N targets of every chunk (they have little context)."}
    )
    bf16: bool = field(
        default=bf16_is_fast(),
        metadata={"help": "bf16 autocast for the frozen model (default: on where bf16 matmuls are fast)."},
    )
    progress: bool = field(default=True, metadata={"help": "Show progress bars."})
    # ---- evaluation suite
    suite: str | None = field(
        default=None,
        metadata={"help": f"Run an evaluation suite: one of {', '.join(named_configs())} or a suite .yaml file."},
    )
    model: str | None = field(
        default=None,
        metadata={
            "help": "Suite: the model under test (bottleneck, exported or transformers directory, or smollm2-135m; "
            "default: --bottleneck_dir, else the base model --model_name_or_path)."
        },
    )
    data_dir: str | None = field(
        default=None, metadata={"help": "Suite: the shared data folder its relative data paths are inside."}
    )
    attacks: bool = field(default=False, metadata={"help": "Suite: also run its robustness attacks."})
    fast: bool = field(default=False, metadata={"help": "Suite: the fast path (the config's smaller item counts)."})
    max_items: int | None = field(
        default=None, metadata={"help": "Suite: score at most this many items per probe set (overrides the config)."}
    )
    seed: int = field(default=0, metadata={"help": "Suite: seeds every sample and attack (same seed, same report)."})
    max_length: int = field(default=1024, metadata={"help": "Suite: longest input in tokens (cut from the left)."})
    with_base: bool = field(
        default=False,
        metadata={"help": "Suite: evaluate the base model too (OUTPUT/base/), as the report's base column."},
    )
    baseline_report: str | None = field(
        default=None, metadata={"help": "Suite: a base-model report.json from an earlier run, as the base column."}
    )
    # ---- combined table
    combine: list[str] = field(
        default_factory=list,
        metadata={
            "help": "Tabulate suite reports, one row each: ROW=path/to/report.json (or its directory), or "
            "ROW=path/to/table.json#ROW for a row of an earlier combined table ..."
        },
    )
    columns: list[str] = field(
        default_factory=list,
        metadata={"help": "With --combine: the columns, `metric` or `metric:score` (default: every headline score)."},
    )


@dataclass
class RowSpec:
    """One row of the table: the edits active while it is measured (None: bottleneck disabled, the base model)."""

    name: str
    edits: list[Edit] | None


def evaluate_rows(
    bmodel: BottleneckedModel,
    forget: Tensor,
    retain: Tensor,
    specs: list[RowSpec],
    batch_size: int = 8,
    skip_positions: int = 0,
    bf16: bool = True,
    progress: bool = True,
) -> list[dict[str, Any]]:
    """Forget/retain loss of every row; deltas (and selectivity) against the `bottleneck` row when there is one.

    The model's own edits are set aside while rows are measured and restored afterwards."""
    saved = list(bmodel.edits)
    rows = []
    try:
        for spec in specs:
            bmodel.clear_edits()
            for edit in spec.edits or []:
                bmodel.apply_edit(edit)
            losses = {}
            for corpus, chunks in (("forget", forget), ("retain", retain)):
                desc = f"eval {spec.name} / {corpus}" if progress else None
                if spec.edits is None:
                    with bmodel.disabled():
                        losses[corpus] = mean_loss(bmodel, chunks, batch_size, skip_positions, desc, bf16)
                else:
                    losses[corpus] = mean_loss(bmodel, chunks, batch_size, skip_positions, desc, bf16)
            removed = None if spec.edits is None else sum(e.num_codes for e in spec.edits)
            rows.append(
                {
                    "row": spec.name,
                    "codes_removed": removed,
                    "forget_loss": losses["forget"],
                    "retain_loss": losses["retain"],
                }
            )
    finally:
        bmodel.clear_edits()
        for edit in saved:
            bmodel.apply_edit(edit)
    add_deltas(rows)
    return rows


def add_deltas(rows: list[dict[str, Any]], reference: str = REFERENCE_ROW) -> None:
    """Add loss changes against the reference row; selectivity = forget change - retain change."""
    ref = next((r for r in rows if r["row"] == reference), None)
    for row in rows:
        if ref is None:
            row.update(delta_forget=None, delta_retain=None, selectivity=None)
            continue
        row["delta_forget"] = row["forget_loss"] - ref["forget_loss"]
        row["delta_retain"] = row["retain_loss"] - ref["retain_loss"]
        row["selectivity"] = row["delta_forget"] - row["delta_retain"]


def fidelity_rows(
    bmodel: BottleneckedModel, corpora: dict[str, Tensor], batch_size: int = 8, bf16: bool = True
) -> list[dict[str, Any]]:
    """Reconstruction quality of the unedited bottleneck on each corpus (fraction of variance unexplained)."""
    saved = list(bmodel.edits)
    bmodel.clear_edits()
    try:
        return [
            {"corpus": name, **asdict(fidelity)}
            for name, chunks in corpora.items()
            for fidelity in bottleneck_fidelity(bmodel, chunks, batch_size, bf16)
        ]
    finally:
        for edit in saved:
            bmodel.apply_edit(edit)


def sae_quality_rows(
    bmodel: BottleneckedModel, corpora: dict[str, Tensor], batch_size: int = 8, bf16: bool = True, skip: int = 0
) -> list[dict[str, Any]]:
    """SAE quality on each corpus: L0, FVU, dead features, and the CE loss with the bare reconstruction spliced in
    (no error term) against the base model and zero-ablation ("CE loss recovered")."""
    rows = []
    for name, chunks in corpora.items():
        recovered = sae_loss_recovered(bmodel, chunks, batch_size, skip, bf16)
        for quality in sae_quality(bmodel, chunks, batch_size, bf16):
            rows.append({"corpus": name, **asdict(quality), **{f"ce_{k}": v for k, v in recovered.items()}})
    return rows


def sae_quality_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of SAE quality (CE columns cover all SAE layers spliced together)."""
    lines = [
        "| layer | corpus | L0 | FVU | dead features | CE base | CE spliced (no error term) | Δ CE | CE recovered |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['corpus']} | {r['l0']:.1f} | {r['fvu']:.4f} | {r['dead_features']} of "
            f"{r['num_features']} | {r['ce_base']:.4f} | {r['ce_spliced']:.4f} | {r['ce_delta_spliced']:+.4f} | "
            f"{r['ce_recovered']:.2%} |"
        )
    return "\n".join(lines)


def guardrail_rows(
    bmodel: BottleneckedModel, edits: list[tuple[str, Edit]], corpora: dict[str, Tensor], batch_size: int, bf16: bool
) -> list[dict[str, Any]]:
    """For each guardrail edit: the share of windows it gates on each corpus (on retain text: false positives)."""
    from codeunlearn.unlearn.guardrail import gate_rate

    return [
        {"edit": name, "corpus": corpus, "gated": gate_rate(bmodel, edit, chunks, batch_size, bf16)["any"]}
        for name, edit in edits
        if edit.guardrail is not None
        for corpus, chunks in corpora.items()
    ]


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return str(value)


def loss_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of losses and deltas (nat/token)."""
    lines = [
        "| row | codes removed | forget loss | retain loss | Δ forget | Δ retain | selectivity |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['row']} | {_fmt(r['codes_removed'])} | {_fmt(r['forget_loss'])} | {_fmt(r['retain_loss'])} | "
            f"{_fmt(r['delta_forget'], True)} | {_fmt(r['delta_retain'], True)} | {_fmt(r['selectivity'], True)} |"
        )
    return "\n".join(lines)


def fidelity_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the bottleneck's reconstruction quality."""
    lines = [
        "| layer | corpus | FVU (quantized tokens) | FVU (all tokens) | passthrough tokens | codes used |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['layer']} | {r['corpus']} | {r['fvu_ordinary']:.4f} | {r['fvu_all']:.4f} | {r['passthrough_fraction']:.2%} | {r['codes_used']} |"
        )
    return "\n".join(lines)


TABLE_NOTE = (
    "Losses: mean next-token cross-entropy (nat/token) on held-out documents. Δ: change against the unedited "
    "bottleneck row. Selectivity: Δ forget − Δ retain (higher = more topic-specific)."
)


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn eval` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, args = parse_arguments(
        (ModelArguments, DataArguments, EvalArguments), argv, "codeunlearn eval", DESCRIPTION
    )
    if args.combine:
        return combine_main(args)
    if args.suite is not None:
        return suite_main(model_args, data_args, args)
    suite_only = [flag for flag in ("model", "data_dir", "baseline_report", "max_items") if getattr(args, flag)]
    suite_only += [flag for flag in ("attacks", "fast", "with_base") if getattr(args, flag)]
    if suite_only:
        raise CodeunlearnError(f"--{suite_only[0]} is a suite option", "pass --suite NAME (or drop the option)")
    if args.bottleneck_dir is None:
        raise CodeunlearnError(
            "no --bottleneck_dir given", "pass --bottleneck_dir DIR for the loss table, or --suite NAME --model DIR"
        )
    forget_corpora = read_corpora(data_args.forget_corpora, data_args, "forget_corpora")
    retain_corpora = read_corpora(data_args.retain_corpora, data_args, "retain_corpora")
    edit_files = [(path, Edit.load(path)) for path in args.edits]
    bmodel, tokenizer = load_bottlenecked(model_args, args.bottleneck_dir, args.progress)
    forget, retain = forget_corpora.pack(tokenizer, "heldout"), retain_corpora.pack(tokenizer, "heldout")
    specs = [RowSpec("base", None), RowSpec(REFERENCE_ROW, [])]
    if bmodel.edits:
        specs.append(
            RowSpec(f"{REFERENCE_ROW} + saved edits ({', '.join(e.topic for e in bmodel.edits)})", list(bmodel.edits))
        )
    specs += [RowSpec(f"{edit.topic} ({Path(path).name})", [edit]) for path, edit in edit_files]
    rows = evaluate_rows(bmodel, forget, retain, specs, args.batch_size, args.skip_positions, args.bf16, args.progress)
    heldout = {"forget": forget, "retain": retain}
    gates: list[dict[str, Any]] = []
    if bmodel.config.has_activations:
        fidelity = sae_quality_rows(bmodel, heldout, args.batch_size, args.bf16, args.skip_positions)
        named = [(spec.name, e) for spec in specs for e in spec.edits or []]
        gates = guardrail_rows(bmodel, named, heldout, args.batch_size, args.bf16)
    else:
        fidelity = fidelity_rows(bmodel, heldout, args.batch_size, args.bf16)
    quality_table = sae_quality_table(fidelity) if bmodel.config.has_activations else fidelity_table(fidelity)
    gate_lines = [f"- {g['edit']}: gates {g['gated']:.2%} of held-out {g['corpus']} windows" for g in gates]
    report = {
        "bottleneck_dir": str(resolve_bottleneck_dir(args.bottleneck_dir)),
        "model": model_args.model_name_or_path,
        "layers": bmodel.layers,
        "edits": [str(path) for path, _ in edit_files],
        "heldout_tokens": {"forget": forget.numel(), "retain": retain.numel()},
        "forget_corpora": forget_corpora.sources,
        "retain_corpora": retain_corpora.sources,
        "data": asdict(data_args),
        "skip_positions": args.skip_positions,
        "rows": rows,
        "fidelity": fidelity,
        "guardrails": gates,
    }
    markdown = "\n\n".join(
        [
            "# codeunlearn eval",
            f"Bottleneck `{report['bottleneck_dir']}` on `{model_args.model_name_or_path}`, layers {bmodel.layers}. "
            f"Held-out tokens: forget {forget.numel():,}, retain {retain.numel():,} (split_seed {data_args.split_seed}, "
            f"heldout_fraction {data_args.heldout_fraction}).",
            loss_table(rows),
            TABLE_NOTE,
            "## Bottleneck fidelity",
            quality_table,
            *(["## Guardrail gate rates", "\n".join(gate_lines)] if gate_lines else []),
        ]
    )
    output_dir = Path(args.output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / "report.json", json.dumps(report, indent=1) + "\n")
    atomic_write_text(output_dir / "report.md", markdown + "\n")
    print(loss_table(rows))
    print()
    print(quality_table)
    if gate_lines:
        print("\n".join(gate_lines))
    print(f"wrote {output_dir / 'report.json'} and {output_dir / 'report.md'}")
    return 0


# ------------------------------------------------------------------------------------------------ suite mode


def suite_main(model_args: ModelArguments, data_args: DataArguments, args: EvalArguments) -> int:
    """`codeunlearn eval --suite ...`: run an evaluation suite on one model (and the base model with --with_base)."""
    from codeunlearn.evaluate.metrics.base import EvalContext
    from codeunlearn.evaluate.suite.config import load_suite_config
    from codeunlearn.evaluate.suite.models import base_model_run, load_model_for_eval
    from codeunlearn.evaluate.suite.report import load_report, markdown_report, write_report
    from codeunlearn.evaluate.suite.runner import plan_suite, run_suite

    config = load_suite_config(args.suite)
    if args.model and args.bottleneck_dir:
        raise CodeunlearnError("both --model and --bottleneck_dir given", "pass the model under test once, as --model")
    if args.with_base and args.baseline_report:
        raise CodeunlearnError("both --with_base and --baseline_report given", "pick one source of the base column")
    if args.data_dir is not None and not Path(args.data_dir).is_dir():
        raise CodeunlearnError(
            f"data directory not found: {args.data_dir}", "pass --data_dir pointing at the shared data folder"
        )
    if args.max_items is not None and args.max_items < 1:
        raise CodeunlearnError(f"--max_items {args.max_items}", "use a positive number of items")
    shared = {
        "heldout_fraction": data_args.heldout_fraction,
        "split_seed": data_args.split_seed,
        "seq_len": data_args.seq_len,
        "text_field": data_args.text_field,
        **({"max_tokens": data_args.max_tokens} if data_args.max_tokens is not None else {}),
    }
    # Resolve every metric and data file before the model loads: a typo costs seconds, not a half-hour run.
    plan_suite(config, args.data_dir, args.attacks, args.fast, shared)
    baseline = load_report(args.baseline_report) if args.baseline_report else None
    target = args.model or args.bottleneck_dir or model_args.model_name_or_path
    loaded = load_model_for_eval(
        target, model_args.model_name_or_path, model_args.gguf_file, model_args.dtype, args.progress
    )
    ctx = EvalContext(
        loaded.model,
        loaded.tokenizer,
        batch_size=args.batch_size,
        max_items=args.max_items,
        seed=args.seed,
        bf16=args.bf16,
        progress=args.progress,
        reference_model=loaded.reference,
        max_length=args.max_length,
    )
    print(f"suite {config.name} on {loaded.description}", flush=True)
    run = functools.partial(run_suite, data_dir=args.data_dir, attacks=args.attacks, fast=args.fast, shared=shared)
    report = run(ctx, config, description=loaded.description, keep_going=True)
    output_dir = Path(args.output_dir)
    baseline_source = args.baseline_report
    if args.with_base:
        if loaded.reference is None:  # the model under test is the base model: its own base column
            baseline, baseline_source = report, "the model under test (it is the base model)"
        else:
            print(f"suite {config.name} on the base model", flush=True)
            base, evaluating_base = base_model_run(loaded)
            with evaluating_base:
                base_ctx = dataclasses.replace(ctx, model=base, reference_model=None)
                baseline = run(base_ctx, config, description=f"base model of: {loaded.description}", keep_going=True)
            baseline_source = str(write_report(baseline, output_dir / "base")["json"])
    written = write_report(report, output_dir, baseline, baseline_source)
    print(markdown_report(report, baseline))
    print(f"wrote {written['json']}, {written['markdown']}, {len(written['plots'])} plots and details/ in {output_dir}")
    failed = list(report.failures)
    if args.with_base and baseline is not report:
        failed += [f"{name} (base model)" for name in baseline.failures]
    if failed:  # the report is written; the exit code still says the run is incomplete
        raise CodeunlearnError(
            f"{len(failed)} metric(s) failed: {', '.join(failed)}", f"see the errors above and {written['markdown']}"
        )
    return 0


def combine_main(args: EvalArguments) -> int:
    """`codeunlearn eval --combine ROW=report.json ...`: one row per model, one column per metric."""
    from codeunlearn.evaluate.suite.report import combine_reports

    reports: dict[str, str] = {}
    for entry in args.combine:
        row, sep, path = entry.partition("=")
        if not sep:  # a bare path: the row is named after the report's directory
            path = entry
            row = Path(entry).parent.name if entry.endswith(".json") else Path(entry).name
        if not row or not path:
            raise CodeunlearnError(
                f"--combine entry {entry!r} is not ROW=PATH", "write e.g. base=outputs/base/report.json"
            )
        if row in reports:
            raise CodeunlearnError(f"--combine names row {row!r} twice", "give every report its own ROW= name")
        reports[row] = path
    markdown = combine_reports(reports, args.output_dir, columns=args.columns or None)
    print(markdown)
    print(f"wrote {Path(args.output_dir) / 'table.md'}, table.json and tradeoff.png")
    return 0
