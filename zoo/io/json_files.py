"""Reading JSON files with errors that name the file."""

from __future__ import annotations

import json
from os import PathLike
from pathlib import Path
from typing import Any

from zoo.errors import DataError


def read_json(path: str | PathLike[str], what: str = "JSON") -> Any:
    """Parse a JSON file; a missing or malformed file is a :class:`DataError` naming it (``what`` names the kind)."""
    file = Path(path)
    try:
        return json.loads(file.read_text())
    except FileNotFoundError as exc:
        raise DataError(file, "file not found") from exc
    except (OSError, ValueError) as exc:
        raise DataError(file, f"cannot parse {what} ({exc})") from exc
