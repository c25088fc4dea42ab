"""Push to the Hugging Face Hub: an exported directory, or a trained bottleneck, each with its model card.

An export (`push_to_hub`): `create_repo` (exist_ok), then ONE `create_commit` holding every file of the directory,
the model card (regenerated for the repo id, so its title and loading snippet name the repo, with its license) and
the eval report if one is given. A Hub commit is all or nothing, so a failed push never leaves the repo with weights
but no card, or a card describing files that are not there. An export whose license is not known (neither given,
nor on its card, nor the base model's) is refused before anything is sent.

A bottleneck (`push_bottleneck_to_hub`): its config, weights (or per-layer sae-lens folders), saved edits and cached
retain statistics, the card (shape, bits per token, base model, training corpora, fidelity) and the fidelity
report if one is given, all in one `create_commit`, so the repo never holds a bottleneck without its card. Every
`--bottleneck_dir` then takes the repo id (`codeunlearn.hub`).

The local directory is only read, so a missing or refused token, a network error or a full quota leaves it
exactly as it was. The endpoint is `HF_ENDPOINT` when set (a mirror or a local test server), else the public Hub.
"""

from __future__ import annotations

import json
from pathlib import Path

from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.card import CARD_NAME, EVAL_REPORT_NAME, model_card
from codeunlearn.hub import hub_endpoint, request_errors

DEFAULT_COMMIT_MESSAGE = "Upload model exported with codeunlearn"
DEFAULT_BOTTLENECK_COMMIT_MESSAGE = "Upload bottleneck trained with codeunlearn"


def resolve_token(token: str | None = None) -> str:
    """The token to push with: `token`, else `HF_TOKEN` or the one saved by `hf auth login`."""
    from huggingface_hub import get_token

    token = token or get_token()
    if not token:
        raise CodeunlearnError(
            "no Hugging Face token found (needed to push)",
            "run `hf auth login`, set HF_TOKEN, or pass --token with a token that has write access",
        )
    return token


def _hub_error(err: Exception, repo_id: str, endpoint: str) -> CodeunlearnError:
    """A one-line error for a failed Hub request; the local directory is never touched before this."""
    response = getattr(err, "response", None)
    status = getattr(response, "status_code", None)
    kept = "the local directory is unchanged"
    if status == 401:
        return CodeunlearnError(
            f"the Hub at {endpoint} refused the token (401 Unauthorized)",
            f"pass a valid token with write access (--token or HF_TOKEN, or `hf auth login`); {kept}",
        )
    if status == 403:
        return CodeunlearnError(
            f"the token may not write to {repo_id} (403 Forbidden)",
            f"use a token with write access to that namespace, or another --repo_id; {kept}",
        )
    if status is not None:
        first = " ".join(str(err).split())[:200]
        return CodeunlearnError(
            f"pushing to {repo_id} failed (HTTP {status}: {first})", f"check the repo id and retry; {kept}"
        )
    return CodeunlearnError(
        f"cannot reach the Hub at {endpoint} ({type(err).__name__}: {' '.join(str(err).split())[:200]})",
        f"check the network or HF_ENDPOINT and retry; {kept}",
    )


def _publishable_files(directory: Path, leave_out: tuple[str, ...] = ()) -> list[Path]:
    """Every file a directory holds, relative to it, in a stable order. Hidden files and folders (an interrupted
    atomic write's leftovers, caches), a local README.md (the regenerated card replaces it) and the top-level names
    in `leave_out` stay behind."""
    skipped = {Path(CARD_NAME), *(Path(name) for name in leave_out)}
    files = []
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if path.is_file() and not any(part.startswith(".") for part in relative.parts) and relative not in skipped:
            files.append(relative)
    return files


def _check_license(license: str | None) -> None:
    if license is not None and not license.strip():
        raise CodeunlearnError("empty --license", "pass a Hub license id, e.g. --license apache-2.0")


def push_to_hub(
    export_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    eval_report: str | Path | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
    license: str | None = None,
) -> str:
    """Upload an exported directory (from `codeunlearn export`) to `repo_id` in one commit; returns the repo URL.

    The model card is regenerated for `repo_id`; `eval_report` (a `codeunlearn eval` report.json) replaces the
    exported one on the Hub and in the card. `license` (a Hub license id such as `apache-2.0`) goes into the card's
    metadata; without it the card's license is the one the export recorded or the base model's, and a push whose
    license is unknown is refused before anything is sent. Errors are one-line `CodeunlearnError`s.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise CodeunlearnError(f"export directory not found: {export_dir}", "pass the --out of `codeunlearn export`")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise CodeunlearnError(f"invalid repo id {repo_id!r}", "use NAME or NAMESPACE/NAME")
    _check_license(license)
    # Also checks that it is an export, and settles the license it would be published under.
    card = model_card(export_dir, repo_id=repo_id, eval_report=eval_report, license=license)
    if not card.data.license:
        raise CodeunlearnError(
            f"the license of {export_dir} is not known (none on its card, and the base model's is not known here)",
            "pass --license ID (the base model's Hub license id, e.g. apache-2.0)",
        )
    token = resolve_token(token)
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    leave_out = (EVAL_REPORT_NAME,) if eval_report is not None else ()
    operations = [
        CommitOperationAdd(path_in_repo=relative.as_posix(), path_or_fileobj=str(export_dir / relative))
        for relative in _publishable_files(export_dir, leave_out)
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=str(card).encode()))
    if eval_report is not None:
        operations.append(CommitOperationAdd(path_in_repo=EVAL_REPORT_NAME, path_or_fileobj=str(eval_report)))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id=url.repo_id, operations=operations, commit_message=commit_message)
    except request_errors() as err:
        raise _hub_error(err, repo_id, endpoint) from None
    return str(url)


def push_bottleneck_to_hub(
    bottleneck_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    fidelity_report: str | Path | None = None,
    commit_message: str = DEFAULT_BOTTLENECK_COMMIT_MESSAGE,
    license: str | None = None,
) -> str:
    """Upload a trained bottleneck (a `codeunlearn train` output or its `bottleneck/`) to `repo_id` with a model card,
    in one commit; returns the repo URL. Any CLI `--bottleneck_dir` then takes `repo_id`.

    `fidelity_report` (a `codeunlearn eval` report.json, or benchmarks/fidelity_sweep.py output) puts ΔCE per corpus
    and FVU on the card and is published as `fidelity_report.json`. `license` (a Hub license id) is the card's
    license; without it, the base model's if known, else codeunlearn's own (`bottleneck_card`). The local directory
    is only read; errors are one-line `CodeunlearnError`s, raised before anything is sent when the input is at
    fault."""
    from huggingface_hub import CommitOperationAdd, HfApi

    from codeunlearn.bottleneck.config import CONFIG_NAME, BottleneckConfig
    from codeunlearn.export.card import FIDELITY_REPORT_NAME, bottleneck_card, read_fidelity_report

    given = Path(bottleneck_dir)
    if not given.is_dir():  # a local directory only: a repo id here would re-upload someone's download
        raise CodeunlearnError(
            f"bottleneck directory not found: {given}", "pass the bottleneck directory written by `codeunlearn train`"
        )
    directory = given if (given / CONFIG_NAME).is_file() else given / "bottleneck"  # or a `train` output folder
    if not (directory / CONFIG_NAME).is_file():
        raise CodeunlearnError(
            f"no codeunlearn bottleneck at {given} (no {CONFIG_NAME} in it or in its bottleneck/)",
            "pass the bottleneck directory `codeunlearn train` wrote; a sae-lens SAE directory is attached once "
            "(`codeunlearn.kinds.sae.attach_sae`) and saved with save_pretrained first",
        )
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise CodeunlearnError(f"invalid repo id {repo_id!r}", "use NAME or NAMESPACE/NAME")
    config = BottleneckConfig.from_json_file(directory / CONFIG_NAME)
    fidelity = None
    if fidelity_report is not None:
        fidelity = read_fidelity_report(fidelity_report, directory, config.layers, config.bits_per_token)
    _check_license(license)
    card = bottleneck_card(directory, repo_id=repo_id, fidelity=fidelity, license=license)
    token = resolve_token(token)
    endpoint = hub_endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    operations = [
        CommitOperationAdd(path_in_repo=relative.as_posix(), path_or_fileobj=str(directory / relative))
        for relative in _publishable_files(directory)
    ]
    operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=str(card).encode()))
    if fidelity is not None:
        report = json.dumps(fidelity.raw, indent=1) + "\n"
        operations.append(CommitOperationAdd(path_in_repo=FIDELITY_REPORT_NAME, path_or_fileobj=report.encode()))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.create_commit(repo_id=url.repo_id, operations=operations, commit_message=commit_message)
    except request_errors() as err:
        raise _hub_error(err, repo_id, endpoint) from None
    return str(url)
