"""Atomic saves and guarded loads: a crash mid-save never leaves a half-written file in place of a good one,
and tensors are only ever read through safetensors.

Every atomic write ends with the permissions a plain `open(path, "w")` / `mkdir` would give under the process umask
(files 0o666 & ~umask, directories 0o777 & ~umask): `tempfile` creates its files 0o600 and directories 0o700, and
safetensors (0.8) writes its files 0o600 too, which would make a shared export unreadable to everyone but its
writer. The mode is set on the temporary name before the rename, so the final path never exists with the wrong mode
or partially written."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from codeunlearn.errors import CodeunlearnError

FILE_MODE = 0o666  # what open() asks for before the umask
DIRECTORY_MODE = 0o777  # what mkdir() asks for before the umask


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


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write bytes to a temporary file beside `path`, fsync it, then rename over `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fchmod(handle.fileno(), default_file_mode())  # mkstemp made it 0o600
            os.fsync(handle.fileno())
        os.replace(tmp, path)
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
    """Save tensors as safetensors through a temporary file and an atomic rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.chmod(tmp, default_file_mode())  # mkstemp made it 0o600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def load_tensors(path: str | Path, what: str = "tensor file") -> dict[str, torch.Tensor]:
    """Load a safetensors file, turning a missing or corrupt file into a one-line error."""
    path = Path(path)
    if not path.is_file():
        raise CodeunlearnError(f"{what} not found at {path}", "check the path (was it saved completely?)")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CodeunlearnError(
            f"{what} at {path} is corrupt or not safetensors ({err})", "re-create it from its source run"
        ) from None


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
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp.", dir=path.parent))
    try:
        yield tmp
        _open_up(tmp)  # mkdtemp made it 0o700, safetensors its files 0o600
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old.", dir=path.parent))
            os.replace(path, old / "dir")
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
