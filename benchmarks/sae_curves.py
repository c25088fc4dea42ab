"""SAE forgetting curves, SAE quality and the guardrail's false-positive rate and padding attack.

For a trained SAE bottleneck (e.g. `codeunlearn train --bottleneck sae --layers 15 ...`, or any sae-lens directory)
on the microbiology (forget) vs U.S. history + WikiText (retain) split, held-out documents only:

1. SAE quality per held-out corpus: L0, FVU, dead features, and the next-token loss with the bare reconstruction
   spliced in (no error term) vs the base model and vs zero-ablation ("CE loss recovered").
2. Statistics on the train documents; features selected once (`--score`, retain-frequency cap, top-N) and every
   curve point is the top-N prefix. For each N: `zero`, `clamp` (multiplier x the feature's mean forget activation),
   `guardrail` (the clamp or zero behind a local-window gate calibrated to `--target_fpr` on U.S.-history train
   text) and a random-features control (clamp). Δ = held-out loss minus the base model's (with its error term an
   unedited SAE *is* the base model). With `--codebook_curves` (a forget_curves.py curves.json) the codebook's
   `substitute` curve is drawn and tabled beside them.
3. Guardrail: false-positive rate on held-out U.S.-history windows, the share of held-out forget windows gated, and
   the padding attack: held-out forget passages preceded by `--pad_tokens` tokens of held-out U.S.-history text,
   blocked = gated on at least one passage token; next to it the published whole-prompt gate (fraction of the
   prompt's tokens firing a selected feature), calibrated to the same false-positive rate on retain chunks.

    python benchmarks/sae_curves.py --data_dir ../shared/data --sae outputs/sae_l15/bottleneck \\
        --num_features 16 64 256 1024 --codebook_curves outputs/curves/micro/curves.json --out outputs/sae_curves

Writes OUT/sae_curves.md, OUT/sae_curves.json and OUT/sae_curves.png (`--append_results benchmarks/RESULTS.md`
appends the markdown there too).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from tqdm.auto import tqdm

from codeunlearn.bottleneck.edit import Edit, Guardrail
from codeunlearn.bottleneck.loading import attach_bottleneck
from codeunlearn.data import shuffled_chunks
from codeunlearn.evaluate.evaluation import sae_quality
from codeunlearn.kinds.sae.bottleneck import SAEOutput
from codeunlearn.kinds.sae.interventions import window_scores
from codeunlearn.runtime import autocast, batches, model_device
from codeunlearn.tables import markdown_table
from codeunlearn.unlearn.guardrail import calibrate_guardrail, calibrate_threshold
from codeunlearn.unlearn.selection import SelectionRule, random_control, select_codes, truncate
from codeunlearn.unlearn.statistics import collect_code_statistics

if __package__:
    from . import common, tiny
else:  # run as a file: Python puts the script's own folder first on sys.path
    import common
    import tiny

METHODS = ("zero", "clamp", "guardrail", "random")
CORPORA = ("forget", "history", "wiki", "retain")
LABELS = {
    "zero": "SAE zero-ablation",
    "clamp": "SAE clamp",
    "guardrail": "SAE guardrail (clamp where gated)",
    "random": "random features, clamp",
    "codebook": "codebook substitute",
}
COLORS = {
    "zero": "tab:blue",
    "clamp": "tab:red",
    "guardrail": "tab:purple",
    "random": "tab:gray",
    "codebook": "tab:green",
}


# ---------------------------------------------------------------------------------------------------- gate scores
@torch.no_grad()
def firing(bmodel, chunks: torch.Tensor, features: dict[int, torch.Tensor], args, keep_last: int | None = None):
    """Per layer: (fires (n, T, F) bool for `features` in their ranked order, counted (n, T) bool), on the last
    `keep_last` positions of each row when given. Unedited SAE; one forward up to the deepest bottleneck."""
    fires: dict[int, list[torch.Tensor]] = {layer: [] for layer in features}
    counted: dict[int, list[torch.Tensor]] = {layer: [] for layer in features}

    def observe(layer: int, states: torch.Tensor, result: SAEOutput) -> None:
        if layer in features:
            hit = result.acts[..., features[layer].to(result.acts.device)] > 0
            hit = hit & ~result.passthrough.unsqueeze(-1)
            keep = slice(-keep_last, None) if keep_last else slice(None)
            fires[layer].append(hit[:, keep].cpu())
            counted[layer].append((~result.passthrough)[:, keep].cpu())

    device = model_device(bmodel)
    with autocast(device, args.bf16):
        for batch in batches(chunks, args.batch_size):
            bmodel.run_to_deepest(batch.to(device), observe)
    return {layer: (torch.cat(fires[layer]), torch.cat(counted[layer])) for layer in features}


def window_gate_scores(fires: torch.Tensor, n: int, window: int) -> torch.Tensor:
    """Local-window scores of the top-n features: (rows, T)."""
    return window_scores(fires[..., :n].sum(-1), window)


# ---------------------------------------------------------------------------------------------------- output
def curve_table(rows: list[dict]) -> list[str]:
    header = [
        "N/layer",
        "method",
        "removed",
        "Δforget",
        "Δhistory",
        "Δwiki",
        "Δretain",
        "forget − retain",
        "forget",
        "history",
        "wiki",
    ]
    return markdown_table(header, [curve_row(r) for r in rows]).split("\n")


def curve_row(r: dict) -> list[object]:
    d, loss = r["delta"], r.get("loss", {})
    deltas = [common.fmt(d.get(k), signed=True) for k in CORPORA]
    losses = [common.fmt(loss.get(k)) for k in ("forget", "history", "wiki")]
    n = r["n"] if r["n"] is not None else "–"
    return [n, r["label"], r["removed"], *deltas, common.fmt(d["forget"] - d["retain"], signed=True), *losses]


def quality_table(quality: list[dict]) -> list[str]:
    """The SAE's reconstruction quality per layer and held-out corpus."""
    header = [
        "layer",
        "corpus",
        "L0",
        "FVU",
        "dead features",
        "CE base",
        "CE spliced",
        "Δ CE",
        "CE zero-ablated",
        "CE recovered",
    ]
    return markdown_table(header, [quality_row(q) for q in quality]).split("\n")


def quality_row(q: dict) -> list[object]:
    return [
        q["layer"],
        q["corpus"],
        f"{q['l0']:.1f}",
        f"{q['fvu']:.4f}",
        f"{q['dead_features']} of {q['num_features']}",
        f"{q['ce_base']:.4f}",
        f"{q['ce_spliced']:.4f}",
        f"{q['ce_spliced'] - q['ce_base']:+.4f}",
        f"{q['ce_zero_ablation']:.4f}",
        f"{q['ce_recovered']:.1%}",
    ]


def gate_table(num_features: list[int], gates: dict, attack: dict, pads: list[int]) -> list[str]:
    """Per N/layer: the guardrail's false positives, the passages it blocks, and those still blocked after each
    padding length, by the window gate and by the whole-prompt gate."""
    header = ["N/layer", "FPR history (held-out windows)", "FPR wiki", "forget windows gated"]
    header += ["passages blocked (no padding)", *(f"still blocked after {p}" for p in pads)]
    header += [f"whole-prompt gate still blocked after {p}" for p in pads]
    rows = []
    for n in num_features:
        g, a = gates[n], attack[n]
        rows.append(
            [n, common.fmt(g["history_fpr"], pct=True), common.fmt(g["wiki_fpr"], pct=True)]
            + [common.fmt(g["forget_gated"], pct=True), common.fmt(a["blocked"][0], pct=True)]
            + [common.fmt(a["still_blocked"][p], pct=True) for p in pads]
            + [common.fmt(a["prompt_gate_still_blocked"][p], pct=True) for p in pads]
        )
    return markdown_table(header, rows).split("\n")


def plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for method in (*METHODS, "codebook"):
        points = sorted((r["removed"], r["delta"]) for r in rows if r["method"] == method and r["removed"])
        if not points:
            continue
        xs = [p[0] for p in points]
        forget = [p[1]["forget"] for p in points]
        retain = [p[1]["retain"] for p in points]
        left.plot(xs, forget, "-o", color=COLORS[method], label=f"{LABELS[method]}: forget")
        left.plot(xs, retain, "--s", color=COLORS[method], markerfacecolor="none", label=f"{LABELS[method]}: retain")
        right.plot(retain, forget, "-o", color=COLORS[method], label=LABELS[method])
        for x, y, n in zip(retain, forget, xs, strict=True):
            right.annotate(str(n), (x, y), fontsize=6, xytext=(2, 2), textcoords="offset points")
    left.axhline(0.0, color="black", linewidth=0.6)
    left.set_xscale("log")
    left.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda x, _: f"{x:g}"))
    left.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    left.set_xlabel("features (SAE) / codes (codebook) removed, all layers")
    left.set_ylabel("Δ held-out loss (nat/token)")
    left.set_title(title)
    left.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=6)
    right.axhline(0.0, color="black", linewidth=0.6)
    right.axvline(0.0, color="black", linewidth=0.6)
    right.set_xlabel("Δ retain loss (nat/token)")
    right.set_ylabel("Δ forget loss (nat/token)")
    right.set_title("trade-off (labels: number removed)")
    right.grid(True, alpha=0.3)
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def codebook_rows(path: str) -> list[dict]:
    """The `substitute` rows of a forget_curves.py curves.json, as curve rows (deltas vs the unedited codebook)."""
    data = json.loads(Path(path).read_text())
    rows = []
    for r in data["rows"]:
        if r.get("method") == "substitute" and "delta" in r:
            rows.append(
                {
                    "n": r["num_codes_per_layer"],
                    "method": "codebook",
                    "label": LABELS["codebook"],
                    "removed": r["codes_removed"],
                    "delta": r["delta"],
                    "loss": r["loss"],
                }
            )
    return rows


# ---------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    common.add_split_arguments(parser)
    common.add_model_arguments(parser)
    parser.add_argument(
        "--sae",
        help="SAE bottleneck: its directory (codeunlearn train --bottleneck sae), a sae-lens dir or a Hub repo id",
    )
    parser.add_argument("--num_features", type=int, nargs="+", default=[16, 64, 256, 1024])
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--score", choices=("frequency_ratio", "mean_activation_difference"),
                        default="mean_activation_difference")  # fmt: skip
    parser.add_argument("--min_forget_count", type=int, default=5)
    parser.add_argument("--max_retain_frequency", type=float, default=0.01, help="retain-frequency cap")
    parser.add_argument("--multiplier", type=float, default=-10.0, help="clamp multiplier (negative)")
    parser.add_argument("--clamp_scale", choices=("mean", "max"), default="mean")
    parser.add_argument("--window", type=int, default=32, help="guardrail window (tokens)")
    parser.add_argument("--target_fpr", type=float, default=0.02)
    parser.add_argument("--guardrail_action", choices=("zero", "clamp"), default="clamp")
    parser.add_argument("--pad_tokens", type=int, nargs="+", default=[1024, 2048, 4096])
    parser.add_argument("--padding_passages", type=int, default=20, help="held-out forget passages attacked")
    parser.add_argument("--passage_tokens", type=int, default=256)
    parser.add_argument("--stats_tokens", type=int, default=100_000, help="statistics tokens per corpus (train)")
    parser.add_argument("--calibration_tokens", type=int, default=65_536, help="U.S.-history train tokens")
    parser.add_argument("--eval_tokens", type=int, default=8_192, help="held-out tokens per corpus (losses)")
    parser.add_argument("--gate_eval_tokens", type=int, default=32_768, help="held-out tokens per corpus (gates)")
    parser.add_argument("--codebook_curves", help="curves.json of benchmarks/forget_curves.py (same split)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--append_results", help="append the markdown to this file (e.g. benchmarks/RESULTS.md)")
    parser.add_argument("--save_edits", action="store_true",
                        help="write every evaluated edit to OUT/edits/{method}_{N}.json (for `codeunlearn apply`)")  # fmt: skip
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--random_seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not args.tiny and (args.data_dir is None or args.sae is None):
        parser.error("--data_dir and --sae are required")
    if min(args.num_features) < 1 or args.multiplier >= 0:
        parser.error("--num_features must be positive and --multiplier negative")
    args.num_features = sorted(set(args.num_features))
    common.resolve_precision(args)
    return args


def load_corpora(args, tokenizer) -> tuple[dict, dict, dict]:
    """(sources, train, heldout): the train chunks capped at the most any stage reads, every held-out chunk (the
    padding attack draws its passages and padding from all of them)."""
    sources = common.corpus_sources(args.data_dir, args.topic)
    train, heldout = common.load_splits(sources, tokenizer, args)
    cap = max(args.stats_tokens, args.calibration_tokens, args.gate_eval_tokens, args.eval_tokens)
    train = {name: chunks[: common.chunks_of(cap, args.seq_len)] for name, chunks in train.items()}
    return sources, train, heldout


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    timer = common.Timer()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = common.now()
    print(common.command_line(), flush=True)
    torch.manual_seed(0)

    with timer.stage("load model"):
        model, tokenizer, tiny_dir = common.load_benchmark_model(args, "sae_curves_tiny_")

    with timer.stage("load data"):
        sources, train, heldout = load_corpora(args, tokenizer)

        def chunks_of(tokens: int) -> int:
            return common.chunks_of(tokens, args.seq_len)

        stats_train = {name: train[name][: chunks_of(args.stats_tokens)] for name in train}
        calibration = train["history"][: chunks_of(args.calibration_tokens)]
        eval_held = {name: heldout[name][: chunks_of(args.eval_tokens)] for name in heldout}
        gate_held = {name: heldout[name][: chunks_of(args.gate_eval_tokens)] for name in heldout}
        tokens = {n: {"stats": stats_train[n].numel(), "eval": eval_held[n].numel(), "gate_eval": gate_held[n].numel()}
                  for n in sources}  # fmt: skip
        tokens["calibration (history train)"] = {"tokens": calibration.numel()}
        for name, count in tokens.items():
            print(f"  {name}: {count}", flush=True)

    if args.tiny and args.sae is None:
        with timer.stage("train tiny SAE"):
            mix = shuffled_chunks([stats_train[n] for n in ("forget", "history", "wiki")], seed=0)
            args.sae = str(tiny.train_tiny_sae(model, mix, tiny_dir, args.bf16))

    with timer.stage("load SAE"):
        bmodel = attach_bottleneck(model, args.sae)
        bmodel.clear_edits()  # the curves start from the unedited SAE
        if not bmodel.config.has_activations:
            raise SystemExit(f"{args.sae} holds a {bmodel.config.kind} bottleneck; use benchmarks/forget_curves.py")
        layers = bmodel.layers
        describe = {layer: f"{bmodel.bottleneck(layer).architecture}, {bmodel.num_features(layer)} features"
                    for layer in layers}  # fmt: skip
        print(f"  SAE layers {layers}: {describe}", flush=True)

    # ------------------------------------------------------------------------------------------ SAE quality
    with timer.stage("SAE quality"):
        with bmodel.disabled():
            base = common.heldout_losses(bmodel, eval_held, args.batch_size, args.bf16, label="base")
        with bmodel.splice("reconstruction"):
            spliced = common.heldout_losses(
                bmodel, eval_held, args.batch_size, args.bf16, label="spliced (no error term)"
            )
        with bmodel.splice("zero_ablation"):
            zeroed = common.heldout_losses(bmodel, eval_held, args.batch_size, args.bf16, label="zero-ablated")
        quality = []
        for name in ("forget", "history", "wiki"):
            for q in sae_quality(bmodel, eval_held[name], args.batch_size, args.bf16):
                recovered = (zeroed[name] - spliced[name]) / (zeroed[name] - base[name])
                quality.append({"corpus": name, **q.__dict__, "ce_base": base[name], "ce_spliced": spliced[name],
                                "ce_zero_ablation": zeroed[name], "ce_recovered": recovered})  # fmt: skip
                print(f"  {name} L{q.layer}: L0 {q.l0:.1f}, FVU {q.fvu:.4f}, dead {q.dead_features}, CE "
                      f"{base[name]:.4f} -> {spliced[name]:.4f} spliced, recovered {recovered:.1%}", flush=True)  # fmt: skip

    with timer.stage("statistics"):
        forget_stats = collect_code_statistics(bmodel, stats_train["forget"], args.batch_size, corpus=args.topic,
                                               bf16=args.bf16)  # fmt: skip
        retain_chunks = torch.cat([stats_train["history"], stats_train["wiki"]])
        retain_stats = collect_code_statistics(bmodel, retain_chunks, args.batch_size, corpus="history+wiki",
                                               bf16=args.bf16)  # fmt: skip

    with timer.stage("selection"):
        rule = SelectionRule(num_codes=max(args.num_features), min_forget_count=args.min_forget_count,
                             max_retain_frequency=args.max_retain_frequency, score=args.score)  # fmt: skip
        full = select_codes(forget_stats, retain_stats, rule, args.topic, "clamp", args.multiplier, args.clamp_scale)
        selected = {layer: len(c.codes) for layer, c in full.layers.items()}
        print(f"  selected per layer (max {rule.num_codes}): {selected}", flush=True)
        features = {layer: torch.tensor(c.codes, dtype=torch.long) for layer, c in full.layers.items() if c.codes}

    # ------------------------------------------------------------------------------------------ guardrail gates
    with timer.stage("guardrail: calibration and held-out gate rates"):
        cal = firing(bmodel, calibration, features, args)
        held_fires = {name: firing(bmodel, gate_held[name], features, args) for name in ("forget", "history", "wiki")}
        gates: dict[int, dict] = {}
        for n in args.num_features:
            thresholds, rates = {}, {"calibration_fpr": {}, "history_fpr": {}, "wiki_fpr": {}, "forget_gated": {}}
            for layer, (fires, counted) in cal.items():
                scores = window_gate_scores(fires, n, args.window)
                thresholds[layer] = calibrate_threshold(scores[counted], args.target_fpr)
                rates["calibration_fpr"][layer] = float((scores[counted] > thresholds[layer]).double().mean())
            for name, key in (("history", "history_fpr"), ("wiki", "wiki_fpr"), ("forget", "forget_gated")):
                union, counted_any = None, None
                for layer, (fires, counted) in held_fires[name].items():
                    on = (window_gate_scores(fires, n, args.window) > thresholds[layer]) & counted
                    union = on if union is None else union | on
                    counted_any = counted if counted_any is None else counted_any | counted
                rates[key] = float(union[counted_any].double().mean())
            gates[n] = {"thresholds": thresholds, **rates}
            print(f"  N={n}: thresholds {thresholds}; held-out FPR history {rates['history_fpr']:.2%}, wiki "
                  f"{rates['wiki_fpr']:.2%}; forget windows gated {rates['forget_gated']:.2%}", flush=True)  # fmt: skip
        if args.tiny:  # the shared-pass thresholds are the library's calibrate_guardrail's
            n = args.num_features[0]
            check = calibrate_guardrail(bmodel, truncate(full, n), calibration, args.window, args.target_fpr,
                                        args.guardrail_action, batch_size=args.batch_size, bf16=args.bf16)  # fmt: skip
            assert check.guardrail.thresholds == gates[n]["thresholds"], (check.guardrail.thresholds, gates[n])

    # ------------------------------------------------------------------------------------------ loss curves
    def make_edits(n: int) -> dict[str, Edit]:
        clamp = truncate(full, n)
        guardrail = Guardrail(args.window, gates[n]["thresholds"], args.guardrail_action, args.target_fpr,
                              {"corpus": "history (train)", "fpr": gates[n]["calibration_fpr"]})  # fmt: skip
        edits = {
            "zero": clamp.with_intervention("zero"),
            "clamp": clamp,
            "guardrail": clamp.with_intervention("guardrail", guardrail=guardrail),
            "random": random_control(clamp, forget_stats, retain_stats, seed=args.random_seed),
        }
        return {m: edits[m] for m in args.methods}

    rows = [
        {"n": None, "method": "base", "label": "base model (= unedited SAE with error term)", "removed": 0,
         "delta": dict.fromkeys(CORPORA, 0.0), "loss": base},
        {"n": None, "method": "spliced", "label": "SAE spliced, no error term", "removed": 0,
         "delta": {k: spliced[k] - base[k] for k in CORPORA}, "loss": spliced},
    ]  # fmt: skip
    with timer.stage("eval: edits"):
        work = [(n, m, e) for n in args.num_features for m, e in make_edits(n).items()]
        bar = tqdm(work, desc="edits", unit="edit")
        for n, method, edit in bar:
            bar.set_postfix(N=n, method=method)
            if args.save_edits:
                edit.save(out / "edits" / f"{method}_{n}.json")
            with bmodel.edited(edit):
                losses = common.heldout_losses(bmodel, eval_held, args.batch_size, args.bf16)
            row = {"n": n, "method": method, "label": LABELS[method], "removed": edit.num_codes,
                   "delta": {k: losses[k] - base[k] for k in CORPORA}, "loss": losses}  # fmt: skip
            rows.append(row)
            d = row["delta"]
            tqdm.write(f"  N={n:>5} {method:<9} Δforget {d['forget']:+.4f}  Δretain {d['retain']:+.4f}  "
                       f"(Δhistory {d['history']:+.4f}, Δwiki {d['wiki']:+.4f})")  # fmt: skip
    if args.codebook_curves:
        rows += codebook_rows(args.codebook_curves)

    # ------------------------------------------------------------------------------------------ padding attack
    with timer.stage("guardrail: padding attack"):
        length = args.passage_tokens
        stream = heldout["forget"].flatten()
        count = min(args.padding_passages, stream.numel() // length)
        passages = stream[: count * length].view(count, length)
        padding = heldout["history"].flatten()
        lengths = [0, *sorted(set(args.pad_tokens))]
        if padding.numel() < max(lengths) + count * 997:
            print(f"  note: {padding.numel()} held-out history tokens; padding offsets wrap around", flush=True)
        passage_fires: dict[int, dict[int, torch.Tensor]] = {}  # pad -> layer -> (count, length, F)
        prompt_fraction: dict[int, dict[int, torch.Tensor]] = {}  # pad -> n -> (count,) firing fraction of prompt
        for pad in tqdm(lengths, desc="padding", unit="length"):
            rows_by_layer: dict[int, list] = {layer: [] for layer in features}
            whole: dict[int, list] = {n: [] for n in args.num_features}
            for i in range(count):
                prefix = padding.roll(-(i * 997))[:pad]
                inputs = torch.cat([prefix, passages[i]]).unsqueeze(0)
                fired = firing(bmodel, inputs, features, args)
                for layer, (fires, _) in fired.items():
                    rows_by_layer[layer].append(fires[:, -length:])
                for n in args.num_features:  # the whole-prompt fraction, any layer
                    any_fire = sum((f[..., :n].any(-1) & c).double() for f, c in fired.values()) > 0
                    counted_all = next(iter(fired.values()))[1]
                    whole[n].append(any_fire.sum() / counted_all.sum().clamp_min(1))
            passage_fires[pad] = {layer: torch.cat(v) for layer, v in rows_by_layer.items()}
            prompt_fraction[pad] = {n: torch.stack(v) for n, v in whole.items()}
        # The whole-prompt gate's threshold: the same target FPR over retain chunks (history calibration chunks).
        cal_fraction = {n: (sum((f[..., :n].any(-1) & c).double() for f, c in cal.values()) > 0).sum(-1)
                        / next(iter(cal.values()))[1].sum(-1).clamp_min(1) for n in args.num_features}  # fmt: skip
        attack: dict[int, dict] = {}
        for n in args.num_features:
            blocked, gated_fraction = {}, {}
            for pad in lengths:
                on = None
                for layer, fires in passage_fires[pad].items():
                    layer_on = window_gate_scores(fires, n, args.window) > gates[n]["thresholds"][layer]
                    on = layer_on if on is None else on | layer_on
                blocked[pad], gated_fraction[pad] = on.any(-1), float(on.double().mean())
            prompt_threshold = calibrate_threshold(cal_fraction[n], args.target_fpr)
            prompt_blocked = {pad: prompt_fraction[pad][n] > prompt_threshold for pad in lengths}
            base_blocked = blocked[0]
            attack[n] = {
                "blocked": {pad: float(b.double().mean()) for pad, b in blocked.items()},
                "still_blocked": {
                    pad: float((base_blocked & blocked[pad]).sum()) / max(int(base_blocked.sum()), 1)
                    for pad in lengths
                    if pad
                },
                "gated_token_fraction": gated_fraction,
                "prompt_gate_blocked": {pad: float(b.double().mean()) for pad, b in prompt_blocked.items()},
                "prompt_gate_still_blocked": {
                    pad: float((prompt_blocked[0] & prompt_blocked[pad]).sum()) / max(int(prompt_blocked[0].sum()), 1)
                    for pad in lengths
                    if pad
                },
            }
            print(f"  N={n}: blocked {attack[n]['blocked']}; still blocked after padding {attack[n]['still_blocked']}; "
                  f"whole-prompt gate still blocked {attack[n]['prompt_gate_still_blocked']}", flush=True)  # fmt: skip

    # ------------------------------------------------------------------------------------------ outputs
    with timer.stage("write outputs"):
        plot(rows, out / "sae_curves.png", f"{args.topic}: held-out loss change, SAE at layers {layers}")
        pads = [pad for pad in lengths if pad]
        machine = common.machine_info()
        md = [
            f"## SAE forgetting: {args.topic} vs U.S. history + WikiText (held-out)",
            "",
            "```",
            common.command_line(),
            "```",
            "",
            f"- date: {started.isoformat(timespec='seconds')}; machine: {common.machine_summary()}, "
            f"{'bf16 autocast' if args.bf16 else 'fp32'}"
            f"{', ' + machine['cuda'] if machine['cuda'] else ''}",
            f"- SAE: `{args.sae}`, layers {layers} ({describe}); error term kept in every edited row",
            f"- selection: {args.score}, retain-frequency cap {args.max_retain_frequency}, min forget count "
            f"{args.min_forget_count}, selected per layer {selected}; clamp = {args.multiplier} x the feature's "
            f"{args.clamp_scale} forget activation; guardrail = {args.guardrail_action} where a {args.window}-token "
            f"window gate is on, calibrated to {args.target_fpr:.0%} of U.S.-history train windows",
            "- tokens: " + "; ".join(f"{k} {v}" for k, v in tokens.items()),
            "- Δ = held-out mean next-token loss (nat/token, first target of each chunk skipped) minus the base "
            "model's (codebook rows: minus the unedited codebook's); retain = token-weighted history + wiki",
            "",
            "### SAE quality (held-out)",
            "",
            *quality_table(quality),
            "",
            "### Forgetting curves",
            "",
            *curve_table(rows),
            "",
            "![SAE curves](sae_curves.png)",
            "",
            "### Guardrail: false positives and the padding attack",
            "",
            f"Padding: {', '.join(map(str, pads))} tokens of held-out U.S.-history text before each of {count} "
            f"held-out forget passages of {length} tokens; blocked = the gate is on at one passage token at least. "
            "Whole-prompt gate: the published design (fraction of the prompt's tokens firing a selected feature), "
            f"its threshold set to the same {args.target_fpr:.0%} false-positive rate over U.S.-history chunks.",
            "",
            *gate_table(args.num_features, gates, attack, pads),
            "",
            "Seconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timer.seconds.items()),
            "",
        ]
        common.write_markdown(out / "sae_curves.md", md)
        result = {
            "command": common.command_line(),
            "date": started.isoformat(timespec="seconds"),
            "machine": machine,
            "args": vars(args),
            "corpora": {name: str(path) for name, path in sources.items()},
            "tokens": tokens,
            "layers": layers,
            "quality": quality,
            "selected": selected,
            "rows": rows,
            "gates": {str(n): g for n, g in gates.items()},
            "padding_attack": {str(n): a for n, a in attack.items()},
            "edit": full.to_dict(),
            "seconds": timer.seconds,
        }
        common.write_json(out / "sae_curves.json", result)
        if args.append_results:
            with open(args.append_results, "a") as handle:
                handle.write("\n" + "\n".join(md).replace("](sae_curves.png)", f"]({out / 'sae_curves.png'})") + "\n")
    print("\n".join(md))
    print(f"wrote {out / 'sae_curves.md'}, {out / 'sae_curves.json'}, {out / 'sae_curves.png'}")


if __name__ == "__main__":
    main()
