"""The one error type for bad input data: it names the offending file(s) and says how to fix them."""

from __future__ import annotations

from pathlib import Path


class DatasetError(ValueError):
    """A bad input file or layout (a dataset file for prepare, an image for predict), found before anything
    is written."""

    def __init__(self, problem: str, fix: str, path: Path | str | None = None):
        self.path = None if path is None else Path(path)
        self.problem = problem
        self.fix = fix
        where = f"{self.path}: " if self.path is not None else ""
        super().__init__(f"{where}{problem}. Fix: {fix}")
