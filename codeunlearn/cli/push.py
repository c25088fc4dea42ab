"""`codeunlearn push`: upload an exported directory to the Hugging Face Hub with its model card.

    codeunlearn push --export_dir outputs/run/export --repo-id NAME/smollm2-135m-no-hp \\
        --eval_report outputs/run/eval/report.json

Uses `huggingface_hub` (`create_repo`, `upload_folder`, then a commit with the model card regenerated for the repo id).
The token is --token, else HF_TOKEN or the one saved by `hf auth login`; `HF_ENDPOINT` selects another endpoint.
A missing or refused token is a one-line error, and the local directory is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from codeunlearn.cli.arguments import parse_arguments
from codeunlearn.export.push import DEFAULT_COMMIT_MESSAGE, push_to_hub

DESCRIPTION = "Upload an exported model directory to the Hugging Face Hub, with a model card."


@dataclass
class PushArguments:
    """Which directory goes to which repository."""

    export_dir: str = field(metadata={"aliases": ["--dir"], "help": "Directory written by `codeunlearn export`."})
    # HfArgumentParser also accepts the dashed spelling of every flag: --repo-id, --export-dir.
    repo_id: str = field(metadata={"help": "Target repository, NAME or NAMESPACE/NAME."})
    token: str | None = field(
        default=None, metadata={"help": "Hub token with write access (default: HF_TOKEN or `hf auth login`)."}
    )
    private: bool = field(default=False, metadata={"help": "Create the repository as private."})
    eval_report: str | None = field(
        default=None, metadata={"help": "report.json from `codeunlearn eval` to publish (replaces the exported one)."}
    )
    commit_message: str = field(default=DEFAULT_COMMIT_MESSAGE, metadata={"help": "Message of the upload commit."})


def main(argv: Sequence[str]) -> int:
    """Run `codeunlearn push` with command-line arguments `argv` (without the subcommand name)."""
    (args,) = parse_arguments((PushArguments,), argv, "codeunlearn push", DESCRIPTION)
    url = push_to_hub(
        args.export_dir,
        args.repo_id,
        token=args.token,
        private=args.private,
        eval_report=args.eval_report,
        commit_message=args.commit_message,
    )
    print(f"pushed {args.export_dir} to {url}")
    return 0
