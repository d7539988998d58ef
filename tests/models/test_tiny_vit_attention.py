"""TinyViT's window attention under CPU bfloat16 autocast as explicit batched products: autocast's precision,
only where it applies; its bias table gathered once per state of the parameter."""

import torch
from derivations import recorded_derivations
from torch import nn
from torch.nn import functional as F

from zoo.models.components import tiny_vit
from zoo.models.components.compute_path import reference_computation
from zoo.models.components.tiny_vit import (
    Attention,
    explicit_bf16_attention,
    explicit_bf16_attention_applies,
)


def operands(windows=6, heads=2, tokens=9, dim=8, seed=0):
    """Queries, keys and values as the attention's strided views of one projection, and a per-head bias."""
    generator = torch.Generator().manual_seed(seed)
    qkv = torch.randn(windows, tokens, heads, 3 * dim, generator=generator).transpose(1, 2)
    q, k, v = qkv.split(dim, dim=-1)
    return q, k, v, torch.randn(heads, tokens, tokens, generator=generator)


def test_equals_attention_with_its_bias_to_bfloat16_rounding():
    q, k, v, bias = operands()
    exact = F.scaled_dot_product_attention(q.double(), k.double(), v.double(), attn_mask=bias.double())
    out = explicit_bf16_attention(*(t.to(torch.bfloat16) for t in (q, k, v)), bias)
    fused = F.scaled_dot_product_attention(*(t.to(torch.bfloat16) for t in (q, k, v, bias[None])))
    assert out.dtype == torch.bfloat16 and out.shape == exact.shape
    error, fused_error = ((t.double() - exact).abs().max() for t in (out, fused))
    assert error <= 2**-6 * exact.abs().max(), "bfloat16's rounding of scores, weights and output"
    assert error <= 4 * fused_error + 2**-8, "of the order of the fused kernel's"
    # float32 operands: the same sums, rounded only as float32
    single = explicit_bf16_attention(q, k, v, bias).double()
    torch.testing.assert_close(single, exact, rtol=0, atol=1e-6 * exact.abs().max())


def test_applies_only_to_bfloat16_cpu_inference_on_cpus_known_not_to_be_intels(monkeypatch):
    q, _, _, bias = operands()
    q = q.to(torch.bfloat16)
    monkeypatch.setattr(tiny_vit, "non_intel_cpu", lambda: True)
    assert explicit_bf16_attention_applies(q, bias)
    assert not explicit_bf16_attention_applies(q.float(), bias), "float32 keeps the fused kernel"
    assert not explicit_bf16_attention_applies(q, bias.to(torch.bfloat16)), "the bias is added in float32"
    with reference_computation():
        assert not explicit_bf16_attention_applies(q, bias)
    assert not explicit_bf16_attention_applies(nn.Parameter(q.clone()), bias), "autograd records it"
    monkeypatch.setattr(tiny_vit, "non_intel_cpu", lambda: False)  # Intel's (or an unknown vendor's): not measured
    assert not explicit_bf16_attention_applies(q, bias)


def test_attention_under_bf16_autocast_takes_the_explicit_products_and_stays_close_to_float32(monkeypatch):
    monkeypatch.setattr(tiny_vit, "non_intel_cpu", lambda: True)
    attention = Attention(dim=16, num_heads=2, window_size=3).eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for param in attention.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.3)
    x = torch.randn(4, 9, 16, generator=generator)
    calls = []
    real = tiny_vit.explicit_bf16_attention
    monkeypatch.setattr(tiny_vit, "explicit_bf16_attention", lambda *args: calls.append(1) or real(*args))
    with torch.no_grad():
        exact = attention(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = attention(x)
    assert calls == [1]
    assert (out.float() - exact).abs().max() <= 2**-5 * exact.abs().max()


def test_windows_in_chunks_give_the_whole_batchs_result(monkeypatch):
    *qkv, bias = operands(windows=7)
    q, k, v = (t.to(torch.bfloat16) for t in qkv)
    whole = explicit_bf16_attention(q, k, v, bias)
    for windows_per_chunk in (1, 3):  # chunks of 1 window, and of 3, 3 and 1
        monkeypatch.setattr(tiny_vit, "CHUNK_SCORES", windows_per_chunk * 2 * 9 * 9)  # heads x tokens x tokens
        assert torch.equal(explicit_bf16_attention(q, k, v, bias), whole)


def test_the_bias_table_is_gathered_once_per_state_of_its_parameter(monkeypatch):
    attention = Attention(dim=16, num_heads=2, window_size=3).eval()
    owners = recorded_derivations(monkeypatch, tiny_vit, record=lambda owner, slot: owner)
    gathered = lambda: sum(owner is attention for owner in owners)  # noqa: E731
    x = torch.randn(4, 9, 16)
    with torch.no_grad():
        first = attention(x)
        assert torch.equal(attention(x), first) and gathered() == 1
        attention.attention_biases.add_(1.0)  # a new state of the table: gathered again, and used
        changed = attention(x)
    assert gathered() == 2
    reference = Attention(dim=16, num_heads=2, window_size=3).eval()
    reference.load_state_dict(attention.state_dict())
    with torch.no_grad(), reference_computation():
        torch.testing.assert_close(changed, reference(x), rtol=0, atol=1e-6)
    attention.train()
    for _ in range(2):  # training gathers it on every call, with its gradient
        attention(x).sum().backward()
    assert attention.attention_biases.grad is not None and gathered() == 4
