"""`codeunlearn eval` (the default): the held-out loss table of the base model, the unedited bottleneck and each edit.

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
directory. Writes OUTPUT/report.json and OUTPUT/report.md, and when an edited row is measured the held-out forget
loss increase per token of the edited rows against the unedited bottleneck: OUTPUT/token_loss_increase.json and .md
(the numbers) and token_loss_increase.png and .svg (the figure: by position, the first held-out forget passage word
by word, its 15 tokens whose loss rose most).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor

from codeunlearn import distributed, figures
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.loading import load_bottlenecked, resolve_bottleneck_dir
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.cli.common import check_skip_positions
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.evaluate.loss_table import (
    REFERENCE_ROW,
    TABLE_NOTE,
    RowSpec,
    evaluate_rows,
    loss_table,
    quality_rows,
    token_loss_increase,
    token_loss_markdown,
)
from codeunlearn.io import atomic_write_text
from codeunlearn.modeling import ModelArguments
from codeunlearn.unlearn.guardrail import gate_rate


@dataclass
class LossTableArguments:
    """The edits measured as rows of the loss table."""

    edits: list[str] = field(
        default_factory=list, metadata={"help": "Edit files; each one is evaluated alone as a row."}
    )
    skip_positions: int = field(
        default=0, metadata={"help": "Ignore the first N targets of every chunk (they have little context)."}
    )

    def __post_init__(self) -> None:
        # the upper end depends on --seq_len: `run` checks it (`check_skip_positions`)
        check_range("skip_positions", self.skip_positions, self.skip_positions >= 0, ">= 0")


def guardrail_rows(
    bmodel: BottleneckedModel, edits: list[tuple[str, Edit]], corpora: dict[str, Tensor], batch_size: int, bf16: bool
) -> list[dict[str, Any]]:
    """For each guardrail edit: the share of windows it gates on each corpus (on retain text: false positives)."""
    return [
        {"edit": name, "corpus": corpus, "gated": gate_rate(bmodel, edit, chunks, batch_size, bf16)["any"]}
        for name, edit in edits
        if edit.guardrail is not None
        for corpus, chunks in corpora.items()
    ]


def run(
    args: LossTableArguments,
    model_args: ModelArguments,
    data_args: DataArguments,
    run_args: Any,
    bottleneck_dir: str | None,
    batch_size: int,
) -> int:
    """Measure the rows, write OUTPUT/report.json and report.md, print the tables."""
    if bottleneck_dir is None:
        raise CodeunlearnError(
            "no --bottleneck_dir given", "pass --bottleneck_dir DIR for the loss table, or --suite NAME --model DIR"
        )
    check_skip_positions(args.skip_positions, data_args.seq_len)
    forget_corpora = read_corpora(data_args.forget_corpora, data_args, "forget_corpora")
    retain_corpora = read_corpora(data_args.retain_corpora, data_args, "retain_corpora")
    edit_files = [(path, Edit.load(path)) for path in args.edits]
    bmodel, tokenizer = load_bottlenecked(bottleneck_dir, model_args, run_args.progress, distributed.device())
    forget, retain = forget_corpora.pack(tokenizer, "heldout"), retain_corpora.pack(tokenizer, "heldout")
    specs = [RowSpec("base", None), RowSpec(REFERENCE_ROW, [])]
    if bmodel.edits:
        specs.append(
            RowSpec(f"{REFERENCE_ROW} + saved edits ({', '.join(e.topic for e in bmodel.edits)})", list(bmodel.edits))
        )
    specs += [RowSpec(f"{edit.topic} ({Path(path).name})", [edit]) for path, edit in edit_files]
    bf16 = run_args.bf16
    per_token: dict[str, Tensor] = {}
    rows = evaluate_rows(
        bmodel, forget, retain, specs, batch_size, args.skip_positions, bf16, run_args.progress, per_token
    )
    heldout = {"forget": forget, "retain": retain}
    fidelity, quality_table = quality_rows(bmodel, heldout, batch_size, bf16, args.skip_positions)
    gates: list[dict[str, Any]] = []
    if bmodel.config.has_activations:
        named = [(spec.name, e) for spec in specs for e in spec.edits or []]
        gates = guardrail_rows(bmodel, named, heldout, batch_size, bf16)
    gate_lines = [f"- {g['edit']}: gates {g['gated']:.2%} of held-out {g['corpus']} windows" for g in gates]
    report = {
        "bottleneck_dir": str(resolve_bottleneck_dir(bottleneck_dir)),
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
    output_dir = Path(run_args.output_dir)
    if distributed.is_main_process():
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "report.json", json.dumps(report, indent=1) + "\n")
        atomic_write_text(output_dir / "report.md", markdown + "\n")
    print(loss_table(rows))
    print()
    print(quality_table)
    if gate_lines:
        print("\n".join(gate_lines))
    print(f"wrote {output_dir / 'report.json'} and {output_dir / 'report.md'}")
    if distributed.is_main_process():
        edited = [spec.name for spec in specs if spec.edits]
        write_token_loss_increase(per_token, forget, tokenizer, edited, args.skip_positions, output_dir)
    return 0


def write_token_loss_increase(
    per_token: dict[str, Tensor], forget: Tensor, tokenizer: Any, edited: list[str], skip: int, output_dir: Path
) -> None:
    """Write OUTPUT/token_loss_increase.json and .md (which held-out forget tokens the edited rows made harder) and
    draw them (.png, .svg); nothing without an edited row."""
    data = token_loss_increase(per_token, forget, tokenizer.decode, edited, REFERENCE_ROW, skip)
    if data is None:
        return
    stem = output_dir / figures.TOKEN_LOSS_NAME
    atomic_write_text(stem.with_suffix(".json"), json.dumps(data, indent=1, ensure_ascii=False) + "\n")
    atomic_write_text(stem.with_suffix(".md"), token_loss_markdown(data, stem.name) + "\n")
    drawn = figures.draw_or_note("token loss increase", figures.token_loss_increase, data, stem)
    names = "json, md" + (", png, svg" if drawn else "")
    print(f"wrote {stem}.{{{names}}} (held-out forget loss increase per token against {REFERENCE_ROW!r})")
