"""One module per model family, named after the fixture folder (``runners/<family>.py``).

A runner module provides:

* ``build_model(case) -> nn.Module``: the zoo model for the case's tiny config, upstream weights loaded
  through the user-facing converter (see ``harness.build_model``);
* ``plan(case) -> harness.Plan``: the steps that turn the case's inputs into its outputs, decoded from the
  case's own naming, so that another case in the same format needs no code change.

Adding a family is adding a module here; nothing else changes.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType


def runner_exists(family: str) -> bool:
    """Whether ``runners/<family>.py`` exists (a pending case without one is reported as "no runner yet")."""
    return family.isidentifier() and importlib.util.find_spec(f"{__name__}.{family}") is not None


def load_runner(family: str) -> ModuleType:
    """The runner module for ``family``; a clear error if there is none."""
    if not family.isidentifier():
        raise LookupError(f"fixture folder {family!r} is not a valid family name")
    try:
        return importlib.import_module(f"{__name__}.{family}")
    except ModuleNotFoundError as err:
        if err.name != f"{__name__}.{family}":
            raise
        raise LookupError(f"no parity runner for family {family!r}: add tests/parity/runners/{family}.py") from None
