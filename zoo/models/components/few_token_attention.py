"""Exact cross-attention between a few prompt tokens and many image tokens, with the projections factored out.

In SAM's two-way transformer a handful of prompt tokens (IoU, mask and point tokens: 7 for one click) attends to
every image token and back. Computed as written, each cross-attention projects all ``N`` image tokens to the
internal width (``N x C x D`` multiply-adds per projection). When ``heads x tokens < D`` the same attention is
cheaper with the projection matrices moved onto the token side, because per head the few tokens span a
subspace of rank ``tokens``:

* image queries, token keys (``image_to_token``): the score ``(W_q x + b_q) . k`` equals ``x . (W_q^T k) + b_q . k``,
  and ``W_o`` applied to the attention output equals the attention weights applied to ``W_o v`` per head. The
  ``N``-sized products shrink from ``N x C x D`` (``q_proj``, ``out_proj``) to ``N x C x heads x tokens``.
* token queries, image keys (``token_to_image``): the score ``q . (W_k y + b_k)`` equals ``(W_k^T q) . y`` plus a
  constant per query that the softmax removes, and ``sum_j p_j (W_v x_j + b_v) = W_v (sum_j p_j x_j) + b_v``
  because the weights sum to one. ``k_proj`` and ``v_proj`` over the image are never computed.

For SAM-Med3D's decoder (``N = 512``, ``C = 384``, ``D = 192``, 8 heads, 7 tokens) this does 44 instead of 151 MFLOP
per cross-attention. Same function as :class:`~zoo.models.components.transformer.TokenAttention`'s direct form,
different rounding.

The per-head products are batched matrix products over the heads, and every score matrix is laid out
``B x (heads, tokens) x N``: the softmax over the few tokens then reduces over a middle axis with the ``N``
image tokens contiguous, which vectorises (over a short last axis, or with heads last, it was several times
slower), and the attention scale is applied to the few tokens' side before the products rather than to the
scores. A single prompt set's ``N``-sized products go through
:func:`~zoo.models.components.onednn_linear.batched_product`: oneDNN's kernel where it is faster than the BLAS's.
"""

import torch
from torch import Tensor, nn

from zoo.models.components.onednn_linear import batched_product


def _heads(projection: nn.Linear, num_heads: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A ``C -> heads * d`` projection's weight as ``heads x d x C`` and its bias as ``heads x d x 1``, in ``dtype``.

    ``dtype`` is that of the projected activations: under autocast the linear layers compute in bf16 while the
    parameters stay float32, and the products below need both operands in one dtype whether or not autocast
    reaches them (a dispatch mode such as a FLOP counter sees them without it).
    """
    weight = projection.weight.to(dtype).view(num_heads, -1, projection.in_features)
    return weight, projection.bias.to(dtype).view(num_heads, -1, 1)


def _split_heads(x: Tensor, num_heads: int) -> Tensor:
    """``B x T x (heads d)`` to ``heads x (B T) x d``: one matrix per head for the batched products."""
    batch, tokens, _ = x.shape
    return x.view(batch, tokens, num_heads, -1).permute(2, 0, 1, 3).reshape(num_heads, batch * tokens, -1)


def _batch_major(per_head: Tensor, batch: int) -> Tensor:
    """``heads x (B T) x E`` to ``B x (heads T) x E`` (no copy for a batch of one)."""
    num_heads, rows, width = per_head.shape
    return per_head.view(num_heads, batch, rows // batch, width).transpose(0, 1).reshape(batch, -1, width)


def image_queries_token_keys(attention: nn.Module, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Attention of many queries (``B x N x C``) to few keys and values (``B x T x C``), output ``B x N x C``.

    ``attention`` is a ``TokenAttention``: its ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` and ``num_heads``.
    """
    q_proj, k_proj, v_proj, out_proj = attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj
    num_heads = attention.num_heads
    batch = queries.shape[0]
    k = k_proj(keys)  # B x T x (H d)
    v = v_proj(values)
    q_weight, q_bias = _heads(q_proj, num_heads, k.dtype)
    k = _split_heads(k * q_weight.shape[1] ** -0.5, num_heads)  # H x (B T) x d, scaled
    # Each key pulled back to the input space of the queries: score = x . (W_q^T k) + b_q . k.
    keys_in_query_space = _batch_major(torch.bmm(k, q_weight), batch)  # B x (H T) x C
    key_bias = _batch_major(torch.bmm(k, q_bias), batch)  # B x (H T) x 1
    scores = batched_product(keys_in_query_space, queries.transpose(1, 2), key_bias)  # B x (H T) x N
    weights = scores.unflatten(1, (num_heads, -1)).softmax(dim=2).flatten(1, 2)
    # Each value pushed through its head's slice of the output projection.
    o_weight = out_proj.weight.to(v.dtype).view(out_proj.out_features, num_heads, -1).permute(1, 2, 0)  # H x d x C
    values_out = _batch_major(torch.bmm(_split_heads(v, num_heads), o_weight), batch)  # B x (H T) x C
    return batched_product(weights.transpose(1, 2), values_out, out_proj.bias)


def token_queries_image_keys(attention: nn.Module, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Attention of few queries (``B x T x C``) to many keys and values (``B x N x C``), output ``B x T x C``.

    ``attention`` is a ``TokenAttention``, as for :func:`image_queries_token_keys`.
    """
    q_proj, k_proj, v_proj, out_proj = attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj
    num_heads = attention.num_heads
    batch, tokens, _ = queries.shape
    q = q_proj(queries)  # B x T x (H d)
    k_weight, k_bias = _heads(k_proj, num_heads, q.dtype)
    v_weight, v_bias = _heads(v_proj, num_heads, q.dtype)
    q = _split_heads(q * k_weight.shape[1] ** -0.5, num_heads)  # H x (B T) x d, scaled
    queries_in_key_space = _batch_major(torch.bmm(q, k_weight), batch)  # B x (H T) x C
    # q . b_k is the same for every key, so the softmax cancels it; kept so that b_k stays in the autograd graph
    # (its gradient is zero either way, but distributed training expects every parameter to be used).
    query_bias = _batch_major(torch.bmm(q, k_bias), batch)  # B x (H T) x 1
    scores = batched_product(queries_in_key_space, keys.transpose(1, 2), query_bias)
    pooled = batched_product(scores.softmax(dim=-1), values)  # B x (H T) x C
    pooled = pooled.view(batch, num_heads, tokens, -1).transpose(0, 1).reshape(num_heads, batch * tokens, -1)
    attended = torch.bmm(pooled, v_weight.transpose(1, 2))  # H x (B T) x d: W_v per head
    attended = attended.view(num_heads, batch, tokens, -1).permute(1, 2, 0, 3).flatten(2)  # B x T x (H d)
    return out_proj(attended + v_bias.flatten())
