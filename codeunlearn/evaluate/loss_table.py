"""The held-out loss table: forget and retain loss of a model with and without edits, their changes against a
reference row, and the bottleneck's reconstruction quality on the same text.

`codeunlearn eval` writes it, `codeunlearn demo` and `codeunlearn export --mode linear` print it, and the model card
of an export shows it (`codeunlearn.export.card`). Losses are mean next-token cross-entropy in nat/token.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.evaluate.evaluation import bottleneck_fidelity, mean_loss, sae_loss_recovered, sae_quality

REFERENCE_ROW = "bottleneck"


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


def quality_rows(
    bmodel: BottleneckedModel, corpora: dict[str, Tensor], batch_size: int = 8, bf16: bool = True, skip: int = 0
) -> tuple[list[dict[str, Any]], str]:
    """The bottleneck's reconstruction quality on each corpus and its markdown table: L0, FVU and CE loss recovered
    for a kind with activations (an SAE), FVU and codes used otherwise."""
    if bmodel.config.has_activations:
        rows = sae_quality_rows(bmodel, corpora, batch_size, bf16, skip)
        return rows, sae_quality_table(rows)
    rows = fidelity_rows(bmodel, corpora, batch_size, bf16)
    return rows, fidelity_table(rows)
