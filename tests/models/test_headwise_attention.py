"""Attention head by head through oneDNN computes ``F.scaled_dot_product_attention`` with its mask, and only runs
where it was measured faster (large heads, float32 inference, where MKL lags oneDNN)."""

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from zoo.models.components import headwise_attention
from zoo.models.components.attention import (
    RelPosAttention,
    window_partition,
    window_unpartition,
)
from zoo.models.components.compute_path import reference_computation
from zoo.models.components.fast_window_attention import padded_window_attention
from zoo.models.components.headwise_attention import attention, headwise_applies

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@pytest.fixture
def headwise_everywhere(monkeypatch):
    """Stand in for a CPU where MKL lags oneDNN, with the tests' small heads counting as large."""
    monkeypatch.setattr(headwise_attention, "mkl_lags_onednn", lambda: True)
    monkeypatch.setattr(headwise_attention, "MIN_SCORES", 0)


def operands(batch=2, heads=3, queries=9, keys=10, dim=8, seed=0):
    """Queries, keys and values as strided views of one projection (as a ViT block's qkv gives them), a mask."""
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(batch, max(queries, keys), 3, heads, dim, generator=generator).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0, :, :, :queries], qkv[1, :, :, :keys], qkv[2, :, :, :keys]
    mask = torch.randn(batch, heads, queries, keys, generator=generator) * 3
    return q, k, v, mask


def spied_products(monkeypatch) -> list[str]:
    calls = []
    product = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append("product")
            return product(*args)

        def binary(self, *args):
            calls.append("masked")
            return product.binary(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    return calls


@pytest.mark.parametrize("broadcast_mask", [False, True])
def test_equals_scaled_dot_product_attention_with_its_mask(headwise_everywhere, monkeypatch, broadcast_mask):
    q, k, v, mask = operands()
    if broadcast_mask:  # one mask for every head, as a view
        mask = mask[:, :1].expand_as(mask)
    with torch.no_grad():
        assert headwise_applies(q, k, v, mask)
        calls = spied_products(monkeypatch)
        out = attention(q, k, v, mask)
    assert calls == ["masked", "product"] * 6, "two oneDNN products per head"
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=mask.double())
    assert out.shape == exact.shape and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-6 * exact.abs().max())


def test_the_fused_kernel_runs_everywhere_else(headwise_everywhere, monkeypatch):
    q, k, v, mask = operands()
    with torch.no_grad():
        assert not headwise_applies(q, k, v, None), "no mask"
        assert not headwise_applies(*(t.double() for t in (q, k, v, mask))), "float64"
        with reference_computation():
            assert not headwise_applies(q, k, v, mask)
        monkeypatch.setattr(headwise_attention, "MIN_SCORES", 9 * 10 + 1)
        assert not headwise_applies(q, k, v, mask), "heads too small to pay for the calls"
        monkeypatch.setattr(headwise_attention, "MIN_SCORES", 0)
        monkeypatch.setattr(headwise_attention, "mkl_lags_onednn", lambda: False)
        assert not headwise_applies(q, k, v, mask), "where MKL does not lag oneDNN"
    trainable = nn.Parameter(q.detach().clone())
    monkeypatch.setattr(headwise_attention, "mkl_lags_onednn", lambda: True)
    assert not headwise_applies(trainable, k, v, mask), "autograd records it"
    calls = spied_products(monkeypatch)
    attention(trainable, k, v, mask).sum().backward()
    assert calls == [] and trainable.grad is not None


def test_the_masked_product_is_trusted_only_where_it_adds_the_mask(monkeypatch):
    product = torch.ops.mkldnn._linear_pointwise.binary
    assert headwise_attention.computes_masked_product(product)
    doubled = lambda x, other, weight, bias, attr: product(x, other * 2, weight, bias, attr)
    assert not headwise_attention.computes_masked_product(doubled)
    assert not headwise_attention.computes_masked_product(None)


def test_a_sam_med3d_block_with_headwise_attention_matches_the_zero_padded_reference(headwise_everywhere, monkeypatch):
    """SAM-Med3D's layout in small: one window larger than the grid, its padded keys entering as one extra key."""
    attn = RelPosAttention(3, dim=16, num_heads=2, input_size=(6, 6, 6), sam_med3d_broadcast=True).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in attn.parameters():  # non-zero relative-position tables and biases
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    x = torch.randn(2, 4, 4, 4, 16, generator=generator)
    calls = spied_products(monkeypatch)
    with torch.no_grad():
        fast = padded_window_attention(attn, x, (6, 6, 6))
        assert calls.count("masked") == 4, "2 windows x 2 heads"
        attn.double()
        windows, padded = window_partition(x.double(), 6)
        truth = window_unpartition(attn(windows), 6, padded, (4, 4, 4))
    torch.testing.assert_close(fast.double(), truth, rtol=0, atol=1e-5)
