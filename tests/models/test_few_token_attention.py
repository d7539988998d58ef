"""Factored few-token cross-attention equals the direct projection-attention-projection (the reference path)."""

import copy
from contextlib import nullcontext

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from zoo.models.components import onednn_linear
from zoo.models.components.compute_path import reference_computation
from zoo.models.components.onednn_linear import OneDNNLinear
from zoo.models.components.transformer import TokenAttention

ALGEBRA_TOL = 1e-12  # float64: the factored form is the same function
ROUNDING_TOL = 4e-6  # float32 (about 30 ulp of the largest output): each form against the float64 result


def random_attention(dim: int, heads: int, downsample: int, dtype: torch.dtype) -> TokenAttention:
    attention = TokenAttention(dim, heads, downsample).to(dtype)
    generator = torch.Generator().manual_seed(dim + heads)
    with torch.no_grad():
        for param in attention.parameters():
            param.copy_(torch.randn(param.shape, generator=generator, dtype=dtype) * 0.3)
    return attention


def factored_and_direct(attention: TokenAttention, q, k, v):
    with torch.no_grad():
        factored = attention(q, k, v)
        with reference_computation():
            direct = attention(q, k, v)
    assert factored.shape == direct.shape == q.shape
    return factored, direct


@pytest.mark.parametrize("direction", ["image-to-tokens", "tokens-to-image"])
@pytest.mark.parametrize("batch", [1, 3])
def test_factored_cross_attention_equals_direct(direction, batch):
    attention = random_attention(dim=48, heads=4, downsample=2, dtype=torch.float64)  # internal width 24
    generator = torch.Generator().manual_seed(batch)
    tokens = torch.randn(batch, 5, 48, generator=generator, dtype=torch.float64) * 2  # 4 heads x 5 tokens < 24
    image = torch.randn(batch, 40, 48, generator=generator, dtype=torch.float64) * 2
    q, k, v = (image, tokens, tokens * 0.5) if direction == "image-to-tokens" else (tokens, image, image * 0.5)
    few, many = min(q.shape[1], k.shape[1]), max(q.shape[1], k.shape[1])
    assert attention._factoring_pays(few=few, many=many)
    factored, direct = factored_and_direct(attention, q, k, v)
    scale = direct.abs().max().item()
    torch.testing.assert_close(factored, direct, rtol=0, atol=ALGEBRA_TOL * scale)
    # In float32 the two forms round differently; each stays within float32 rounding of the exact result.
    for result in factored_and_direct(attention.float(), q.float(), k.float(), v.float()):
        assert result.dtype == torch.float32
        torch.testing.assert_close(result.double(), direct, rtol=0, atol=ROUNDING_TOL * scale)


@pytest.mark.parametrize("direction", ["image-to-tokens", "tokens-to-image"])
def test_factored_cross_attention_through_onednn_products_stays_within_rounding(direction, monkeypatch):
    """A single prompt set's image-sized products go through oneDNN where it is used (any size here)."""
    from zoo.models.components import onednn_linear

    if not onednn_linear.onednn_linear_works():
        pytest.skip("this torch has no working oneDNN product")
    monkeypatch.setattr(onednn_linear, "min_multiply_adds", lambda: 0)
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or kernel(*args))
    attention = random_attention(dim=48, heads=4, downsample=2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(7)
    tokens = torch.randn(1, 5, 48, generator=generator, dtype=torch.float64) * 2
    image = torch.randn(1, 40, 48, generator=generator, dtype=torch.float64) * 2
    q, k, v = (image, tokens, tokens * 0.5) if direction == "image-to-tokens" else (tokens, image, image * 0.5)
    with torch.no_grad(), reference_computation():
        direct = attention(q, k, v)
    with torch.inference_mode():
        factored = attention.float()(q.float(), k.float(), v.float())
    assert len(calls) >= 2, "both image-sized products"
    torch.testing.assert_close(factored.double(), direct, rtol=0, atol=ROUNDING_TOL * direct.abs().max().item())


def test_many_tokens_per_head_keep_the_direct_form():
    attention = random_attention(dim=48, heads=4, downsample=2, dtype=torch.float64)
    assert not attention._factoring_pays(few=6, many=40)  # 4 x 6 = 24 is not below the internal width
    assert not attention._factoring_pays(few=5, many=5)  # self-attention among tokens


def test_the_direct_form_projects_many_tokens_through_onednn_with_nn_linears_keys(monkeypatch):
    """Many prompt tokens per head (a long click history) take the direct form, whose image-side projections are
    large products: OneDNNLinear layers (nn.Linear's parameters and keys), oneDNN's kernel where it applies."""
    attention = random_attention(dim=48, heads=4, downsample=2, dtype=torch.float32).eval()
    names = ("q_proj", "k_proj", "v_proj", "out_proj")
    assert all(type(getattr(attention, name)) is OneDNNLinear for name in names)
    assert list(attention.state_dict()) == [f"{name}.{kind}" for name in names for kind in ("weight", "bias")]
    if not onednn_linear.onednn_linear_works():
        pytest.skip("oneDNN's linear op is not usable in this torch")
    onednn_linear.onednn_packing_works()  # checked before the op is spied on
    monkeypatch.setattr(onednn_linear, "min_multiply_adds", lambda: 0)
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or kernel(*args))
    generator = torch.Generator().manual_seed(0)
    images, tokens = torch.randn(1, 40, 48, generator=generator), torch.randn(1, 6, 48, generator=generator)
    with torch.no_grad():  # 4 heads x 6 tokens is not below the internal width 24
        out = attention(images, tokens, tokens)
        assert len(calls) == 4, "the four projections"
        exact = copy.deepcopy(attention).double()(images.double(), tokens.double(), tokens.double())
    assert len(calls) == 4, "none in float64"
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-5 * exact.abs().max())


def test_factored_attention_backpropagates_like_direct():
    attention = random_attention(dim=48, heads=4, downsample=2, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 3, 48, generator=generator, dtype=torch.float64)
    image = torch.randn(2, 20, 48, generator=generator, dtype=torch.float64)

    def grads(reference: bool) -> list[torch.Tensor]:
        attention.zero_grad()
        with reference_computation() if reference else torch.enable_grad():
            (attention(image, tokens, tokens).square().sum() + attention(tokens, image, image).sum()).backward()
        return [p.grad.clone() for p in attention.parameters()]

    fast_grads = grads(False)
    attention.zero_grad()
    attention(tokens, image, image).sum().backward()  # tokens to image only: every parameter is still used
    assert all(param.grad is not None for param in attention.parameters())
    for fast, direct in zip(fast_grads, grads(True)):
        torch.testing.assert_close(fast, direct, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("counted", [False, True], ids=["plain", "flop-counted"])
@pytest.mark.parametrize("direction", ["image-to-tokens", "tokens-to-image"])
def test_factored_attention_runs_under_bf16_autocast(direction, counted):
    """Autocast computes the projections in bf16 while the parameters stay float32 (the bf16 inference option).
    Under a dispatch mode such as the benchmark's FLOP counter, einsum's inner products see no autocast."""
    attention = random_attention(dim=48, heads=4, downsample=2, dtype=torch.float32)
    generator = torch.Generator().manual_seed(5)
    tokens = torch.randn(1, 5, 48, generator=generator)
    image = torch.randn(1, 40, 48, generator=generator)
    q, k, v = (image, tokens, tokens) if direction == "image-to-tokens" else (tokens, image, image)
    with torch.inference_mode():  # as the predictors run
        exact = attention(q, k, v)
        with torch.autocast("cpu", dtype=torch.bfloat16), FlopCounterMode(display=False) if counted else nullcontext():
            low = attention(q, k, v)
    assert low.dtype == torch.bfloat16
    assert (low.float() - exact).abs().max() <= 0.05 * exact.abs().max()
