"""The evaluation tests run torch on one thread (restored afterwards): their models are tiny, and one thread keeps
them fast on a shared machine and makes the single-process and two-process tables comparable."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# Tiny random models: the Predictor's warning about random weights is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::zoo.inference.predictor.RandomWeightsWarning")
