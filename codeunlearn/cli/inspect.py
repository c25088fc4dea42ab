"""`codeunlearn inspect`: what the codes (SAE: features) of an edit and of its random control fire on and write.

    codeunlearn inspect --bottleneck_dir outputs/run/bottleneck --edit outputs/run/forget_hp/edit.json \\
        --forget_corpora ../shared/data/demo/forget_harry_potter.txt \\
        --retain_corpora ../shared/data/retain/wikitext2_raw_test.txt --output_dir outputs/run/inspect_hp

For every unit of the edit, and of the random-codes control (`--control FILE`, by default the
`random_control.json` that `forget` wrote beside the edit): its firing frequency on the forget and the retain text
(counted on the train split as `codeunlearn stats` counts, unless `--split` says otherwise), its selection score,
its top contexts in each corpus (the firing token highlighted), for an SAE feature its activation histogram, and the
tokens its output vector promotes and suppresses through the final norm and LM head alone (the logit lens, direct
path only). Writes OUTPUT/inspect.html (one self-contained page: sortable, filterable table; nothing loaded from the
network), OUTPUT/inspect.md and OUTPUT/inspect.json, and prints the top `--top` units.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from codeunlearn import distributed
from codeunlearn.bottleneck.edit import Edit
from codeunlearn.bottleneck.loading import load_bottlenecked, resolve_bottleneck_dir
from codeunlearn.bottleneck.model import BottleneckedModel
from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.cli.common import check_output_dir_free
from codeunlearn.cli.forget import CONTROL_NAME
from codeunlearn.data import DataArguments, read_corpora
from codeunlearn.errors import CodeunlearnError, check_range
from codeunlearn.inspection import InspectOptions, inspect_edit
from codeunlearn.inspection.logit_lens import check_logit_lens
from codeunlearn.inspection.page import render_html, render_markdown, render_terminal
from codeunlearn.io import atomic_write_text
from codeunlearn.modeling import ModelArguments
from codeunlearn.runtime import bf16_is_fast, run_arguments

DESCRIPTION = (
    "Show what an edit's codes/features (and its random control's) fire on, with top contexts, frequencies and the "
    "logit lens; writes inspect.html, inspect.md and inspect.json."
)
HTML_NAME = "inspect.html"
MARKDOWN_NAME = "inspect.md"
JSON_NAME = "inspect.json"


@dataclass
class InspectArguments:
    """A bottleneck and an edit in, the inspection pages out."""

    bottleneck_dir: str = field(metadata={"help": "Bottleneck directory the edit was selected on."})
    edit: str = field(metadata={"help": "Edit file (edit.json from `codeunlearn forget`, or a guardrail edit)."})
    control: str | None = field(
        default=None,
        metadata={"help": f"Random-codes control edit (default: {CONTROL_NAME} beside --edit, where there is one)."},
    )
    split: Literal["train", "heldout", "all"] = field(
        default="train", metadata={"help": "Which documents to count on (train, as `stats` counts for selection)."}
    )
    contexts: int = field(default=5, metadata={"help": "Top contexts kept per unit and corpus."})
    left: int = field(default=8, metadata={"help": "Tokens shown before a firing token."})
    right: int = field(default=4, metadata={"help": "Tokens shown after a firing token."})
    top_tokens: int = field(default=10, metadata={"help": "Tokens listed on each side of a unit's logit lens."})
    top: int = field(default=20, metadata={"help": "Edit units printed in the terminal table (by selection score)."})
    batch_size: int = field(default=8, metadata={"help": "Chunks per forward pass."})

    def __post_init__(self) -> None:
        # 0 is allowed for the counts: no contexts, no tokens beside a firing one, no logit lens, no terminal table.
        for name in ("contexts", "left", "right", "top_tokens", "top"):
            check_range(name, getattr(self, name), getattr(self, name) >= 0, ">= 0")
        check_range("batch_size", self.batch_size, self.batch_size >= 1, ">= 1")

    def options(self, progress: bool, bf16: bool) -> InspectOptions:
        """The library's options (checked when the arguments were parsed)."""
        return InspectOptions(self.contexts, self.left, self.right, self.top_tokens, self.batch_size, bf16, progress)


def find_control(edit_path: str, control: str | None) -> tuple[Edit | None, str, str]:
    """The control edit, its path, and what the page says where there is none."""
    if control is not None:
        return Edit.load(control), control, ""
    beside = Path(edit_path).parent / CONTROL_NAME
    if beside.is_file() and beside.resolve() != Path(edit_path).resolve():
        return Edit.load(beside), str(beside), ""
    return None, "", f"no control was given (no --control, and no {CONTROL_NAME} beside the edit)"


def check_made_for(bmodel: BottleneckedModel, edit: Edit, what: str, path: str) -> None:
    """Refuse an edit made for another bottleneck, naming the file."""
    try:
        bmodel.check_edit(edit)
    except CodeunlearnError as err:
        raise CodeunlearnError(f"{what} {path}: {err.problem}", err.fix) from None


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn inspect` with command-line arguments `argv` (without the subcommand name)."""
    model_args, data_args, args, run = parse_arguments(
        (
            ModelArguments,
            DataArguments,
            InspectArguments,
            run_arguments("output_dir", "overwrite", "progress", "bf16", writes="inspect.html, .md and .json"),
        ),
        argv,
        "codeunlearn inspect",
        DESCRIPTION,
        defaults={"bf16": bf16_is_fast()},
    )
    output_dir = check_output_dir_free(run.output_dir, run.overwrite)  # before the slow model load
    options = args.options(run.progress, run.bf16)
    edit = Edit.load(args.edit)
    control, control_path, control_note = find_control(args.edit, args.control)
    forget = read_corpora(data_args.forget_corpora, data_args, "forget_corpora")
    retain = read_corpora(data_args.retain_corpora, data_args, "retain_corpora")
    resolve_bottleneck_dir(args.bottleneck_dir)  # a wrong path fails before the model loads
    bmodel, tokenizer = load_bottlenecked(args.bottleneck_dir, model_args, run.progress, distributed.device())
    check_made_for(bmodel, edit, "edit", args.edit)
    if control is not None:
        check_made_for(bmodel, control, "control edit", control_path)
    check_logit_lens(bmodel.model)
    if bmodel.edits:
        print(
            f"note: inspecting the unedited bottleneck; its saved edits {[e.topic for e in bmodel.edits]} are set aside"
        )
    report = inspect_edit(
        bmodel,
        tokenizer,
        edit,
        (forget.name, forget.pack(tokenizer, args.split)),
        (retain.name, retain.pack(tokenizer, args.split)),
        control,
        options,
    )
    report.bottleneck, report.split, report.control_note = args.bottleneck_dir, args.split, control_note
    report.edit.path = args.edit
    if report.control is not None:
        report.control.path = control_path
    report.model = model_args.model_name_or_path
    output_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output_dir / JSON_NAME, json.dumps(report.to_dict(), indent=1) + "\n")
    atomic_write_text(output_dir / MARKDOWN_NAME, render_markdown(report))
    atomic_write_text(output_dir / HTML_NAME, render_html(report))
    print(render_terminal(report, args.top))
    if control is None:
        print(f"note: {control_note}")
    print(f"wrote {output_dir / HTML_NAME}, {output_dir / MARKDOWN_NAME} and {output_dir / JSON_NAME}")
    return 0
