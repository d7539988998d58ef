"""Tiny randomly initialised models for the inference-layer tests (no fixtures, no network)."""

from __future__ import annotations

import pytest
import torch

from tiny_models import tiny_model


class CallCounter:
    """Counts forward calls of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def tiny_2d_model():
    return tiny_model("sam_med2d_b")


@pytest.fixture(scope="module")
def tiny_3d_model():
    return tiny_model("sam_med3d_turbo")


@pytest.fixture(scope="module")
def tiny_unet_model():
    return tiny_model("sam_unet_r34")
