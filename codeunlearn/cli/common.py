"""What the subcommands share beyond the library: refusing to replace outputs before a slow step."""

from __future__ import annotations

import math
from pathlib import Path

from codeunlearn.errors import CodeunlearnError, check_range


def check_output_file(path: str | Path, overwrite: bool) -> Path:
    """Refuse to replace an existing file unless `overwrite`."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise CodeunlearnError(f"{path} already exists", "pass --overwrite or choose another output path")
    if path.exists() and path.is_dir():
        raise CodeunlearnError(f"{path} is a directory", "pass a file path")
    return path


def check_output_dir_free(path: str | Path, overwrite: bool) -> Path:
    """Fail early (before any slow step) when an output directory would be refused at save time."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise CodeunlearnError(f"{path} exists and is not a directory", "choose another output path")
    if path.is_dir() and any(path.iterdir()) and not overwrite:
        raise CodeunlearnError(f"output directory {path} is not empty", "pass --overwrite or choose a new directory")
    return path


def check_skip_positions(skip_positions: int, seq_len: int) -> None:
    """Refuse a `--skip_positions` that leaves no target in a chunk (a chunk of `seq_len` tokens has `seq_len - 1`
    targets): the mean loss over nothing is nan, which a report would print as if it were a measurement."""
    check_range(
        "skip_positions",
        skip_positions,
        0 <= skip_positions < seq_len - 1,
        f"in [0, {seq_len - 2}] (--seq_len {seq_len})",
    )


def check_multiplier(multiplier: float | None, zero_flag: str) -> None:
    """A clamp multiplier, when given, is finite and negative, as `codeunlearn.bottleneck.edit.check_multiplier`
    requires (0 is zero-ablation's job: `zero_flag` names the flag that asks for it)."""
    if multiplier is not None:
        check_range(
            "multiplier",
            multiplier,
            math.isfinite(multiplier) and multiplier < 0,
            f"< 0 (negative, e.g. -10; for zero-ablation use {zero_flag})",
        )
