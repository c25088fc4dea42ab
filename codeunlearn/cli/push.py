"""`codeunlearn push`: upload an exported directory, or a trained bottleneck, to the Hugging Face Hub with a card.

    codeunlearn push --export_dir outputs/run/export --repo-id NAME/smollm2-135m-no-hp \\
        --eval_report outputs/run/eval/report.json
    codeunlearn push --bottleneck_dir outputs/run/bottleneck --repo_id NAME/smollm2-135m-codebook-l15 \\
        --fidelity_report outputs/run/eval/report.json

An export goes up with `create_repo` and one commit: every file of the directory and the model card regenerated for
the repo id (with its license: --license, else the one the export recorded or the base model's; an export whose
license is not known is refused before anything is sent). A bottleneck (weights, config, saved edits, cached retain statistics) goes up in one commit with a card that
lists its shape, bits per token, base model, training corpora and fidelity (ΔCE per corpus and FVU from
--fidelity_report: a `codeunlearn eval` report.json or benchmarks/fidelity_sweep.py output); every
`--bottleneck_dir` then accepts the repo id. The token is --token, else HF_TOKEN or the one saved by
`hf auth login`; `HF_ENDPOINT` selects another endpoint. A missing or refused token is a one-line error, and the
local directory is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.push import (
    DEFAULT_BOTTLENECK_COMMIT_MESSAGE,
    DEFAULT_COMMIT_MESSAGE,
    push_bottleneck_to_hub,
    push_to_hub,
)

DESCRIPTION = "Upload an exported model directory, or a trained bottleneck, to the Hugging Face Hub with a model card."


@dataclass
class PushArguments:
    """Which directory goes to which repository."""

    # HfArgumentParser also accepts the dashed spelling of every flag: --repo-id, --export-dir.
    repo_id: str = field(metadata={"help": "Target repository, NAME or NAMESPACE/NAME."})
    export_dir: str | None = field(
        default=None,
        metadata={"aliases": ["--dir"], "help": "Directory written by `codeunlearn export` (or --bottleneck_dir)."},
    )
    bottleneck_dir: str | None = field(
        default=None,
        metadata={
            "help": "Trained bottleneck (`codeunlearn train`'s OUTPUT or OUTPUT/bottleneck) to publish by name: "
            "weights, config, edits and cached retain statistics (or --export_dir)."
        },
    )
    token: str | None = field(
        default=None, metadata={"help": "Hub token with write access (default: HF_TOKEN or `hf auth login`)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    eval_report: str | None = field(
        default=None,
        metadata={
            "help": "With --export_dir: report.json from `codeunlearn eval` to publish (replaces the exported one)."
        },
    )
    fidelity_report: str | None = field(
        default=None,
        metadata={
            "help": "With --bottleneck_dir: `codeunlearn eval` report.json, or benchmarks/fidelity_sweep.py results "
            "(.jsonl), whose ΔCE per corpus and FVU go on the card."
        },
    )
    license: str | None = field(
        default=None,
        metadata={
            "help": "Hub license id for the card's metadata, e.g. apache-2.0 or gemma (default: the license the "
            "export recorded, else the base model's; an export with neither is refused; a bottleneck falls back to "
            "codeunlearn's apache-2.0)."
        },
    )
    commit_message: str | None = field(
        default=None,
        metadata={
            "help": f"Message of the upload commit (default: {DEFAULT_COMMIT_MESSAGE!r}, with --bottleneck_dir "
            f"{DEFAULT_BOTTLENECK_COMMIT_MESSAGE!r})."
        },
    )


def check_arguments(args: PushArguments) -> None:
    """Exactly one directory, and each report with the kind of directory it describes."""
    if (args.export_dir is None) == (args.bottleneck_dir is None):
        problem = "both --export_dir and --bottleneck_dir given" if args.export_dir else "nothing to push"
        raise CodeunlearnError(
            problem, "pass either --export_dir (an exported model) or --bottleneck_dir (a trained bottleneck)"
        )
    if args.bottleneck_dir is not None and args.eval_report is not None:
        raise CodeunlearnError(
            "--eval_report goes with --export_dir", "pass the eval report of a bottleneck as --fidelity_report"
        )
    if args.export_dir is not None and args.fidelity_report is not None:
        raise CodeunlearnError(
            "--fidelity_report goes with --bottleneck_dir", "pass the eval report of an export as --eval_report"
        )


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn push` with command-line arguments `argv` (without the subcommand name)."""
    (args,) = parse_arguments((PushArguments,), argv, "codeunlearn push", DESCRIPTION)
    check_arguments(args)
    if args.bottleneck_dir is not None:
        source = args.bottleneck_dir
        url = push_bottleneck_to_hub(
            args.bottleneck_dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            fidelity_report=args.fidelity_report,
            commit_message=args.commit_message or DEFAULT_BOTTLENECK_COMMIT_MESSAGE,
            license=args.license,
        )
    else:
        source = args.export_dir
        url = push_to_hub(
            args.export_dir,
            args.repo_id,
            token=args.token,
            private=args.private,
            eval_report=args.eval_report,
            commit_message=args.commit_message or DEFAULT_COMMIT_MESSAGE,
            license=args.license,
        )
    print(f"pushed {source} to {url}")
    return 0
