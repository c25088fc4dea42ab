"""The one exception type users see: a single line that says what is wrong and how to fix it."""

from __future__ import annotations


class CodeunlearnError(Exception):
    """Bad input or state, reported as one line naming the fix (never a traceback-only failure)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} -- fix: {fix}")


def check_range(name: str, value: object, valid: bool, valid_range: str) -> None:
    """Refuse a numeric argument outside its range with one line naming the flag and the range it takes.

    One shared checker so every argument dataclass words its range errors the same way; `valid` is the caller's
    comparison (ranges differ: open, closed, optional), `valid_range` says it in words, e.g. `>= 1` or `in [0, 1)`.
    """
    if not valid:
        raise CodeunlearnError(f"--{name} {value} is out of range", f"pass --{name} {valid_range}")
