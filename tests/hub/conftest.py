"""Fixtures for the hub tests: tiny models of the released architectures."""

import pytest
import torch

import zoo

from .tiny_configs import TINY_2D, TINY_3D


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors gain nothing from intra-op threads, and on a shared 2-core machine OpenMP threads that
    # wait for each other make a 30 ms forward pass take a second.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def med3d():
    torch.manual_seed(0)
    return zoo.create_model("sam_med3d_turbo", **TINY_3D).eval()


@pytest.fixture
def med2d():
    torch.manual_seed(0)
    return zoo.create_model("sam_med2d_b", **TINY_2D).eval()
