"""Atomic saves and guarded loads: a crash mid-save never leaves a half-written file in place of a good one,
and tensors are only ever read through safetensors.

Every atomic write ends with the permissions a plain `open(path, "w")` / `mkdir` would give under the process umask
(files 0o666 & ~umask, directories 0o777 & ~umask): `tempfile` creates its files 0o600 and directories 0o700, and
safetensors (0.8) writes its files 0o600 too, which would make a shared export unreadable to everyone but its
writer. The mode is set on the temporary name before the rename, so the final path never exists with the wrong mode
or partially written.

Integrity: every tensor file written here carries `codeunlearn_sha256` in its safetensors metadata, a SHA-256 over the
tensors' names and raw bytes in name order, and `load_tensors` checks it: safetensors validates the header but not
the data, so a flipped bit in the weights would otherwise load silently. A model directory that `transformers`'
`save_pretrained` wrote for us (an export, a baked export, a baseline's model) gets the same field afterwards
(`stamp_checksums`), and the package's model loader checks it (`verify_checksums`). Files without the field (older
versions, other writers such as sae-lens) still load.

Leftovers: a killed save leaves its hidden temporary (`.NAME.XXXXXXXX`, or `.NAME.tmp.XXXXXXXX` / `.NAME.old.XXXXXXXX`
for a directory) beside the target; the next save into the same place removes those.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from codeunlearn.errors import CodeunlearnError

FILE_MODE = 0o666  # what open() asks for before the umask
DIRECTORY_MODE = 0o777  # what mkdir() asks for before the umask
CHECKSUM_KEY = "codeunlearn_sha256"  # safetensors metadata field holding `tensor_checksum` of the file's tensors
# tempfile's random part: 8 characters of this alphabet (tempfile._RandomNameSequence).
_RANDOM_PART = r"[a-z0-9_]{8}"


def current_umask() -> int:
    """The process umask, read without changing it where the system allows.

    `os.umask` can only be read by setting it, and for that moment other threads would create files with the
    temporary mask; Linux reports it in /proc/self/status, so that is tried first."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def default_file_mode() -> int:
    """The mode a newly created file gets under the current umask (0o644 under umask 022)."""
    return FILE_MODE & ~current_umask()


def default_directory_mode() -> int:
    """The mode a newly created directory gets under the current umask (0o755 under umask 022)."""
    return DIRECTORY_MODE & ~current_umask()


def _open_up(root: Path) -> None:
    """Give `root` and everything under it the modes a plain write gives under the umask (an executable file stays
    executable); symbolic links are left alone."""
    file_mode, directory_mode = default_file_mode(), default_directory_mode()
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        if path.is_dir():
            os.chmod(path, directory_mode)
        elif path.is_file():
            os.chmod(path, directory_mode if path.stat().st_mode & 0o111 else file_mode)


def _fsync_directory(path: Path) -> None:
    """Make a rename or creation inside `path` durable (the file's own fsync does not cover its directory entry);
    a system that cannot open directories (Windows) is skipped."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_tree(root: Path) -> None:
    """fsync every file and directory under `root` (written by other libraries, which do not)."""
    for path in [*root.rglob("*"), root]:
        if path.is_symlink():
            continue
        if path.is_file():
            _fsync_file(path)
        elif path.is_dir():
            _fsync_directory(path)


def remove_leftovers(path: str | Path) -> list[Path]:
    """Remove the hidden temporaries an interrupted atomic save of `path` left beside it; returns what it removed.

    Only names this module's own helpers create match (`.NAME.` + tempfile's 8 random characters, or
    `.NAME.tmp.` / `.NAME.old.` + 8 for directories), so no other file beside `path` is touched."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    name = re.escape(path.name)
    pattern = re.compile(rf"\.{name}\.((tmp|old)\.)?{_RANDOM_PART}")
    removed = []
    for entry in path.parent.iterdir():
        if not pattern.fullmatch(entry.name):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                entry.unlink()
        removed.append(entry)
    return removed


def tensor_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 (hex) over each tensor's name, dtype, shape and raw bytes, in name order.

    Independent of how safetensors lays the data out in the file, so the writer can compute it before saving and the
    reader after loading."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        _add_tensor(digest, name, tensors[name])
    return digest.hexdigest()


def _add_tensor(digest: hashlib._Hash, name: str, tensor: torch.Tensor) -> None:
    tensor = tensor.detach().contiguous().cpu()
    digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
    digest.update(memoryview(tensor.reshape(-1).view(torch.uint8).numpy()))


def file_checksum(path: str | Path) -> tuple[str, str | None]:
    """(`tensor_checksum` of a safetensors file's tensors, the checksum its metadata records or None), reading one
    tensor at a time (a model's weights are never held twice)."""
    digest = hashlib.sha256()
    with safe_open(str(path), framework="pt") as handle:
        recorded = (handle.metadata() or {}).get(CHECKSUM_KEY)
        for name in sorted(handle.keys()):
            _add_tensor(digest, name, handle.get_tensor(name))
    return digest.hexdigest(), recorded


def stamp_checksums(directory: str | Path) -> list[Path]:
    """Add `CHECKSUM_KEY` to every safetensors file directly in `directory` that lacks it (files another writer,
    e.g. `transformers`' `save_pretrained`, put there), rewriting each atomically with its other metadata kept.
    Returns the files stamped."""
    stamped = []
    for path in sorted(Path(directory).glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            if CHECKSUM_KEY in metadata:
                continue
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
        atomic_save_tensors(tensors, path, metadata)
        stamped.append(path)
    return stamped


def verify_checksums(directory: str | Path, what: str = "model weights") -> None:
    """Check every safetensors file directly in `directory` that records `CHECKSUM_KEY` against its tensors (one
    tensor at a time); a mismatch or an unreadable file is a one-line error."""
    for path in sorted(Path(directory).glob("*.safetensors")):
        try:
            actual, recorded = file_checksum(path)
        except (SafetensorError, OSError, ValueError) as err:
            raise CodeunlearnError(
                f"{what} at {path} is corrupt or not safetensors ({err})", "re-create it from its source run"
            ) from None
        if recorded is not None and actual != recorded:
            raise CodeunlearnError(
                f"{what} at {path}: tensor data does not match its checksum: the file is corrupted",
                "re-create it from its source run or download it again",
            )


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, fsync it, then rename over `path` (and fsync the directory)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), default_file_mode())  # mkstemp made it 0o600
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write text (UTF-8) to a temporary file beside `path`, fsync it, then rename over `path`."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_tensors(
    tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None
) -> None:
    """Save tensors as safetensors through a temporary file, fsync and an atomic rename, with their checksum
    (`CHECKSUM_KEY`) added to `metadata`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        cpu = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
        save_file(cpu, tmp, metadata={**(metadata or {}), CHECKSUM_KEY: tensor_checksum(cpu)})
        os.chmod(tmp, default_file_mode())  # mkstemp made it 0o600
        _fsync_file(Path(tmp))
        os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing or corrupt file into a one-line error.

    A file carrying `CHECKSUM_KEY` (everything `atomic_save_tensors` writes) must match it; one without still
    loads."""
    path = Path(path)
    if not path.is_file():
        raise CodeunlearnError(f"{what} not found at {path}", "check the path (was it saved completely?)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 (not a dict)
    except (SafetensorError, OSError, ValueError) as err:
        raise CodeunlearnError(
            f"{what} at {path} is corrupt or not safetensors ({err})", "re-create it from its source run"
        ) from None
    expected = metadata.get(CHECKSUM_KEY)
    if expected is not None and tensor_checksum(tensors) != expected:
        raise CodeunlearnError(
            f"{what} at {path}: tensor data does not match its checksum: the file is corrupted",
            "re-create it from its source run or restore it from a backup",
        )
    return tensors


@contextlib.contextmanager
def atomic_directory(path: str | Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary directory that replaces `path` only if the block finishes without error.

    A non-empty `path` is refused unless `overwrite`; the old contents survive any failure. The directory and
    everything in it end with the modes a plain write gives under the umask, whatever wrote them (safetensors and
    `tempfile` write 0o600); until the rename the directory stays private to its writer.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CodeunlearnError(f"{path} exists and is not a directory", "choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CodeunlearnError(f"output directory {path} is not empty", "pass --overwrite or choose a new directory")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    try:
        yield tmp
        _open_up(tmp)  # mkdtemp made it 0o700, safetensors its files 0o600
        _fsync_tree(tmp)  # other writers (transformers, sae-lens, safetensors) do not fsync
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "dir")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_directory(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
