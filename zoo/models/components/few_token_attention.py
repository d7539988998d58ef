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
"""

import torch
from torch import Tensor, nn


def _heads(projection: nn.Linear, num_heads: int, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """A ``C -> heads * d`` projection's weight as ``heads x d x C`` and its bias as ``heads x d``, in ``dtype``.

    ``dtype`` is that of the projected activations: under autocast the linear layers compute in bf16 while the
    parameters stay float32, and ``einsum`` (not an autocast op) needs both operands in one dtype.
    """
    weight = projection.weight.to(dtype).view(num_heads, -1, projection.in_features)
    return weight, projection.bias.to(dtype).view(num_heads, -1)


def image_queries_token_keys(attention: nn.Module, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Attention of many queries (``B x N x C``) to few keys and values (``B x T x C``), output ``B x N x C``.

    ``attention`` is a ``TokenAttention``: its ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` and ``num_heads``.
    """
    q_proj, k_proj, v_proj, out_proj = attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj
    num_heads = attention.num_heads
    k = k_proj(keys).unflatten(-1, (num_heads, -1))  # B x T x H x d
    v = v_proj(values).unflatten(-1, (num_heads, -1))
    q_weight, q_bias = _heads(q_proj, num_heads, k.dtype)
    head_dim = q_weight.shape[1]
    # Each key pulled back to the input space of the queries: score = x . (W_q^T k) + b_q . k. Scores are laid
    # out (token, head) so that the softmax runs over a middle axis, much faster on the CPU than over a short last one.
    keys_in_query_space = torch.einsum("bthd,hdc->bthc", k, q_weight).flatten(1, 2)  # B x (T H) x C
    key_bias = torch.einsum("bthd,hd->bth", k, q_bias).flatten(1, 2)  # B x (T H)
    scores = torch.baddbmm(key_bias[:, None], queries, keys_in_query_space.transpose(1, 2))
    weights = (scores * head_dim**-0.5).unflatten(-1, (-1, num_heads)).softmax(dim=-2)  # B x N x T x H
    # Each value pushed through its head's slice of the output projection.
    o_weight = out_proj.weight.to(v.dtype).view(out_proj.out_features, num_heads, head_dim)
    values_out = torch.einsum("bthd,chd->bthc", v, o_weight).flatten(1, 2)  # B x (T H) x C
    return torch.baddbmm(out_proj.bias, weights.flatten(2), values_out)


def token_queries_image_keys(attention: nn.Module, queries: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Attention of few queries (``B x T x C``) to many keys and values (``B x N x C``), output ``B x T x C``.

    ``attention`` is a ``TokenAttention``, as for :func:`image_queries_token_keys`.
    """
    q_proj, k_proj, v_proj, out_proj = attention.q_proj, attention.k_proj, attention.v_proj, attention.out_proj
    num_heads = attention.num_heads
    q = q_proj(queries).unflatten(-1, (num_heads, -1))  # B x T x H x d
    k_weight, k_bias = _heads(k_proj, num_heads, q.dtype)
    v_weight, v_bias = _heads(v_proj, num_heads, q.dtype)
    q = q * k_weight.shape[1] ** -0.5
    queries_in_key_space = torch.einsum("bthd,hdc->bhtc", q, k_weight).flatten(1, 2)  # B x (H T) x C
    # q . b_k is the same for every key, so the softmax cancels it; kept so that b_k stays in the autograd graph
    # (its gradient is zero either way, but distributed training expects every parameter to be used).
    query_bias = torch.einsum("bthd,hd->bht", q, k_bias).flatten(1, 2)  # B x (H T)
    scores = torch.baddbmm(query_bias[..., None], queries_in_key_space, keys.transpose(1, 2))
    weights = scores.softmax(dim=-1)  # B x (H T) x N
    pooled = (weights @ values).unflatten(1, (num_heads, -1))  # B x H x T x C
    attended = torch.einsum("bhtc,hdc->bthd", pooled, v_weight) + v_bias  # B x T x H x d
    return out_proj(attended.flatten(2))
