"""Errors raised by data modules: one clear message that names the file and the fix."""

from __future__ import annotations


class DataFileError(RuntimeError):
    """A data file is missing, truncated, corrupt or of the wrong shape.

    The message always names the file and says how to get a good copy.
    """

    def __init__(self, path, problem: str, fix: str):
        self.path = str(path)
        self.problem = problem
        self.fix = fix
        super().__init__(f"{self.path}: {problem}. {fix}")


class HonestSplitError(RuntimeError):
    """The test split was touched during model selection."""
