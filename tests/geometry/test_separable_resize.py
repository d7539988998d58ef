"""Trilinear resizing as three per-axis matrix products: F.interpolate's function, its fallbacks kept."""

import pytest
import torch
import torch.nn.functional as F

from zoo.geometry import separable_resize
from zoo.geometry.separable_resize import axis_weights, resize_trilinear

CASES = [
    ((1, 1, 32, 32, 32), (128, 128, 128)),  # SAM-Med3D's low-res logits to its crop
    ((2, 3, 5, 7, 4), (13, 5, 9)),  # batch and channels, a ratio that is not an integer, one axis kept
    ((1, 2, 9, 9, 9), (4, 20, 9)),  # shrinking
    ((1, 1, 1, 3, 2), (5, 1, 7)),  # single-voxel axes
]


def _trilinear(x, size):
    return F.interpolate(x, size=size, mode="trilinear", align_corners=False)


@pytest.mark.parametrize(("shape", "size"), CASES)
def test_it_is_f_interpolate_trilinear_and_so_is_its_gradient(shape, size):
    generator = torch.Generator().manual_seed(0)
    x = (5 * torch.randn(shape, generator=generator)).requires_grad_()
    grad = torch.randn(shape[:2] + size, generator=generator)
    expected = _trilinear(x, size)
    (expected_grad,) = torch.autograd.grad(expected, x, grad)
    got = resize_trilinear(x, size)
    (got_grad,) = torch.autograd.grad(got, x, grad)
    assert got.shape == expected.shape and got.is_contiguous()
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=5e-6)
    torch.testing.assert_close(got_grad, expected_grad, rtol=1e-6, atol=5e-5)


def test_the_axis_matrices_hold_torch_own_weights():
    weights = axis_weights(4, 16, torch.float32, torch.device("cpu"))
    assert weights.shape == (16, 4)
    assert weights[:4, :2].tolist() == [[1.0, 0.0], [1.0, 0.0], [0.875, 0.125], [0.625, 0.375]]  # edge clamped
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(16), rtol=0, atol=0)


def test_finite_cpu_volumes_take_the_products_and_the_rest_the_kernel(monkeypatch):
    calls = []
    interpolate = F.interpolate

    def counting(x, *args, **kwargs):
        calls.append(kwargs.get("mode"))
        return interpolate(x, *args, **kwargs)

    monkeypatch.setattr(separable_resize.F, "interpolate", counting)
    axis_weights.cache_clear()
    x = torch.randn(1, 1, 4, 4, 4)
    resize_trilinear(x, (8, 8, 8))
    assert "trilinear" not in calls  # the three axis matrices are linear interpolations of identities
    calls.clear()
    x[0, 0, 1, 2, 3] = float("inf")  # a zero weight times inf would be NaN: the kernel keeps inf
    got = resize_trilinear(x, (8, 8, 8))
    assert calls == ["trilinear"] and torch.equal(got.isnan(), _trilinear(x, (8, 8, 8)).isnan())
    calls.clear()
    resize_trilinear(torch.randn(1, 1, 4, 4, 4).bfloat16(), (8, 8, 8))
    assert calls == ["trilinear"]
    calls.clear()
    torch.jit.trace(lambda v: resize_trilinear(v, (8, 8, 8)), torch.randn(1, 1, 4, 4, 4), check_trace=False)
    assert calls == ["trilinear"]  # an exported graph keeps the resize op


def test_matrices_made_under_inference_mode_serve_training_later():
    axis_weights.cache_clear()
    with torch.inference_mode():
        resize_trilinear(torch.randn(1, 1, 3, 3, 3), (7, 7, 7))
    x = torch.randn(1, 1, 3, 3, 3, requires_grad=True)
    resize_trilinear(x, (7, 7, 7)).sum().backward()  # would raise if the kept matrices were inference tensors
    assert x.grad is not None


def test_autocast_leaves_the_products_in_float32():
    x = torch.randn(1, 1, 4, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = resize_trilinear(x, (8, 8, 8))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, _trilinear(x, (8, 8, 8)), rtol=1e-6, atol=1e-6)
