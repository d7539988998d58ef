"""The benchmark scripts' tests import each script as a module: a test module names it in ``SCRIPT``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def script(request):
    """``benchmarks/<SCRIPT>.py`` imported, with its folder on ``sys.path`` meanwhile (the scripts import each
    other, as they do when run)."""
    name = request.module.SCRIPT
    sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    yield module
    sys.path.remove(str(BENCHMARKS))
