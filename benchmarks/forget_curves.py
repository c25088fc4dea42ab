"""Forgetting curves: held-out forget loss against retain loss as more topic codes are removed.

Statistics are computed on the training documents of the forget corpus and of the two retain corpora (U.S. history
and WikiText together); codes are selected once with `SelectionRule(num_codes=max(N), min_forget_count=5)` (both
flags, plus `--max_retain_frequency`) and every curve point is the top-N prefix of that ranking (`truncate`). For
each N the held-out losses are measured with the edit applied as `substitute`, as `exclude`, and for a random-codes
control of the same size (`substitute`). All
deltas are relative to the unedited bottleneck; the base model (bottleneck disabled) is a reference row.

Next to each edit's share of the code slots it takes on the statistics text, the same share on the held-out text
(one more truncated pass): codes picked because they never fired on the retain statistics can still fire on held-out
retain text, and the gap between the two columns shows how far the selection over-fits its statistics sample.
`--statistics_cache DIR` keeps the statistics (file names carry the bottleneck fingerprint, the corpus, the split,
the chunk count and the document split's fraction and seed) so that another selection rule on the same bottleneck skips the statistics passes;
`--validation_tokens V` adds statistics of V more training tokens per corpus (the chunks after the statistics
ones), on which `selection_coverage.py` compares rules without touching the held-out text.

    python benchmarks/forget_curves.py --data_dir ../shared/data --bottleneck DIR --topic micro \\
        --num_codes 256 512 1024 2048 4096 --stats_tokens 100000 --eval_tokens 16384 --out outputs/curves/micro

Writes OUT/curves.json, OUT/curves.md (command line, timings, table, selection report) and OUT/curves.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.data import shuffled_chunks
from codeunlearn.errors import CodeunlearnError
from codeunlearn.tables import markdown_table
from codeunlearn.unlearn.selection import SelectionRule, random_control, select_codes, truncate
from codeunlearn.unlearn.statistics import CodeStatistics, collect_code_statistics

if __package__:
    from . import common, tiny
    from .selection_report import selection_markdown, selection_report
else:  # run as a file: Python puts the script's own folder first on sys.path
    import common
    import tiny
    from selection_report import selection_markdown, selection_report

METHODS = ("substitute", "exclude", "random")  # topic codes x 2 interventions, random codes (substitute)
METRICS = ("forget", "history", "wiki", "retain")


# ---------------------------------------------------------------------------------------------------- edits
def coverage(stats: CodeStatistics, edit: Edit, slots_per_token: int) -> float:
    """Fraction of the corpus' code slots (tokens x stages x heads, summed over layers) taken by the edit's codes."""
    used = sum(int(stats.counts[layer][codes.codes].sum()) for layer, codes in edit.layers.items() if codes.codes)
    total = sum(stats.tokens[layer] * slots_per_token for layer in edit.layers)
    return used / max(total, 1)


def restrict_layers(edit: Edit, layers: list[int]) -> Edit:
    kept = {layer: codes for layer, codes in edit.layers.items() if layer in layers}
    return Edit(
        edit.topic, kept, edit.intervention, {**edit.rule, "layers": layers}, edit.bottleneck_fingerprint, edit.kind
    )


# ---------------------------------------------------------------------------------------------------- evaluation
def cached_statistics(
    bmodel: BottleneckedModel, chunks: torch.Tensor, corpus: str, split: str, args, cache: Path | None
) -> CodeStatistics:
    """Code statistics of `chunks`, loaded from `cache` when a file for this bottleneck, corpus, split, chunk count
    and document split is there, else computed (and saved there)."""
    documents = f"heldout{args.heldout_fraction:g}_seed{args.split_seed}"
    name = f"{corpus.replace('+', '_')}_{split}_{len(chunks)}x{chunks.shape[1]}_{documents}_{bmodel.fingerprint()}"
    path = cache / f"{name}.safetensors" if cache is not None else None
    if path is not None and path.is_file():
        stats = CodeStatistics.load(path)
        print(f"  statistics of {corpus} ({split}) loaded from {path}", flush=True)
        return stats
    stats = collect_code_statistics(bmodel, chunks, args.batch_size, corpus=corpus, bf16=args.bf16)
    if path is not None:
        cache.mkdir(parents=True, exist_ok=True)
        stats.save(path)
    return stats


def make_row(
    n: int | None,
    method: str,
    edit: Edit | None,
    losses: dict,
    reference: dict,
    forget: CodeStatistics,
    retain: CodeStatistics,
    slots: int,
    heldout: tuple[CodeStatistics, CodeStatistics] | None = None,
) -> dict:
    row = {
        "num_codes_per_layer": n,
        "method": method,
        "codes_removed": edit.num_codes if edit is not None else 0,
        "loss": {k: round(v, 5) for k, v in losses.items()},
        "delta": {k: round(losses[k] - reference[k], 5) for k in METRICS},
    }
    if edit is not None:
        row["forget_slot_coverage"] = round(coverage(forget, edit, slots), 5)
        row["retain_slot_coverage"] = round(coverage(retain, edit, slots), 5)
        if heldout is not None:
            row["heldout_forget_slot_coverage"] = round(coverage(heldout[0], edit, slots), 5)
            row["heldout_retain_slot_coverage"] = round(coverage(heldout[1], edit, slots), 5)
    return row


# ---------------------------------------------------------------------------------------------------- output
COVERAGE_COLUMNS = {
    "forget_slot_coverage": "forget slots",
    "retain_slot_coverage": "retain slots",
    "heldout_forget_slot_coverage": "held-out forget slots",
    "heldout_retain_slot_coverage": "held-out retain slots",
}


def table_markdown(rows: list[dict]) -> list[str]:
    coverage_keys = [k for k in COVERAGE_COLUMNS if any(k in r for r in rows)]
    header = ["N/layer", "method", "codes removed", *(f"Δ{m}" for m in METRICS), *METRICS]
    header += [COVERAGE_COLUMNS[k] for k in coverage_keys]
    return markdown_table(header, [table_row(r, coverage_keys, len(header)) for r in rows]).split("\n")


def table_row(r: dict, coverage_keys: list[str], columns: int) -> list[object]:
    """A row's cells; a skipped point says why in its fourth cell and leaves the others empty."""
    n = "–" if r["num_codes_per_layer"] is None else str(r["num_codes_per_layer"])
    if "skipped" in r:
        return [n, r["method"], r["codes_removed"], f"skipped: {common.markdown_safe(r['skipped'])}"] + [""] * (
            columns - 4
        )
    cover = [f"{100 * r[k]:.2f}%" if k in r else "–" for k in coverage_keys]
    deltas = [common.fmt(r["delta"][k], signed=True) for k in METRICS]
    losses = [common.fmt(r["loss"][k]) for k in METRICS]
    return [n, r["method"], r["codes_removed"], *deltas, *losses, *cover]


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    colors = {"substitute": "tab:red", "exclude": "tab:orange", "random": "tab:gray"}
    labels = {
        "substitute": "topic codes, substitute",
        "exclude": "topic codes, exclude",
        "random": "random codes, substitute",
    }
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in METHODS:
        points = sorted(
            (
                (r["codes_removed"], r["delta"])
                for r in rows
                if r["method"] == method and r["codes_removed"] > 0 and "delta" in r
            ),
            key=lambda p: p[0],
        )
        if not points:
            continue
        xs = [p[0] for p in points]
        ax.plot(xs, [p[1]["forget"] for p in points], "-o", color=colors[method], label=f"{labels[method]}: forget")
        ax.plot(
            xs,
            [p[1]["retain"] for p in points],
            "--s",
            color=colors[method],
            label=f"{labels[method]}: retain",
            markerfacecolor="none",
        )
    ax.axhline(0.0, color="black", linewidth=0.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("codes removed (all layers)")
    ax.set_ylabel("Δ held-out loss vs unedited bottleneck (nat/token)")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------- stages
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_split_arguments(parser)
    common.add_model_arguments(parser)
    parser.add_argument(
        "--bottleneck", help="trained bottleneck: its directory, a `codeunlearn train` output or a Hub repo id"
    )
    parser.add_argument(
        "--num_codes",
        type=int,
        nargs="+",
        default=[256, 512, 1024, 2048, 4096],
        help="codes removed per layer (curve points)",
    )
    parser.add_argument("--stats_tokens", type=int, default=100_000, help="statistics tokens per corpus (train split)")
    parser.add_argument("--eval_tokens", type=int, default=16_384, help="held-out tokens per corpus")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument(
        "--layers",
        type=int,
        nargs="+",
        default=None,
        help="restrict the edit to these bottleneck layers (default: all of the bottleneck config)",
    )
    parser.add_argument(
        "--methods",
        nargs="+",
        choices=METHODS,
        default=list(METHODS),
        help="curve methods to evaluate (topic codes substituted / excluded, random codes substituted)",
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--min_forget_count", type=int, default=5)
    parser.add_argument(
        "--max_retain_frequency",
        type=float,
        default=1.0,
        help="never remove a code firing on more than this fraction of the retain statistics tokens",
    )
    parser.add_argument(
        "--statistics_cache",
        help="directory to save the statistics in and load them from on a later run with the same bottleneck and data",
    )
    parser.add_argument(
        "--validation_tokens",
        type=int,
        default=0,
        help="statistics of this many more training tokens per corpus, saved to --statistics_cache for selection_coverage.py",
    )
    parser.add_argument(
        "--heldout_coverage",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also report the code slots each edit takes on the held-out text (one more truncated pass)",
    )
    parser.add_argument("--random_seed", type=int, default=0, help="seed of the random-codes control")
    parser.add_argument(
        "--selection_report",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="add the top codes with example tokens to curves.md",
    )
    parser.add_argument("--top_codes", type=int, default=20, help="codes per layer listed in the selection report")
    parser.add_argument("--example_codes", type=int, default=5, help="codes per layer shown with example tokens")
    parser.add_argument("--examples_per_code", type=int, default=8)
    args = parser.parse_args(argv)
    if not args.tiny and (args.data_dir is None or args.bottleneck is None):
        parser.error("--data_dir and --bottleneck are required")
    if min(args.num_codes) < 1:
        parser.error("--num_codes must be positive")
    if args.validation_tokens and not args.statistics_cache:
        parser.error("--validation_tokens needs --statistics_cache (the validation statistics are only saved)")
    args.num_codes = sorted(set(args.num_codes))
    common.resolve_precision(args)
    return args


def load_data(args, tokenizer) -> tuple[dict, dict, dict, dict, dict]:
    """The statistics (train), validation and held-out chunks of every corpus: (sources, train, validation,
    heldout, token counts)."""
    sources = common.corpus_sources(args.data_dir, args.topic)
    cap = max(args.stats_tokens + args.validation_tokens, args.eval_tokens)
    stats_chunks = common.chunks_of(args.stats_tokens, args.seq_len)
    full_train, full_heldout = common.load_splits(sources, tokenizer, args, max_tokens=cap)
    train, validation, heldout = {}, {}, {}
    for name in sources:
        train[name] = full_train[name][:stats_chunks]
        validation[name] = full_train[name][stats_chunks : stats_chunks + args.validation_tokens // args.seq_len]
        heldout[name] = full_heldout[name][: common.chunks_of(args.eval_tokens, args.seq_len)]
    token_counts = {name: {"train": train[name].numel(), "heldout": heldout[name].numel()} for name in sources}
    for name, counts in token_counts.items():
        print(
            f"  {name}: {sources[name].relative_to(args.data_dir)}: stats {counts['train']} tokens, eval {counts['heldout']} tokens",
            flush=True,
        )
    if any(len(heldout[name]) == 0 for name in sources):
        raise SystemExit("a corpus has no held-out chunk: raise --heldout_fraction or lower --seq_len")
    if args.validation_tokens and any(len(validation[name]) == 0 for name in sources):
        raise SystemExit("a corpus has no training chunk left for validation: lower --stats_tokens")
    return sources, train, validation, heldout, token_counts


def load_bottleneck(model, args) -> tuple[BottleneckedModel, list[int]]:
    """The unedited bottleneck and the layers the edit may touch."""
    bmodel = attach_bottleneck(model, args.bottleneck)
    if bmodel.edits:
        print(
            f"  note: {args.bottleneck} holds saved edits {[e.topic for e in bmodel.edits]}; they are cleared (curves start from the unedited bottleneck)"
        )
        bmodel.clear_edits()
    config = bmodel.config
    layers = args.layers or bmodel.layers
    missing = sorted(set(layers) - set(bmodel.layers))
    if missing:
        raise SystemExit(f"--layers {missing} have no bottleneck; the bottleneck is at layers {bmodel.layers}")
    print(
        f"  bottleneck layers {bmodel.layers} (edit layers {layers}), site {config.site}, {config.num_stages} stage(s) x "
        f"{config.num_heads} heads x {config.codebook_size} codes = {config.codes_per_layer} codes/layer",
        flush=True,
    )
    if max(args.num_codes) > config.codes_per_layer:
        raise SystemExit(f"--num_codes {max(args.num_codes)} exceeds the {config.codes_per_layer} codes of a layer")
    return bmodel, layers


def curve_points(
    forget_stats: CodeStatistics, retain_stats: CodeStatistics, layers: list[int], args
) -> tuple[SelectionRule, Edit, dict, list[tuple[int, dict[str, Edit]]]]:
    """One selection at the largest N, and per N its top-N prefix under each method: (rule, full edit, selected
    codes per layer, points)."""
    rule = SelectionRule(
        num_codes=max(args.num_codes),
        min_forget_count=args.min_forget_count,
        max_retain_frequency=args.max_retain_frequency,
    )
    full_edit = restrict_layers(
        select_codes(forget_stats, retain_stats, rule, args.topic, intervention="substitute"), layers
    )
    eligible = {layer: len(c.codes) for layer, c in full_edit.layers.items()}
    print(f"  selected codes per layer (max {rule.num_codes}): {eligible}", flush=True)
    points = []
    for n in args.num_codes:
        topic = truncate(full_edit, n)
        control = random_control(topic, forget_stats, retain_stats, seed=args.random_seed).with_intervention(
            "substitute"
        )
        edits = {"substitute": topic, "exclude": topic.with_intervention("exclude"), "random": control}
        points.append((n, {method: edits[method] for method in args.methods}))
        if any(len(c.codes) < n for c in full_edit.layers.values()):
            print(
                f"  note: N={n}: fewer eligible codes than N at some layer; {topic.num_codes} codes removed in all",
                flush=True,
            )
    return rule, full_edit, eligible, points


def evaluate_points(bmodel, heldout, points, unedited, statistics, slots, heldout_stats, args) -> list[dict]:
    """One row per (N, method): held-out losses with the edit applied, against the unedited bottleneck."""
    forget_stats, retain_stats = statistics
    rows = []
    bar = tqdm([(n, m, e) for n, edits in points for m, e in edits.items()], desc="edits", unit="edit")
    for n, method, edit in bar:
        bar.set_postfix(N=n, method=method)
        try:
            with bmodel.edited(edit):
                losses = common.heldout_losses(bmodel, heldout, args.batch_size, args.bf16)
        except CodeunlearnError as err:  # e.g. `exclude` would take every code of a head
            rows.append(
                {"num_codes_per_layer": n, "method": method, "codes_removed": edit.num_codes, "skipped": str(err)}
            )
            tqdm.write(f"  N={n:>6} {method:<10} skipped: {err}")
            continue
        row = make_row(n, method, edit, losses, unedited, forget_stats, retain_stats, slots, heldout_stats)
        rows.append(row)
        d = row["delta"]
        tqdm.write(
            f"  N={n:>6} {method:<10} codes {row['codes_removed']:>6}  Δforget {d['forget']:+.4f}  Δretain {d['retain']:+.4f}  (Δhistory {d['history']:+.4f}, Δwiki {d['wiki']:+.4f})"
        )
    return rows


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    timer = common.Timer()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = common.now()
    print(common.command_line(), flush=True)
    torch.manual_seed(0)

    with timer.stage("load model"):
        model, tokenizer, tiny_dir = common.load_benchmark_model(args, "forget_curves_tiny_")

    with timer.stage("load data"):
        sources, train, validation, heldout, token_counts = load_data(args, tokenizer)

    if args.tiny and args.bottleneck is None:
        with timer.stage("train tiny bottleneck"):
            mix = shuffled_chunks(list(train.values()), seed=0)
            args.bottleneck = str(tiny.train_tiny_bottleneck(model, mix, tiny_dir, args.bf16))

    with timer.stage("load bottleneck"):
        bmodel, layers = load_bottleneck(model, args)
        config = bmodel.config
        slots = config.num_stages * config.num_heads

    cache = Path(args.statistics_cache) if args.statistics_cache else None
    with timer.stage("statistics: forget"):
        forget_stats = cached_statistics(bmodel, train["forget"], args.topic, "train", args, cache)
    with timer.stage("statistics: retain"):
        retain_chunks = torch.cat([train["history"], train["wiki"]])
        retain_stats = cached_statistics(bmodel, retain_chunks, "history+wiki", "train", args, cache)
    heldout_stats = None
    if args.heldout_coverage:
        with timer.stage("statistics: held-out"):
            heldout_stats = (
                cached_statistics(bmodel, heldout["forget"], args.topic, "heldout", args, cache),
                cached_statistics(
                    bmodel, torch.cat([heldout["history"], heldout["wiki"]]), "history+wiki", "heldout", args, cache
                ),
            )
    if args.validation_tokens:
        with timer.stage("statistics: validation"):
            cached_statistics(bmodel, validation["forget"], args.topic, "validation", args, cache)
            retain_validation = torch.cat([validation["history"], validation["wiki"]])
            cached_statistics(bmodel, retain_validation, "history+wiki", "validation", args, cache)

    with timer.stage("selection"):
        rule, full_edit, eligible, points = curve_points(forget_stats, retain_stats, layers, args)

    with timer.stage("eval: references"):
        with bmodel.disabled():
            base_losses = common.heldout_losses(bmodel, heldout, args.batch_size, args.bf16, label="base")
        unedited = common.heldout_losses(bmodel, heldout, args.batch_size, args.bf16, label="unedited")
    rows = [
        make_row(None, "base model (bottleneck off)", None, base_losses, unedited, forget_stats, retain_stats, slots),
        make_row(None, "unedited bottleneck", None, unedited, unedited, forget_stats, retain_stats, slots),
    ]

    with timer.stage("eval: edits"):
        statistics = (forget_stats, retain_stats)
        rows += evaluate_points(bmodel, heldout, points, unedited, statistics, slots, heldout_stats, args)

    report = None
    if args.selection_report:
        with timer.stage("selection report"):
            report = selection_report(bmodel, tokenizer, full_edit, forget_stats, retain_stats, train["forget"], args)

    with timer.stage("write outputs"):
        table = table_markdown(rows)
        name = "/".join(Path(args.bottleneck).resolve().parts[-2:])
        title = f"{args.topic}: held-out loss change ({name}, layers {layers})"
        plot(rows, out / "curves.png", title)
        result = {
            "command": common.command_line(),
            "date": started.isoformat(timespec="seconds"),
            "machine": common.machine_info(),
            "args": {k: v for k, v in vars(args).items()},
            "corpora": {name: str(sources[name].relative_to(args.data_dir)) for name in sources},
            "tokens": token_counts,
            "bottleneck": {
                "path": args.bottleneck,
                "config": config.to_dict(),
                "fingerprint": forget_stats.bottleneck_fingerprint,
            },
            "statistics_tokens": {"forget": forget_stats.tokens, "retain": retain_stats.tokens},
            "selected_codes_per_layer": eligible,
            "reference": {"base": base_losses, "unedited": unedited},
            "rows": rows,
            "edits": {str(n): truncate(full_edit, n).to_dict() for n, _ in points[-1:]},
            "selection_report": report,
            "seconds": timer.seconds,
        }
        md = [
            f"# Forgetting curves: {args.topic}",
            "",
            "```",
            common.command_line(),
            "```",
            "",
            f"- date: {result['date']}; machine: {common.machine_summary()}",
            f"- bottleneck: `{args.bottleneck}` (layers {bmodel.layers}, edit layers {layers}, {config.num_stages}x{config.num_heads}x{config.codebook_size}, site {config.site}, fingerprint {forget_stats.bottleneck_fingerprint})",
            f"- forget: `{result['corpora']['forget']}`; retain: `{result['corpora']['history']}` + `{result['corpora']['wiki']}`; document split {1 - args.heldout_fraction:.0%}/{args.heldout_fraction:.0%}, seed {args.split_seed}; seq_len {args.seq_len}; {'bf16 autocast' if args.bf16 else 'fp32'} (--precision {args.precision})",
            "- tokens (statistics / held-out eval): "
            + ", ".join(f"{n} {c['train']} / {c['heldout']}" for n, c in token_counts.items()),
            f"- selection: SelectionRule(num_codes={rule.num_codes}, min_forget_count={rule.min_forget_count}, max_retain_frequency={rule.max_retain_frequency}); selected per layer: {eligible}; N = codes per layer; random control seed {args.random_seed}",
            "- Δ = held-out mean next-token loss (nat/token, first target of each chunk skipped) minus the unedited bottleneck's; retain = token-weighted mean of history and wiki; slots = share of code slots (tokens x stages x heads) on the statistics split taken by the removed codes (held-out slots: the same on the held-out text)",
            "",
            "## Results",
            "",
            *table,
            "",
            "![curves](curves.png)",
            "",
        ]
        if report is not None:
            md += [*selection_markdown(report, args), ""]
        md += timer.markdown()
        common.write_markdown(out / "curves.md", md)
        common.write_json(out / "curves.json", result)

    print()
    print("\n".join(table))
    print()
    print(timer.summary())
    print(f"wrote {out / 'curves.md'}, {out / 'curves.json'}, {out / 'curves.png'}")


if __name__ == "__main__":
    main()
