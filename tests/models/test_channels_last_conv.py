"""Convolutions written as matrix products on channels-last grids equal torch's convolutions; the adapter uses them."""

import pytest
import torch
from derivations import recorded_derivations
from torch import nn

from zoo.models.components import channels_last_conv, onednn_linear
from zoo.models.components.adapter import ChannelSpatialAdapter
from zoo.models.components.channels_last_conv import conv_channels_last, conv_transpose_channels_last
from zoo.models.components.compute_path import reference_computation
from zoo.models.components.weight_cache import DerivedWeights

TOL = {torch.float32: 1e-5, torch.float64: 1e-12}
CONV = {2: nn.Conv2d, 3: nn.Conv3d}
CONV_T = {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def randomised(module: nn.Module, seed: int) -> nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    return module


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(1, -1)


def channels_first(x: torch.Tensor) -> torch.Tensor:
    return x.movedim(-1, 1)


@pytest.fixture(params=[False, True], ids=["batched-product", "one-product"])
def either_transposed_form(request, monkeypatch):
    """The transposed convolution's two forms: batched per kernel position, one product through ``linear`` (where
    MKL lags oneDNN)."""
    monkeypatch.setattr(channels_last_conv, "mkl_lags_onednn", lambda: request.param)
    return request.param


CASES = [  # fast function, torch module class per spatial dims, spatial dims, input grid, kernel, stride, padding, bias
    (conv_channels_last, CONV, 2, (16, 16), 3, 2, 1, False),  # SAM-Med2D's adapter, down
    (conv_channels_last, CONV, 2, (7, 5), 3, 1, 1, True),
    (conv_channels_last, CONV, 2, (6, 9), (2, 3), (2, 1), (0, 2), True),
    (conv_channels_last, CONV, 3, (5, 4, 6), 3, 2, 1, True),
    (conv_transpose_channels_last, CONV_T, 2, (8, 8), 4, 2, 1, False),  # SAM-Med2D's adapter, up
    (conv_transpose_channels_last, CONV_T, 2, (3, 5), 2, 2, 0, True),  # SAM's mask upscaling
    (conv_transpose_channels_last, CONV_T, 2, (4, 3), (3, 2), (2, 3), (1, 0), True),
    (conv_transpose_channels_last, CONV_T, 3, (3, 2, 4), 4, 2, 1, True),
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("fast, kind, spatial_dims, grid, kernel, stride, padding, bias", CASES)
def test_channels_last_products_equal_torch(
    fast, kind, spatial_dims, grid, kernel, stride, padding, bias, dtype, either_transposed_form
):
    conv = randomised(kind[spatial_dims](6, 5, kernel, stride, padding, bias=bias), seed=len(grid)).to(dtype)
    x = torch.randn(2, 6, *grid, generator=torch.Generator().manual_seed(2), dtype=dtype)
    with torch.no_grad():
        out = channels_first(fast(conv, channels_last(x)))
        expected = conv.double()(x.double())
    assert out.shape == expected.shape and out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=TOL[dtype] * expected.abs().max())


@pytest.mark.parametrize("activation", [nn.ReLU(), nn.GELU(), nn.SiLU()], ids=["relu", "gelu", "silu"])
def test_convolution_applies_an_activation_to_its_result(activation):
    conv = randomised(nn.Conv2d(6, 5, 3, 2, 1), seed=3)
    x = torch.randn(2, 6, 8, 8, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        out = channels_first(conv_channels_last(conv, channels_last(x), activation=activation))
        expected = activation(conv.double()(x.double()))
    torch.testing.assert_close(out.double(), expected, rtol=0, atol=TOL[torch.float32] * expected.abs().max().item())


def test_gradients_match_torch_when_training(either_transposed_form):
    """With autograd on (training on the CPU) nothing is cached and every parameter gets torch's gradient."""
    down = randomised(nn.Conv2d(4, 3, 3, 2, 1), seed=5).double()
    up = randomised(nn.ConvTranspose2d(3, 4, 4, 2, 1), seed=6).double()
    x = torch.randn(1, 4, 6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(7))

    def loss(fast: bool) -> torch.Tensor:
        if fast:
            y = channels_first(conv_transpose_channels_last(up, conv_channels_last(down, channels_last(x))))
        else:
            y = up(down(x))
        return (y * torch.linspace(-1, 1, y.numel(), dtype=y.dtype).view_as(y)).sum()

    grads = []
    for fast in (True, False):
        down.zero_grad(), up.zero_grad()
        loss(fast).backward()
        grads.append([p.grad.clone() for p in (*down.parameters(), *up.parameters())])
    for fast_grad, torch_grad in zip(*grads):
        torch.testing.assert_close(fast_grad, torch_grad, rtol=0, atol=1e-12)
    assert not up.__dict__.get("_derived_weights", DerivedWeights()).entries


def test_cached_transposed_weight_follows_in_place_updates(either_transposed_form):
    up = randomised(nn.ConvTranspose2d(3, 4, 4, 2, 1), seed=8)
    x = torch.randn(1, 5, 5, 3, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        conv_transpose_channels_last(up, x)  # fills the cache
        up.weight.mul_(-3.0)
        after = channels_first(conv_transpose_channels_last(up, x))
        torch.testing.assert_close(after, up(channels_first(x)), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(4, 4, 3, dilation=2), nn.Conv2d(4, 4, 3, groups=2), nn.Conv2d(4, 4, 3, padding="same")],
    ids=["dilated", "grouped", "same-padding"],
)
def test_convolutions_without_a_taps_form_are_refused(conv):
    with pytest.raises(ValueError, match="no channels-last form"):
        conv_channels_last(conv, torch.zeros(1, 6, 6, 4))


def test_refuses_output_padding():
    with pytest.raises(ValueError, match="no channels-last form"):
        conv_transpose_channels_last(nn.ConvTranspose2d(4, 4, 3, stride=2, output_padding=1), torch.zeros(1, 3, 3, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_adapter_fast_path_equals_upstreams_channels_first_computation(monkeypatch, dtype):
    calls = []
    monkeypatch.setattr(
        "zoo.models.components.adapter.conv_channels_last",
        lambda *a, **k: calls.append(1) or conv_channels_last(*a, **k),
    )
    adapter = randomised(ChannelSpatialAdapter(32), seed=10).to(dtype).eval()
    x = torch.randn(2, 6, 4, 32, generator=torch.Generator().manual_seed(11), dtype=dtype)
    with torch.no_grad():
        fast = adapter(x)
        assert calls == [1]
        with reference_computation():
            reference = adapter(x)
        assert calls == [1]
    torch.testing.assert_close(fast, reference, rtol=0, atol=TOL[dtype] * reference.abs().max())


def test_adapter_under_bf16_autocast_keeps_its_bfloat16_product_weights(monkeypatch):
    """Under CPU bfloat16 autocast the adapter's convolution products run on bfloat16 weights converted once and
    kept, not cast by autocast on every call (at full width, 5 + 9 M weights per block): the output of converting
    them on each call, bit for bit, and within bfloat16's rounding of the float32 output."""
    if not onednn_linear.onednn_bf16_linear_works():
        pytest.skip("no native bfloat16 oneDNN kernels on this CPU")
    adapter = randomised(ChannelSpatialAdapter(768), seed=12).eval()
    x = torch.randn(1, 16, 16, 768, generator=torch.Generator().manual_seed(13))
    derived = recorded_derivations(monkeypatch, onednn_linear, channels_last_conv)
    with torch.no_grad():
        exact = adapter(x)
        derived.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            first, second = adapter(x), adapter(x)
            # the convolution's product weight in oneDNN's own layout where its reorder works (kept_packed)
            down = "onednn_packed_torch.bfloat16" if onednn_linear.onednn_bf16_packing_works() else "bfloat16"
            kept_once = ["conv_transpose_taps_torch.bfloat16", f"{down}[768, 6912]"]
            assert sorted(derived) == sorted(kept_once), "converted once, kept"
            for module in (onednn_linear, channels_last_conv):  # nothing kept: converted on this call
                monkeypatch.setattr(module, "derived_from_parameters", lambda owner, slot, sources, derive: derive())
            per_call = adapter(x)
    assert torch.equal(first, second) and torch.equal(first, per_call)
    assert (first.float() - exact).abs().max() <= 0.05 * exact.abs().max()


def test_kept_bfloat16_copies_are_kept_per_weight_shape():
    """A convolution's weight kept as a matrix (its channels-last product) and as a kernel (its own convolution)
    are two entries: asking for one shape never returns the other."""
    conv = torch.nn.Conv2d(4, 6, 3).eval()
    with torch.no_grad():
        matrix, _ = onednn_linear.kept_bfloat16(conv, conv.weight.reshape(6, -1), conv.bias)
        kernel, bias = onednn_linear.kept_bfloat16(conv, conv.weight, conv.bias)
        again, _ = onednn_linear.kept_bfloat16(conv, conv.weight, conv.bias)
    assert matrix.shape == (6, 36) and kernel.shape == (6, 4, 3, 3) and again is kernel
    assert kernel.dtype == bias.dtype == torch.bfloat16 and torch.equal(kernel, conv.weight.to(torch.bfloat16))
