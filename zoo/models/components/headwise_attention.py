"""Exact attention with an additive mask, one head at a time through oneDNN's matrix product, for large windows.

``F.scaled_dot_product_attention`` with a float mask runs torch's CPU flash kernel, whose score and value products
go to the BLAS. Where MKL serves another vendor's CPU with AVX-512 it runs narrower kernels at under half
oneDNN's rate (``onednn_linear.mkl_lags_onednn``), and SAM-Med3D's twelve 512-token attentions (8 of them with
one extra key for the padded window) took a fifth of its encoder there. Per head, the scores are one oneDNN
product of the scaled queries and the keys with the head's mask added as the product's post-op (no second pass
over the scores), the softmax runs on the head's scores while they are in cache, and one more product applies
them to the values. Same function, different rounding (float32 sums in another order).

Only for heads large enough to pay for three calls per head (:data:`MIN_SCORES`), and only where MKL lags oneDNN
(where it was measured; on an AMD EPYC with AVX2 only, where MKL's kernels are full width, the fused kernel was
the faster one by a third); elsewhere, and for anything recording gradients, traced by ``torch.compile`` or
inside ``reference_computation()``, the fused kernel.
"""

import functools

import torch
from torch import Tensor
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.onednn_linear import agrees, mkl_lags_onednn, onednn_linear_works, passes
from zoo.models.components.weight_cache import records_grad

MIN_SCORES = 512 * 512  # queries x keys per head from which three oneDNN calls per head beat the fused kernel


def computes_masked_product(op: object) -> bool:
    """Whether ``op`` behaves as ``torch.ops.mkldnn._linear_pointwise.binary`` is relied on to: ``x @ w.T + other``
    on a tiny float32 input, with a transposed view as ``x`` and as ``other``."""
    if op is None:
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, other = (torch.randn(*shape, generator=generator) for shape in ((6, 8), (5, 8), (5, 6)))
    return passes(lambda: agrees(op(x, other.t(), weight, None, "add"), x @ weight.t() + other.t()) and agrees(
        op(x.t().contiguous().t(), other.t().contiguous(), weight, None, "add"), x @ weight.t() + other.t()
    ))  # fmt: skip


@functools.cache
def onednn_masked_product_works() -> bool:
    """Whether oneDNN's linear op with an added tensor as post-op exists and computes as relied on (checked once)."""
    op = getattr(getattr(torch.ops.mkldnn, "_linear_pointwise", None), "binary", None)
    return onednn_linear_works() and computes_masked_product(op)


def headwise_applies(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> bool:
    """Whether :func:`attention` runs head by head: float32 CPU inference with an additive float mask, heads of
    at least :data:`MIN_SCORES` scores, where MKL lags oneDNN and oneDNN's masked product works."""
    return (
        mask is not None
        and q.device.type == "cpu"
        and all(t.dtype == torch.float32 for t in (q, k, v, mask))
        and q.shape[-2] * k.shape[-2] >= MIN_SCORES
        and not records_grad(q, k, v, mask)
        and not torch.compiler.is_compiling()
        and not reference_computation_enabled()
        and mkl_lags_onednn()
        and onednn_masked_product_works()
    )


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`` for ``B x H x N x d`` queries, ``B x H x M x d``
    keys and values and a ``B x H x N x M`` float mask; head by head where :func:`headwise_applies`."""
    if not headwise_applies(q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    batch, heads, num_q, dim = q.shape
    product = torch.ops.mkldnn._linear_pointwise
    # Each head's queries, keys and values contiguous: oneDNN copies a strided input itself, once per call, and
    # reads a weight only with contiguous rows or columns.
    scaled = torch.mul(q, dim**-0.5, out=q.new_empty(q.shape))
    k, v = k.contiguous(), v.contiguous()
    mask = mask.expand(batch, heads, num_q, k.shape[-2])
    out = q.new_empty(batch, num_q, heads, v.shape[-1])
    for b in range(batch):
        for h in range(heads):
            scores = product.binary(scaled[b, h], mask[b, h], k[b, h], None, "add")
            out[b, :, h] = product(scores.softmax(dim=-1), v[b, h].t(), None, "none", [], "")
    return out.transpose(1, 2)
