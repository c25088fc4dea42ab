"""Gradient unlearning baselines on SmolLM2-135M: held-out forget / retain loss change and wall time per method.

Every method starts from the same base model and trains on the train documents (80/20 document split, seed 0, 256-
token chunks) of the forget corpus (microbiology by default) and of U.S. history + WikiText mixed; losses are
held-out means (first target of every chunk skipped, as in forget_curves.py) on forget, history and WikiText, with
retain = their token-weighted mean. Each method runs with its module's defaults (the paper's hyperparameters scaled
to SmolLM2-135M, see codeunlearn/baselines/) except where a budget flag overrides them. Its wall time is its setup
(reference copy, RMU's norm pass) plus its optimisation loop; loading, evaluation and saving are not counted.
`--bottleneck DIR --num_codes N` adds our rows for comparison: statistics on the same train chunks
(`--stats_tokens`), selection and applying the edit, timed the same way. `--relearn_steps N` adds a relearning-attack
point for every method (fine-tuning on forget-train text, measured on the held-out forget text).

    python benchmarks/baselines.py --data_dir ../shared/data --steps 8 --batch_size 2 --eval_tokens 2048 \\
        --train_tokens 50000 --out outputs/baselines_bench

Writes OUT/baselines.json and OUT/baselines.md (command line, machine, settings, table, per-method config).
"""

from __future__ import annotations

import argparse
import copy
import gc
import json
import time
from pathlib import Path

import torch

from codeunlearn.baselines import (
    METHODS,
    BaselineTrainingArguments,
    RelearnConfig,
    make_method,
    relearn,
    train_baseline,
)
from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.data import shuffled_chunks
from codeunlearn.tables import markdown_table

if __package__:
    from . import common, tiny
else:  # run as a file: Python puts the script's own folder first on sys.path
    import common
    import tiny

VARIANTS = {"npo_rt": ("npo", {"retain_weight": 1.0})}  # benchmark names that are a method with changed defaults
CHOICES = (*METHODS, *VARIANTS)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_split_arguments(parser)
    common.add_model_arguments(parser)
    parser.add_argument("--methods", nargs="+", choices=CHOICES, default=list(METHODS))
    parser.add_argument("--steps", type=int, help="budget: optimizer steps of every method (default: each its own)")
    parser.add_argument("--batch_size", type=int, help="budget: chunks per step and corpus (default: each its own)")
    parser.add_argument("--gradient_accumulation_steps", type=int, default=1)
    parser.add_argument("--train_tokens", type=int, default=200_000, help="train-split tokens read per corpus")
    parser.add_argument("--eval_tokens", type=int, default=16_384, help="held-out tokens per corpus")
    parser.add_argument("--skip_positions", type=int, default=1)
    parser.add_argument("--eval_batch_size", type=int, default=8)
    parser.add_argument("--relearn_steps", type=int, default=0, help="relearning-attack steps per method (0 = none)")
    parser.add_argument("--relearn_tokens", type=int, default=8192, help="forget-train tokens the attacker uses")
    parser.add_argument("--relearn_mode", choices=("full", "lora"), default="full")
    parser.add_argument(
        "--bottleneck",
        help="a trained bottleneck directory: adds our rows (stats + select + apply); `tiny` with --tiny",
    )
    parser.add_argument("--num_codes", type=int, default=1024, help="codes per layer our edit removes")
    parser.add_argument("--stats_tokens", type=int, default=65_536, help="train tokens per corpus for our statistics")
    parser.add_argument("--save_models", action="store_true", help="save every unlearned model under OUT/METHOD/model")
    parser.add_argument("--out", default="outputs/baselines_bench")
    args = parser.parse_args(argv)
    if not args.tiny and args.data_dir is None:
        parser.error("--data_dir is required")
    for name in ("steps", "batch_size", "relearn_steps", "train_tokens", "eval_tokens"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "relearn_steps" else 1):
            parser.error(f"--{name} must be positive")
    common.resolve_precision(args)
    return args


def evaluate(model, heldout: dict[str, torch.Tensor], args, label: str) -> dict[str, float]:
    """Held-out loss on forget, history and wiki, plus the token-weighted retain mean."""
    return common.heldout_losses(model, heldout, args.eval_batch_size, args.bf16, args.skip_positions, label)


def method_overrides(name: str, args) -> tuple[str, dict]:
    method, overrides = VARIANTS.get(name, (name, {}))
    overrides = dict(overrides)
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    if args.batch_size is not None:
        overrides["batch_size"] = args.batch_size
    return method, overrides


TABLE_HEADER = [
    "method",
    "steps",
    "tokens seen",
    "trained params",
    "wall s",
    "Δforget",
    "Δhistory",
    "Δwiki",
    "Δretain",
    "forget",
    "retain",
    "relearn Δforget",
]


def table(rows: list[dict]) -> list[str]:
    return markdown_table(TABLE_HEADER, [table_row(r) for r in rows], align="l" + "r" * 11).split("\n")


def table_row(r: dict) -> list[str]:
    d, loss = r["delta"], r["loss"]
    relearned = r.get("relearn")
    recovered = "–" if not relearned else f"{-relearned['recovery'][-1]:+.4f} @{relearned['steps'][-1]}"
    tokens = "–" if r.get("tokens") is None else f"{sum(r['tokens'].values()):,}"
    params = "–" if r.get("trainable_parameters") is None else f"{r['trainable_parameters']:,}"
    seconds = "–" if r.get("seconds") is None else f"{r['seconds']:.1f}"
    deltas = [common.fmt(d[k], True) for k in ("forget", "history", "wiki", "retain")]
    losses = [common.fmt(loss["forget"]), common.fmt(loss["retain"])]
    return [r["method"], r.get("steps", "–"), tokens, params, seconds, *deltas, *losses, recovered]


def run_ours(model, train, heldout, base, args, timer) -> list[dict]:
    """Our rows: the unedited bottleneck, and the edit found from statistics on the same train chunks."""
    from codeunlearn.unlearn.selection import SelectionRule, select_codes
    from codeunlearn.unlearn.statistics import collect_code_statistics

    bmodel = attach_bottleneck(model, args.bottleneck)
    bmodel.clear_edits()
    cap = max(1, args.stats_tokens // args.seq_len)
    retain_chunks = torch.cat([train["history"][:cap], train["wiki"][:cap]])
    with timer.stage("ours: evaluate unedited bottleneck"):
        unedited = evaluate(bmodel, heldout, args, "unedited bottleneck")
    started = time.perf_counter()
    with timer.stage("ours: statistics + selection + apply"):
        forget_stats = collect_code_statistics(
            bmodel, train["forget"][:cap], args.eval_batch_size, corpus="forget", progress=True, bf16=args.bf16
        )
        retain_stats = collect_code_statistics(
            bmodel, retain_chunks, args.eval_batch_size, corpus="retain", progress=True, bf16=args.bf16
        )
        edit = select_codes(forget_stats, retain_stats, SelectionRule(num_codes=args.num_codes), args.topic)
        bmodel.apply_edit(edit)
    seconds = time.perf_counter() - started
    with timer.stage("ours: evaluate edit"):
        edited = evaluate(bmodel, heldout, args, "edited bottleneck")
    bmodel.detach()
    tokens = {"forget": int(train["forget"][:cap].numel()), "retain": int(retain_chunks.numel())}

    def row(name: str, losses: dict, **extra) -> dict:
        delta = {k: losses[k] - base[k] for k in ("forget", "history", "wiki", "retain")}
        return {"method": name, "loss": losses, "delta": delta, **extra}

    return [
        row("ours: bottleneck, unedited", unedited),
        row(f"ours: bottleneck + edit ({edit.num_codes} codes)", edited, seconds=seconds, tokens=tokens, steps=0),
    ]


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    timer = common.Timer()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = common.now()
    print(common.command_line(), flush=True)
    torch.manual_seed(0)

    with timer.stage("load model"):
        model, tokenizer, tiny_dir = common.load_benchmark_model(args, "baselines_tiny_")

    with timer.stage("load data"):
        sources = common.corpus_sources(args.data_dir, args.topic)
        cap = max(args.train_tokens, args.eval_tokens, args.stats_tokens)
        train, heldout = common.load_splits(sources, tokenizer, args, max_tokens=cap)
        train = {name: chunks[: common.chunks_of(args.train_tokens, args.seq_len)] for name, chunks in train.items()}
        heldout = {name: chunks[: common.chunks_of(args.eval_tokens, args.seq_len)] for name, chunks in heldout.items()}
        if any(len(heldout[name]) == 0 for name in sources):
            raise SystemExit("a corpus has no held-out chunk: raise --heldout_fraction or lower --seq_len")
        retain_train = shuffled_chunks([train["history"], train["wiki"]], seed=args.split_seed)
        relearn_chunks = train["forget"][: max(1, args.relearn_tokens // args.seq_len)]
        token_counts = {n: {"train": train[n].numel(), "heldout": heldout[n].numel()} for n in sources}
        for name, counts in token_counts.items():
            print(
                f"  {name}: {sources[name].relative_to(args.data_dir)}: train {counts['train']}, held-out {counts['heldout']}"
            )

    with timer.stage("eval: base model"):
        base = evaluate(model, heldout, args, "base")
    print("  base: " + ", ".join(f"{k} {v:.4f}" for k, v in base.items()), flush=True)
    rows = [{"method": "base model", "loss": base, "delta": dict.fromkeys(base, 0.0)}]
    configs = {}

    if args.tiny and args.bottleneck == "tiny":
        with timer.stage("train tiny bottleneck"):
            mix = shuffled_chunks(list(train.values()), seed=0)
            args.bottleneck = str(tiny.train_tiny_bottleneck(model, mix, tiny_dir, args.bf16))
    if args.bottleneck:
        rows += run_ours(model, train, heldout, base, args, timer)

    for name in args.methods:
        method_name, overrides = method_overrides(name, args)
        method = make_method(method_name, **overrides)
        configs[name] = method.config.to_dict()
        work = copy.deepcopy(model)  # every method starts from the same base weights
        train_args = BaselineTrainingArguments(
            output_dir=str(out / name),
            gradient_accumulation_steps=args.gradient_accumulation_steps,
            bf16=args.bf16,
            log_every=1,
            save_model=args.save_models,
            overwrite=True,
        )
        with timer.stage(f"{name}: train"):
            result = train_baseline(work, method, train["forget"], retain_train, train_args, tokenizer)
        with timer.stage(f"{name}: eval"):
            losses = evaluate(work, heldout, args, name)
        row = {
            "method": name,
            "loss": losses,
            "delta": {k: losses[k] - base[k] for k in losses},
            "seconds": result.prepare_seconds + result.train_seconds,  # setup (reference, RMU's norm pass) + loop
            "prepare_seconds": result.prepare_seconds,
            "train_seconds": result.train_seconds,
            "steps": result.steps,
            "tokens": result.tokens,
            "trainable_parameters": result.trainable_parameters,
            "resolved": {k: v for k, v in result.resolved.items() if k != "trained_parameters"},
        }
        if args.relearn_steps:
            config = RelearnConfig(
                steps=args.relearn_steps,
                eval_steps=sorted({0, max(1, args.relearn_steps // 2), args.relearn_steps}),
                mode=args.relearn_mode,
                batch_size=args.batch_size or 4,
                bf16=args.bf16,
                eval_batch_size=args.eval_batch_size,
                skip_positions=args.skip_positions,
            )
            with timer.stage(f"{name}: relearn"):
                row["relearn"] = relearn(work, relearn_chunks, heldout["forget"], config, in_place=True).to_dict()
        rows.append(row)
        print("\n".join(table([row])[2:]), flush=True)
        del work
        gc.collect()

    lines = table(rows)
    result = {
        "command": common.command_line(),
        "date": started.isoformat(timespec="seconds"),
        "machine": common.machine_info(),
        "args": vars(args),
        "corpora": {name: str(sources[name].relative_to(args.data_dir)) for name in sources},
        "tokens": token_counts,
        "base": base,
        "rows": rows,
        "configs": configs,
        "seconds": timer.seconds,
    }
    md = [
        f"# Gradient baselines: {args.topic}",
        "",
        "```",
        common.command_line(),
        "```",
        "",
        f"- date: {result['date']}; machine: {common.machine_summary()}; {'bf16 autocast' if args.bf16 else 'fp32'}",
        f"- model: `{'tiny random Llama' if args.tiny else args.model}`; forget `{result['corpora']['forget']}`; retain "
        f"`{result['corpora']['history']}` + `{result['corpora']['wiki']}` (mixed); document split "
        f"{1 - args.heldout_fraction:.0%}/{args.heldout_fraction:.0%}, seed {args.split_seed}; seq_len {args.seq_len}",
        "- tokens (train pool / held-out eval): "
        + ", ".join(f"{n} {c['train']} / {c['heldout']}" for n, c in token_counts.items()),
        f"- budget: steps {args.steps or 'method default'}, batch {args.batch_size or 'method default'} chunks per corpus "
        f"x {args.gradient_accumulation_steps} accumulation; methods otherwise at their defaults (configs below)",
        "- Δ = held-out mean next-token loss (nat/token, first target of each chunk skipped) minus the base model's; "
        "retain = token-weighted mean of history and wiki; wall s = the method's setup (reference copy, RMU's norm "
        "pass) and optimisation loop (ours: statistics + selection + apply; the bottleneck's one-off training not "
        "counted); tokens seen = training tokens over all corpora; relearn Δforget = forget loss after the relearning "
        "steps minus before (negative = recovered)",
        "",
        "## Results",
        "",
        *lines,
        "",
        "## Method configs",
        "",
        *(f"- `{name}`: `{json.dumps(config)}`" for name, config in configs.items()),
        *(f"- `{r['method']}` resolved: `{json.dumps(r['resolved'])}`" for r in rows if r.get("resolved")),
        "",
        *timer.markdown(),
    ]
    common.write_markdown(out / "baselines.md", md)
    common.write_json(out / "baselines.json", result)
    print()
    print("\n".join(lines))
    print()
    print(timer.summary())
    print(f"wrote {out / 'baselines.md'} and {out / 'baselines.json'}")


if __name__ == "__main__":
    main()
