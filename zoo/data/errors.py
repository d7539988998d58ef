"""The one error type for bad input data: it always names the offending file(s) and the problem."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any


class DataError(ValueError):
    """Bad input data: unreadable or truncated files, mismatched grids, NaN/inf, wrong channels, bad labels.

    The message starts with the file path, e.g. ``"labelsTr/case_01.nii.gz: label values [7] are not in
    dataset.json"``; ``paths`` holds every file involved.
    """

    def __init__(self, paths: str | PathLike[str] | list[str | PathLike[str]], problem: str) -> None:
        self.paths = [str(p) for p in (paths if isinstance(paths, list) else [paths])]
        self.problem = problem
        super().__init__(f"{' vs '.join(self.paths)}: {problem}")


def read_json(path: str | PathLike[str], what: str = "JSON") -> Any:
    """Parse a JSON file; a missing or malformed file is a :class:`DataError` naming it (``what`` names the kind)."""
    file = Path(path)
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise DataError(file, "file not found") from exc
    except (OSError, ValueError) as exc:
        raise DataError(file, f"cannot parse {what} ({exc})") from exc
