"""Files the package carries: the bundled example data, the recipes and the weight-set cards.

They live inside the package so that a plain ``pip install`` has them (a clone also links them at its top level as
``data/``, ``recipes/`` and ``checkpoints/``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def resource_path(*parts: str) -> Path:
    """The path of a file or folder shipped in ``zoo/resources`` (e.g. ``resource_path("data", "totalseg_example")``)."""
    root = Path(str(resources.files(__name__)))
    path = root.joinpath(*parts)
    if not path.exists():
        raise FileNotFoundError(f"{path}: not in the installed package's resources")
    return path


def data_path(*parts: str) -> Path:
    """A bundled example data file (see ``data/NOTICE`` for origin and licences)."""
    return resource_path("data", *parts)


def recipe_path(family: str, name: str) -> Path:
    """The recipe ``recipes/<family>/<name>.yaml``."""
    return resource_path("recipes", family, f"{name}.yaml")
