"""Bottlenecks by name: a Hugging Face Hub repo id wherever a bottleneck directory is expected.

    codeunlearn forget --bottleneck_dir me/smollm2-faithful ...          # the repo's main branch
    codeunlearn eval --bottleneck_dir me/bottlenecks/l15@v1 ...          # subfolder l15 of tag v1

A name is `OWNER/NAME`, optionally followed by `/sub/folder` and then `@revision` (a branch, tag or commit). A local
path that exists always wins, so a directory that happens to look like a repo id is read from disk. The repo is
downloaded with `huggingface_hub.snapshot_download` (only the subfolder, when one is named) into the normal
Hugging Face cache, so a second use costs one metadata request, and none with `HF_HUB_OFFLINE=1`. `HF_ENDPOINT`
selects another endpoint (a mirror or a local test server), `HF_TOKEN` or `hf auth login` a private repo.

Every failure is one `CodeunlearnError`: an unknown repo, revision or subfolder, a repo that is not cached while
offline, or a Hub that cannot be reached. Nothing is written outside the cache, and a failed download leaves no
partial snapshot behind that would later pass for a complete one (`huggingface_hub` checks its tree listing).
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from codeunlearn.errors import CodeunlearnError

# OWNER/NAME[/sub/folder][@revision]. Owner and name follow the Hub's rules (letters, digits, `-`, `_`, `.`); the
# revision may hold slashes (`refs/pr/3`). `validate_repo_id` rejects the rest (`--`, `..`, a trailing `.git`).
_SEGMENT = r"[A-Za-z0-9][A-Za-z0-9_.-]*"
_SOURCE = re.compile(
    rf"(?P<repo_id>{_SEGMENT}/{_SEGMENT})(?P<subfolder>(?:/[A-Za-z0-9_.-]+)*)(?:@(?P<revision>[A-Za-z0-9_./-]+))?"
)
_TRUE = {"1", "ON", "YES", "TRUE"}


@dataclass(frozen=True)
class HubSource:
    """A bottleneck on the Hub: a model repo, a folder inside it ("" = the root) and a revision (None = main)."""

    repo_id: str
    subfolder: str = ""
    revision: str | None = None

    def __str__(self) -> str:
        name = "/".join(part for part in (self.repo_id, self.subfolder) if part)
        return f"{name}@{self.revision}" if self.revision else name


def parse_hub_source(name: str) -> HubSource | None:
    """`name` read as `OWNER/NAME[/sub/folder][@revision]`, or None when it cannot be a Hub repo id (an absolute or
    relative-looking path, a Windows path, a `..` component, an invalid repo name)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    match = _SOURCE.fullmatch(name)
    if match is None:
        return None
    subfolder = match["subfolder"].strip("/")
    revision = match["revision"]
    if any(part in {".", ".."} for part in subfolder.split("/")) or (revision and ".." in revision.split("/")):
        return None
    try:
        validate_repo_id(match["repo_id"])
    except HFValidationError:
        return None
    return HubSource(match["repo_id"], subfolder, revision)


def resolve_bottleneck_source(name_or_path: str | Path) -> Path:
    """A local directory for `name_or_path`: the path itself when it exists (or when it cannot be a repo id, so that
    the caller reports the missing directory), else the Hub repo it names, downloaded into the Hugging Face cache
    (the snapshot folder joined with the subfolder). Failures are one-line `CodeunlearnError`s."""
    path = Path(name_or_path)
    if path.exists():
        return path
    source = parse_hub_source(str(name_or_path))
    if source is None:
        return path
    return download_bottleneck(source)


def hub_endpoint() -> str:
    """The Hub to talk to: `HF_ENDPOINT` as set now (a mirror or a local test server), else huggingface_hub's."""
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def request_errors() -> tuple[type[BaseException], ...]:
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


def _offline() -> bool:
    """HF_HUB_OFFLINE as set now: huggingface_hub reads it once, at import, which may precede the caller's setting."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return constants.is_offline_mode() or value.upper() in _TRUE


def download_bottleneck(source: HubSource) -> Path:
    """Download `source` (only its subfolder) with `snapshot_download` into the Hugging Face cache; returns the
    local folder. Offline (`HF_HUB_OFFLINE`), only the cache is looked at."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    endpoint, offline = hub_endpoint(), _offline()
    subject = f"{str(source)!r} is not a local directory, and as a Hub repo"
    local_fix = "or pass a local bottleneck directory"
    try:
        snapshot = snapshot_download(
            source.repo_id,
            repo_type="model",
            revision=source.revision,
            allow_patterns=[f"{source.subfolder}/*"] if source.subfolder else None,
            endpoint=endpoint,
            local_files_only=offline,
        )
    except RevisionNotFoundError:
        raise CodeunlearnError(
            f"{subject} {source.repo_id} has no revision {source.revision!r} (at {endpoint})",
            f"name an existing branch, tag or commit after @, {local_fix}",
        ) from None
    except RepositoryNotFoundError:  # also gated or private repos the token may not read
        raise CodeunlearnError(
            f"{subject} {source.repo_id} was not found at {endpoint} (or it is private and no token may read it)",
            f"check the path or the repo id (OWNER/NAME[/subfolder][@revision]); for a private repo run "
            f"`hf auth login` or set HF_TOKEN; {local_fix}",
        ) from None
    except LocalEntryNotFoundError as err:
        cause = err.__cause__
        if offline or isinstance(cause, OfflineModeIsEnabled):
            reason = "the Hub cannot be reached (HF_HUB_OFFLINE is set)"
        elif isinstance(cause, HfHubHTTPError) and getattr(cause.response, "status_code", None) is not None:
            reason = f"the Hub at {endpoint} answered HTTP {cause.response.status_code}"
        else:
            detail = f" ({type(cause).__name__}: {' '.join(str(cause).split())[:160]})" if cause else ""
            reason = f"the Hub at {endpoint} cannot be reached{detail}"
        raise CodeunlearnError(
            f"{subject} {source} is not in the local Hugging Face cache ({constants.HF_HUB_CACHE}) and {reason}",
            f"download it once with network access (unset HF_HUB_OFFLINE, check HF_ENDPOINT), {local_fix}",
        ) from None
    except EntryNotFoundError:
        raise CodeunlearnError(
            f"{subject} {source.repo_id} lacks a file its listing names (at {endpoint})",
            f"retry; if it persists, re-upload the bottleneck ({local_fix})",
        ) from None
    except request_errors() as err:
        status = getattr(getattr(err, "response", None), "status_code", None)
        what = f"HTTP {status}" if status is not None else type(err).__name__
        raise CodeunlearnError(
            f"{subject} {source} could not be downloaded from {endpoint} ({what}: {' '.join(str(err).split())[:160]})",
            f"check the network, HF_ENDPOINT and the token and retry, {local_fix}",
        ) from None
    folder = Path(snapshot) / source.subfolder if source.subfolder else Path(snapshot)
    if not folder.is_dir():
        raise CodeunlearnError(
            f"Hub repo {source.repo_id} (revision {source.revision or 'main'}) has no folder {source.subfolder!r}",
            "check the subfolder after the repo id (OWNER/NAME/sub/folder)",
        )
    return folder
