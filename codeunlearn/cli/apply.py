"""`codeunlearn apply`: write an edited bottleneck directory (weights + the stack of active edits).

    codeunlearn apply --bottleneck_dir outputs/run/bottleneck --edits outputs/run/edits/edit.json \\
        --output_dir outputs/run/edited

The edits saved in --bottleneck_dir stay active; `--undo TOPIC` first removes the most recent edit of TOPIC, then
--edits are added on top, so `--undo harry_potter --edits new_hp.json` replaces a topic's edit. Load the result
with `BottleneckedModel.from_pretrained(model, OUTPUT)` or evaluate it with `codeunlearn eval`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.loading import load_bottlenecked
from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.cli.common import check_output_dir_free
from codeunlearn.errors import CodeunlearnError
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import run_arguments

DESCRIPTION = "Apply (and undo) edits on a trained bottleneck and save the edited bottleneck directory."


@dataclass
class ApplyArguments:
    """Bottleneck in, edits to add or undo, edited bottleneck out."""

    bottleneck_dir: str = field(metadata={"help": "Bottleneck directory (its saved edits stay active)."})
    edits: list[str] = field(
        default_factory=list, metadata={"help": "Edit files (from `codeunlearn forget`) to apply, in order."}
    )
    undo: list[str] = field(
        default_factory=list,
        metadata={"help": "Topics whose most recent edit is removed (before --edits are applied)."},
    )


def describe_edits(edits: list[Edit]) -> str:
    """One line per active edit."""
    if not edits:
        return "  (none)"
    return "\n".join(f"  {i + 1}. {e.topic}: {e.num_codes} codes, {e.intervention}" for i, e in enumerate(edits))


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn apply` with command-line arguments `argv` (without the subcommand name)."""
    model_args, args, run = parse_arguments(
        (ModelArguments, ApplyArguments, run_arguments("output_dir", "overwrite", writes="the edited bottleneck")),
        argv,
        "codeunlearn apply",
        DESCRIPTION,
    )
    if not args.edits and not args.undo:
        raise CodeunlearnError("nothing to apply", "pass --edits FILE [FILE ...] and/or --undo TOPIC")
    check_output_dir_free(run.output_dir, run.overwrite)  # before the slow model load
    edits = [Edit.load(path) for path in args.edits]
    bmodel, _ = load_bottlenecked(args.bottleneck_dir, model_args, progress=True)
    for topic in args.undo:
        removed = bmodel.undo_edit(topic)
        print(f"undid {removed.topic!r} ({removed.num_codes} codes)")
    for edit in edits:
        bmodel.apply_edit(edit)
    bmodel.save_pretrained(run.output_dir, overwrite=run.overwrite)
    print("active edits:")
    print(describe_edits(bmodel.edits))
    print(f"wrote {run.output_dir}")
    return 0
