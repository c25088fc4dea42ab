"""`codeunlearn forget`: select the codes (SAE: features) a topic uses far more than the retain text, and write the
edit.

    codeunlearn forget --forget_stats outputs/run/stats/forget.safetensors \\
        --retain_stats outputs/run/stats/retain.safetensors --topic harry_potter --num_codes 1024 \\
        --output_dir outputs/run/edits

Writes OUTPUT/edit.json (the topic's codes with their scores) and OUTPUT/random_control.json (as many codes per
layer, drawn at random among codes that fire at all): evaluate both, or a loss change cannot be told from the
damage of removing any codes.

On SAE statistics the edit clamps (default) or zero-ablates the selected features when they fire:

    codeunlearn forget --forget_stats ... --retain_stats ... --topic micro --num_codes 64 \
        --score mean_activation_difference --intervention clamp --multiplier -10 --output_dir outputs/sae/edits

and `codeunlearn calibrate` turns such an edit into a guardrail.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from codeunlearn.cli.arguments import SelectionArguments, parse_arguments
from codeunlearn.cli.common import check_output_file
from codeunlearn.edit import Edit
from codeunlearn.selection import random_control, select_codes
from codeunlearn.statistics import CodeStatistics

DESCRIPTION = (
    "Select topic codes from forget vs retain statistics; write edit.json and a same-size random-codes control."
)
EDIT_NAME = "edit.json"
CONTROL_NAME = "random_control.json"


@dataclass
class ForgetArguments:
    """Statistics in, edits out."""

    forget_stats: str = field(
        metadata={"help": "Statistics of the forget corpus (.safetensors from `codeunlearn stats`)."}
    )
    retain_stats: str = field(metadata={"help": "Statistics of the retain corpus, same bottleneck."})
    output_dir: str = field(metadata={"help": f"Directory for {EDIT_NAME} and {CONTROL_NAME}."})
    overwrite: bool = field(default=False, metadata={"help": "Replace existing edit files."})


def usage_per_token(stats: CodeStatistics, edit: Edit, layer: int) -> float:
    """How many of the edit's codes fire per token at `layer` (a token carries heads x stages codes)."""
    codes = edit.layers[layer].codes
    return float(stats.counts[layer][codes].sum()) / max(stats.tokens[layer], 1)


def summarize(edit: Edit, forget: CodeStatistics, retain: CodeStatistics) -> str:
    """Per layer: codes chosen, score range, and how often they fire on forget vs retain text."""
    lines = []
    for layer, chosen in sorted(edit.layers.items()):
        scores = f", scores {min(chosen.scores):.2f}..{max(chosen.scores):.2f}" if chosen.scores else ""
        lines.append(
            f"  layer {layer}: {len(chosen.codes)} codes{scores}; they fire {usage_per_token(forget, edit, layer):.3f}x per "
            f"forget token vs {usage_per_token(retain, edit, layer):.3f}x per retain token"
        )
    return "\n".join(lines)


def make_edits(forget: CodeStatistics, retain: CodeStatistics, selection: SelectionArguments) -> tuple[Edit, Edit]:
    """The topic edit and its random-codes control (same number of codes per layer)."""
    edit = select_codes(
        forget,
        retain,
        selection.rule(),
        selection.topic,
        selection.intervention,
        multiplier=selection.multiplier,
        scale=selection.clamp_scale,
    )
    return edit, random_control(edit, forget, retain, seed=selection.control_seed)


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn forget` with command-line arguments `argv` (without the subcommand name)."""
    args, selection = parse_arguments((ForgetArguments, SelectionArguments), argv, "codeunlearn forget", DESCRIPTION)
    output_dir = Path(args.output_dir)
    edit_path = check_output_file(output_dir / EDIT_NAME, args.overwrite)
    control_path = check_output_file(output_dir / CONTROL_NAME, args.overwrite)
    forget, retain = CodeStatistics.load(args.forget_stats), CodeStatistics.load(args.retain_stats)
    edit, control = make_edits(forget, retain, selection)
    output_dir.mkdir(parents=True, exist_ok=True)
    edit.save(edit_path)
    control.save(control_path)
    print(f"topic {edit.topic!r} ({edit.intervention}): {edit.num_codes} codes")
    print(summarize(edit, forget, retain))
    print(f"random control: {control.num_codes} codes")
    print(summarize(control, forget, retain))
    print(f"wrote {edit_path} and {control_path}")
    return 0
