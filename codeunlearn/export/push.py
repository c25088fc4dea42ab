"""Push an exported directory to the Hugging Face Hub, with its model card.

`huggingface_hub` does the work: `create_repo` (exist_ok), `upload_folder` for the files, then one commit with the
model card (regenerated for the repo id, so its loading snippet names the repo) and the eval report if one is
given. The local directory is only read, so a missing or refused token, a network error or a full quota leaves it
exactly as it was. The endpoint is `HF_ENDPOINT` when set (a mirror or a local test server), else the public Hub.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path

from codeunlearn.errors import CodeunlearnError
from codeunlearn.export.card import CARD_NAME, EVAL_REPORT_NAME, model_card

DEFAULT_COMMIT_MESSAGE = "Upload model exported with codeunlearn"


def _endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


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


def _request_errors() -> tuple[type[BaseException], ...]:
    """Exceptions a Hub request raises for network trouble: OSError (HfHubHTTPError is one) and the HTTP client's own
    error base, whichever client this huggingface_hub uses (httpx, its fork httpx2, or requests)."""
    errors: list[type[BaseException]] = [OSError]
    for name in ("httpx2", "httpx", "requests"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        base = getattr(module, "HTTPError", None) or getattr(module, "RequestException", None)
        if isinstance(base, type) and issubclass(base, BaseException):
            errors.append(base)
    return tuple(errors)


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


def push_to_hub(
    export_dir: str | Path,
    repo_id: str,
    token: str | None = None,
    private: bool = False,
    eval_report: str | Path | None = None,
    commit_message: str = DEFAULT_COMMIT_MESSAGE,
) -> str:
    """Upload an exported directory (from `codeunlearn export`) to `repo_id`; returns the repo URL.

    The model card is regenerated for `repo_id`; `eval_report` (a `codeunlearn eval` report.json) replaces the
    exported one on the Hub and in the card. Errors are one-line `CodeunlearnError`s.
    """
    from huggingface_hub import CommitOperationAdd, HfApi

    export_dir = Path(export_dir)
    if not export_dir.is_dir():
        raise CodeunlearnError(f"export directory not found: {export_dir}", "pass the --out of `codeunlearn export`")
    if repo_id.count("/") > 1 or not repo_id.strip("/"):
        raise CodeunlearnError(f"invalid repo id {repo_id!r}", "use NAME or NAMESPACE/NAME")
    card = model_card(export_dir, repo_id=repo_id, eval_report=eval_report)  # also checks it is an export
    token = resolve_token(token)
    endpoint = _endpoint()
    api = HfApi(endpoint=endpoint, token=token)
    ignore = [".*", CARD_NAME] + ([EVAL_REPORT_NAME] if eval_report is not None else [])
    card_files = [CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=str(card).encode())]
    if eval_report is not None:
        card_files.append(CommitOperationAdd(path_in_repo=EVAL_REPORT_NAME, path_or_fileobj=str(eval_report)))
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(
            repo_id=url.repo_id, folder_path=export_dir, ignore_patterns=ignore, commit_message=commit_message
        )
        api.create_commit(repo_id=url.repo_id, operations=card_files, commit_message="Model card (codeunlearn)")
    except _request_errors() as err:
        raise _hub_error(err, repo_id, endpoint) from None
    return str(url)
