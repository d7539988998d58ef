"""The benchmark scripts' tests import each script as a module: a test module names it in ``SCRIPT``."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def import_script(name: str) -> types.ModuleType:
    """``benchmarks/<name>.py`` imported as module ``name`` (the caller puts ``BENCHMARKS`` on ``sys.path``: the
    scripts import each other, as they do when run)."""
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def script(request):
    """``benchmarks/<SCRIPT>.py`` imported, with its folder on ``sys.path`` meanwhile."""
    sys.path.insert(0, str(BENCHMARKS))
    yield import_script(request.module.SCRIPT)
    sys.path.remove(str(BENCHMARKS))


@pytest.fixture
def load_script():
    """A function importing ``benchmarks/<name>.py`` by name, with the folder on ``sys.path`` for the test."""
    sys.path.insert(0, str(BENCHMARKS))
    yield import_script
    sys.path.remove(str(BENCHMARKS))
