"""The held-out loss table: forget and retain loss of a model with and without edits, their changes against a
reference row, and the bottleneck's reconstruction quality on the same text.

`codeunlearn eval` writes it, `codeunlearn demo` and `codeunlearn export --mode linear` print it, and the model card
of an export shows it (`codeunlearn.export.card`). Losses are mean next-token cross-entropy in nat/token.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from torch import Tensor

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.evaluate.evaluation import (
    bottleneck_fidelity,
    sae_loss_recovered,
    sae_quality,
    token_losses,
)
from codeunlearn.tables import escape_pipes, markdown_table

REFERENCE_ROW = "bottleneck"
PASSAGE_TOKENS = 96  # tokens of the first held-out forget passage shown one by one
TOP_TOKENS = 15  # the passage's tokens whose loss rose most


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
    forget_token_losses: dict[str, Tensor] | None = None,
) -> list[dict[str, Any]]:
    """Forget/retain loss of every row; deltas (and selectivity) against the `bottleneck` row when there is one.

    The model's own edits are set aside while rows are measured and restored afterwards. A `forget_token_losses`
    dict receives every row's per-token forget losses (`token_losses`: (chunks, seq_len - 1), no position skipped)
    by row name: the forget loss of the table is their mean after `skip_positions`, so `token_loss_increase` reads
    the same numbers without another pass."""
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
                disabled = bmodel.disabled() if spec.edits is None else contextlib.nullcontext()
                with disabled:
                    per_token = token_losses(bmodel, chunks, batch_size, desc, bf16)
                # what `mean_loss` computes, from the per-token losses kept for the figure
                losses[corpus] = float(per_token[:, skip_positions:].mean())
                if corpus == "forget" and forget_token_losses is not None:
                    forget_token_losses[spec.name] = per_token
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
    return markdown_table(
        [
            "layer",
            "corpus",
            "L0",
            "FVU",
            "dead features",
            "CE base",
            "CE spliced (no error term)",
            "Δ CE",
            "CE recovered",
        ],
        (
            [
                r["layer"],
                r["corpus"],
                f"{r['l0']:.1f}",
                f"{r['fvu']:.4f}",
                f"{r['dead_features']} of {r['num_features']}",
                f"{r['ce_base']:.4f}",
                f"{r['ce_spliced']:.4f}",
                f"{r['ce_delta_spliced']:+.4f}",
                f"{r['ce_recovered']:.2%}",
            ]
            for r in rows
        ),
        align="rlrrrrrrr",
    )


def _fmt(value: Any, signed: bool = False) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:+.4f}" if signed else f"{value:.4f}"
    return str(value)


def loss_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of losses and deltas (nat/token)."""
    return markdown_table(
        ["row", "codes removed", "forget loss", "retain loss", "Δ forget", "Δ retain", "selectivity"],
        (
            [
                r["row"],
                _fmt(r["codes_removed"]),
                _fmt(r["forget_loss"]),
                _fmt(r["retain_loss"]),
                _fmt(r["delta_forget"], True),
                _fmt(r["delta_retain"], True),
                _fmt(r["selectivity"], True),
            ]
            for r in rows
        ),
        align="lrrrrrr",
    )


def fidelity_table(rows: list[dict[str, Any]]) -> str:
    """Markdown table of the bottleneck's reconstruction quality."""
    return markdown_table(
        ["layer", "corpus", "FVU (quantized tokens)", "FVU (all tokens)", "passthrough tokens", "codes used"],
        (
            [
                r["layer"],
                r["corpus"],
                f"{r['fvu_ordinary']:.4f}",
                f"{r['fvu_all']:.4f}",
                f"{r['passthrough_fraction']:.2%}",
                r["codes_used"],
            ]
            for r in rows
        ),
        align="rlrrrr",
    )


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


# ------------------------------------------------------------------------------------------------ per token


def token_pieces(ids: Sequence[int], decode: Callable[[list[int]], str]) -> list[str]:
    """The text each token adds to the decoded text of the tokens before it (so a SentencePiece token keeps its
    leading space and a character split over byte-level tokens shows once it is whole); a token decoded alone where
    decoding is not incremental (a tokenizer that cleans up spaces)."""
    pieces, before = [], ""
    for end in range(1, len(ids) + 1):
        text = decode(list(ids[:end]))
        pieces.append(text[len(before) :] if text.startswith(before) else decode([int(ids[end - 1])]))
        before = text
    return pieces


def token_loss_increase(
    per_token: Mapping[str, Tensor],
    chunks: Tensor,
    decode: Callable[[list[int]], str],
    edited: Sequence[str],
    reference: str = REFERENCE_ROW,
    skip_positions: int = 0,
    passage_tokens: int = PASSAGE_TOKENS,
    top: int = TOP_TOKENS,
) -> dict[str, Any] | None:
    """Which held-out forget tokens got harder: the loss increase of each `edited` row against `reference`, per token.

    `per_token` holds each row's per-token forget losses on `chunks` (what `evaluate_rows` fills
    `forget_token_losses` with); losses are read after `skip_positions`, as the table's are, so each row's
    `mean_increase` is its Δ forget in the table (to float rounding). Returns a JSON-ready dict, or None without a
    reference or an edited row:

    - `positions`: the predicted token's position in its chunk (loss column i predicts token i + 1);
    - `by_position`: per edited row, the mean increase at each position, over every chunk;
    - `passage`: chunk 0's first `passage_tokens` predicted tokens for the first edited row: each token's
      position, id, text (`token_pieces`), reference loss, loss and increase;
    - `top`: the `top` tokens of that passage whose loss rose most, largest first."""
    rows = [row for row in edited if row in per_token and row != reference]
    if reference not in per_token or not rows or chunks.shape[1] - 1 <= skip_positions:
        return None
    base = per_token[reference].double()
    increase = {row: per_token[row].double()[:, skip_positions:] - base[:, skip_positions:] for row in rows}
    row = rows[0]
    end = min(skip_positions + passage_tokens, chunks.shape[1] - 1)
    ids = [int(i) for i in chunks[0, : end + 1]]
    pieces = token_pieces(ids, decode)
    passage = [
        {
            "position": column + 1,
            "token_id": ids[column + 1],
            "token": pieces[column + 1],
            "reference_loss": float(per_token[reference][0, column]),
            "loss": float(per_token[row][0, column]),
            "increase": float(per_token[row][0, column]) - float(per_token[reference][0, column]),
        }
        for column in range(skip_positions, end)
    ]
    return {
        "reference": reference,
        "rows": rows,
        "skip_positions": skip_positions,
        "chunks": int(chunks.shape[0]),
        "positions": list(range(skip_positions + 1, chunks.shape[1])),
        "by_position": {r: increase[r].mean(0).tolist() for r in rows},
        "mean_increase": {r: float(increase[r].mean()) for r in rows},
        "passage": {"row": row, "chunk": 0, "tokens": passage},
        "top": sorted(passage, key=lambda t: -t["increase"])[:top],
    }


def _cell(text: str) -> str:
    """A token's text as a Markdown table cell (quoted, so spaces and line breaks show)."""
    return escape_pipes(repr(text))


def token_loss_markdown(data: Mapping[str, Any], figure: str) -> str:
    """The numbers of `token_loss_increase` as Markdown (the mean by position stays in the JSON file)."""
    reference, passage = data["reference"], data["passage"]
    lines = [
        "# Held-out forget loss increase per token",
        "",
        f"Each edited row against the `{reference}` row (the loss table's Δ reference), in nat, on "
        f"{data['chunks']} held-out forget chunks; the first {data['skip_positions']} position(s) of every chunk are "
        f"skipped, as in the table. Figure: `{figure}.png` / `{figure}.svg`; the mean increase at every position "
        f"is `by_position` in `{figure}.json`.",
        "",
        markdown_table(
            ["row", "mean increase (the table's Δ forget)"],
            ([escape_pipes(row), f"{value:+.4f}"] for row, value in data["mean_increase"].items()),
            align="lr",
        ),
        "",
        f"## The {len(data['top'])} tokens of the passage whose loss rose most ({passage['row']})",
        "",
        markdown_table(
            ["position", "token", "increase"],
            ([t["position"], _cell(t["token"]), f"{t['increase']:+.4f}"] for t in data["top"]),
            align="rlr",
        ),
        "",
        f"## The passage: chunk {passage['chunk']}, {passage['row']} against {reference}",
        "",
        markdown_table(
            ["position", "token", f"{reference} loss", "loss", "increase"],
            (
                [
                    t["position"],
                    _cell(t["token"]),
                    f"{t['reference_loss']:.4f}",
                    f"{t['loss']:.4f}",
                    f"{t['increase']:+.4f}",
                ]
                for t in passage["tokens"]
            ),
            align="rlrrr",
        ),
    ]
    return "\n".join(lines)
