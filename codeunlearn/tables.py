"""Markdown tables: the one writer every report, card and page of the package lays its tables out with.

The writer only lays out: each cell is written as `str(cell)`, so a number is formatted where the table is built.
It does not escape: a cell holding `|` splits its row. A table whose cells may hold one (a row name, a token) escapes
them first with `escape_pipes`; the others hold text the package wrote itself.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

ALIGNMENTS = {"l": "---", "r": "---:"}  # "l": Markdown's default (left); "r": right, for numbers


def markdown_table(header: Sequence[object] | None, rows: Iterable[Sequence[object]], align: str | None = None) -> str:
    """A Markdown table: the header row, the alignment row, one line per row, joined by newlines (no newline at the
    end; no rows: the header and alignment rows alone).

    Args:
        header: the column names; None for a table without them (an empty header row, `| | |`).
        rows: the cells of each row, as many as there are columns; each is written as `str(cell)`, unescaped.
        align: one letter per column, `l` (`---`) or `r` (`---:`); None: every column `l`. Without a header it
            gives the number of columns.

    Raises:
        ValueError: on an alignment letter other than `l` or `r`, an `align` whose length is not the number of
            columns, no header and no `align`, or a row with another number of cells.

    Example:
        >>> print(markdown_table(["row", "loss"], [["base", "2.5000"], ["edit", "2.7500"]], align="lr"))
        | row | loss |
        |---|---:|
        | base | 2.5000 |
        | edit | 2.7500 |
    """
    if header is None and align is None:
        raise ValueError("a table without a header needs `align` to know its number of columns")
    columns = len(align) if header is None else len(header)  # type: ignore[arg-type]
    align = "l" * columns if align is None else align
    if len(align) != columns or set(align) - set(ALIGNMENTS):
        raise ValueError(f"align {align!r}: give one letter per column ({columns}), each 'l' or 'r'")
    lines = [
        "|" + " |" * columns if header is None else _row(header),
        "|" + "|".join(ALIGNMENTS[a] for a in align) + "|",
    ]
    for row in rows:
        if len(row) != columns:
            raise ValueError(f"a row of {len(row)} cells in a table of {columns} columns: {list(row)!r}")
        lines.append(_row(row))
    return "\n".join(lines)


def escape_pipes(text: str) -> str:
    """`text` as a cell that cannot split its row: each `|` escaped as `\\|` (the writer itself escapes nothing).

    Example:
        >>> escape_pipes("a|b")
        'a\\\\|b'
    """
    return text.replace("|", "\\|")


def _row(cells: Sequence[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"
