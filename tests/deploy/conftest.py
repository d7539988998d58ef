"""ONNX export tests: tiny models of every family exported once per session, the bundled images, and the rule that
these tests skip only when ``onnxruntime`` is missing outside CI (under ``CI=true`` they fail instead)."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from zoo.io.png import read_image

from .support import MISSING, PNGS, in_ci, tiny


@pytest.fixture(autouse=True)
def _deploy_packages() -> None:
    if MISSING:
        if in_ci():
            pytest.fail(f"CI=true but {', '.join(MISSING)} is not installed (the dev extra installs it)")
        pytest.skip(f"{', '.join(MISSING)} not installed (pip install -e '.[deploy]')")


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], tuple[torch.nn.Module, Path]]:
    """``exported(name)``: the tiny model and the folder its graphs were exported to (once per session)."""
    done: dict[str, tuple[torch.nn.Module, Path]] = {}

    def get(name: str) -> tuple[torch.nn.Module, Path]:
        if name not in done:
            from zoo.deploy.onnx_export import export_onnx

            model = tiny(name)
            folder = tmp_path_factory.mktemp(f"onnx_{name}")
            export_onnx(model, folder)
            done[name] = (model, folder)
        return done[name]

    return get


@pytest.fixture(scope="session")
def png() -> np.ndarray:
    return read_image(PNGS[0])


@pytest.fixture(autouse=True)
def _quiet_random_weights() -> Iterator[None]:
    """Both predictors warn that the tiny models' weights are random; that is what these tests use."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*RANDOM.*")
        yield
