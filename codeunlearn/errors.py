"""The one exception type users see: a single line that says what is wrong and how to fix it."""

from __future__ import annotations


class CodeunlearnError(Exception):
    """Bad input or state, reported as one line naming the fix (never a traceback-only failure)."""

    def __init__(self, problem: str, fix: str) -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem} -- fix: {fix}")
