"""How many of one edit's codes another edit also removes: the agreement of selections made from different samples.

    python benchmarks/edit_overlap.py --reference outputs/forget/cyber_24576/edit.json \\
        outputs/forget/cyber_4096/edit.json outputs/forget/cyber_8192/edit.json

prints, per edit, its number of codes and the share of the reference's codes it also removes (layer by layer,
summed). Only the selections are compared: no held-out text is read.
"""

from __future__ import annotations

import argparse

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.tables import escape_pipes, markdown_table


def shared_codes(edit: Edit, reference: Edit) -> int:
    """Codes removed by both edits, summed over the layers they share."""
    return sum(
        len(set(codes.codes) & set(reference.layers[layer].codes))
        for layer, codes in edit.layers.items()
        if layer in reference.layers
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reference", required=True, help="edit.json the others are compared with")
    parser.add_argument("edits", nargs="+", help="edit.json files")
    args = parser.parse_args(argv)
    reference = Edit.load(args.reference)
    header = ["edit", "codes", "shared with the reference", "share of the reference's codes"]
    print(markdown_table(header, [overlap_row(path, reference) for path in args.edits], align="lrrr"))


def overlap_row(path: str, reference: Edit) -> list[str]:
    """The table's row of one edit file: its codes, and those it shares with the reference."""
    edit = Edit.load(path)
    shared = shared_codes(edit, reference)
    return [escape_pipes(path), f"{edit.num_codes:,}", f"{shared:,}", f"{shared / max(reference.num_codes, 1):.3f}"]


if __name__ == "__main__":
    main()
