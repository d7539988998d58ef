"""Multi-head self-attention with decomposed relative positions, and window partitioning, for 2D and 3D token grids.

Tokens are channels-last: ``B x *grid x C``. The relative-position bias is the sum of one term per spatial axis
(MViTv2 / ViTDet style, as SAM and SAM-Med3D use) and is passed to ``scaled_dot_product_attention`` as an additive
mask, which is exactly ``softmax(q k^T / sqrt(d) + bias) v``.

``ViTBlock`` runs its attention through ``fast_window_attention`` (exact, without computing window padding)
unless ``compute_path.reference_computation()`` is active, which restores upstream's computation with
materialised zero padding: this module's ``RelPosAttention.forward`` over ``window_partition``-ed windows.
"""

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.onednn_linear import OneDNNLinear

# Parameter suffixes per spatial axis, matching the upstream key names (rel_pos_h/w in 2D, rel_pos_d/h/w in 3D).
AXIS_NAMES = {2: ("h", "w"), 3: ("d", "h", "w")}

def relative_position_table(q_size: int, k_size: int, rel_pos: Tensor) -> Tensor:
    """Gather the ``q_size x k_size x C`` table of embeddings for offsets ``q_i - k_j`` along one axis.

    A table whose length is not ``2 * max(q_size, k_size) - 1`` is linearly resized first, as upstream does.
    """
    max_rel_dist = 2 * max(q_size, k_size) - 1
    if rel_pos.shape[0] != max_rel_dist:
        rel_pos = F.interpolate(rel_pos.t()[None], size=max_rel_dist, mode="linear")[0].t()
    q_scale = max(k_size / q_size, 1.0)
    k_scale = max(q_size / k_size, 1.0)
    q_coords = torch.arange(q_size, device=rel_pos.device)[:, None] * q_scale
    k_coords = torch.arange(k_size, device=rel_pos.device)[None, :] * k_scale
    offsets = (q_coords - k_coords) + (k_size - 1) * k_scale
    return rel_pos[offsets.long()]


def decomposed_rel_pos_bias(
    q: Tensor,
    rel_pos_tables: list[Tensor],
    q_grid: tuple[int, ...],
    k_grid: tuple[int, ...],
    sam_med3d_broadcast: bool = False,
) -> Tensor:
    """Relative-position attention bias ``B x Nq x Nk`` from the UNSCALED queries ``q`` (``B x Nq x C``).

    bias[b, q, k] = sum over axes a of <q[b, q], R_a[q_a, k_a]>, with R_a from :func:`relative_position_table`.

    ``sam_med3d_broadcast`` reproduces how SAM-Med3D adds its three terms, which its released weights were trained
    with. Upstream indexes the ``B x d x h x w x k`` terms as ``rel_d[:, :, :, :, None, None]``,
    ``rel_h[:, :, :, None, :, None]`` and ``rel_w[:, :, :, None, None, :]``; broadcast against the
    ``B x d x h x w x kd x kh x kw`` scores, that adds for query (d, h, w) and key (kd, kh, kw)
    ``rel_d[d, h, w, kw] + rel_h[d, h, kd, kw] + rel_w[d, h, kh, kw]`` rather than
    ``rel_d[d, h, w, kd] + rel_h[d, h, w, kh] + rel_w[d, h, w, kw]``. It only broadcasts on cubic grids.
    """
    if sam_med3d_broadcast:
        return _sam_med3d_rel_pos_bias(q, rel_pos_tables, q_grid, k_grid)
    n = len(q_grid)
    batch, _, dim = q.shape
    grid_letters = "dhw"[-n:]
    r_q = q.reshape(batch, *q_grid, dim)
    bias = None
    for axis, table in enumerate(rel_pos_tables):
        rel = relative_position_table(q_grid[axis], k_grid[axis], table)
        term = torch.einsum(f"b{grid_letters}c,{grid_letters[axis]}kc->b{grid_letters}k", r_q, rel)
        # Place this axis' key offset at its own key-grid position; the other key axes broadcast.
        key_shape = [1] * n
        key_shape[axis] = k_grid[axis]
        term = term.reshape(batch, *q_grid, *key_shape)
        bias = term if bias is None else bias + term
    return bias.reshape(batch, math.prod(q_grid), math.prod(k_grid))


def _sam_med3d_rel_pos_bias(
    q: Tensor, rel_pos_tables: list[Tensor], q_grid: tuple[int, ...], k_grid: tuple[int, ...]
) -> Tensor:
    if len(set(q_grid) | set(k_grid)) != 1:
        raise ValueError(f"SAM-Med3D relative positions need cubic grids, got query {q_grid} and key {k_grid}")
    batch, _, dim = q.shape
    r_q = q.reshape(batch, *q_grid, dim)
    rel_d, rel_h, rel_w = (
        torch.einsum(f"bdhwc,{axis}kc->bdhwk", r_q, relative_position_table(q_grid[i], k_grid[i], table))
        for i, (axis, table) in enumerate(zip("dhw", rel_pos_tables))
    )
    bias = rel_d[:, :, :, :, None, None] + rel_h[:, :, :, None, :, None] + rel_w[:, :, :, None, None, :]
    return bias.reshape(batch, math.prod(q_grid), math.prod(k_grid))


class RelPosAttention(nn.Module):
    """Multi-head self-attention over a ``B x *grid x C`` token grid with decomposed relative positions."""

    def __init__(
        self,
        spatial_dims: int,
        dim: int,
        num_heads: int,
        qkv_bias: bool = True,
        use_rel_pos: bool = True,
        input_size: tuple[int, ...] | None = None,
        sam_med3d_broadcast: bool = False,
    ) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.sam_med3d_broadcast = sam_med3d_broadcast
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.qkv = OneDNNLinear(dim, dim * 3, bias=qkv_bias)
        self.proj = OneDNNLinear(dim, dim)
        self.use_rel_pos = use_rel_pos
        if use_rel_pos:
            if input_size is None:
                raise ValueError("relative positions need the attention grid size (input_size)")
            for name, size in zip(AXIS_NAMES[spatial_dims], input_size):
                self.register_parameter(f"rel_pos_{name}", nn.Parameter(torch.zeros(2 * size - 1, head_dim)))

    def rel_pos_tables(self) -> list[Tensor]:
        return [getattr(self, f"rel_pos_{name}") for name in AXIS_NAMES[self.spatial_dims]]

    def forward(self, x: Tensor) -> Tensor:
        batch, *grid, dim = x.shape
        num_tokens = math.prod(grid)
        qkv = self.qkv(x).reshape(batch, num_tokens, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # B x heads x N x head_dim
        bias = None
        if self.use_rel_pos:
            flat_q = q.reshape(batch * self.num_heads, num_tokens, -1)
            tables = [table.to(q.dtype) for table in self.rel_pos_tables()]  # autocast runs the einsums in q's dtype
            bias = decomposed_rel_pos_bias(flat_q, tables, tuple(grid), tuple(grid), self.sam_med3d_broadcast)
            bias = bias.view(batch, self.num_heads, num_tokens, num_tokens)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        out = out.permute(0, 2, 1, 3).reshape(batch, *grid, dim)
        return self.proj(out)


def window_partition(x: Tensor, window_size: int) -> tuple[Tensor, tuple[int, ...]]:
    """Split ``B x *grid x C`` into ``(B * num_windows) x ws^n x C`` windows, zero-padding each axis at its end.

    Upstream pads AFTER norm1 with zeros, so padded tokens still produce keys and values (the qkv bias) and
    change the result; callers must keep that behaviour to match the released weights.
    """
    batch, *grid, channels = x.shape
    n = len(grid)
    pads = [(window_size - s % window_size) % window_size for s in grid]
    if any(pads):
        pad_arg = [0, 0]
        for p in reversed(pads):
            pad_arg += [0, p]
        x = F.pad(x, pad_arg)
    padded = tuple(s + p for s, p in zip(grid, pads))
    split = [batch]
    for s in padded:
        split += [s // window_size, window_size]
    x = x.view(*split, channels)
    # (B, n1, w1, n2, w2, ...) -> (B, n1, n2, ..., w1, w2, ...)
    order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n]
    windows = x.permute(*order).reshape(-1, *([window_size] * n), channels)
    return windows, padded


def window_unpartition(windows: Tensor, window_size: int, padded: tuple[int, ...], grid: tuple[int, ...]) -> Tensor:
    """Inverse of :func:`window_partition`: reassemble windows and crop the padding away."""
    n = len(grid)
    counts = [s // window_size for s in padded]
    batch = windows.shape[0] // math.prod(counts)
    x = windows.view(batch, *counts, *([window_size] * n), -1)
    order = [0]
    for i in range(n):
        order += [1 + i, 1 + n + i]
    order.append(1 + 2 * n)
    x = x.permute(*order).reshape(batch, *padded, -1)
    if padded != tuple(grid):
        x = x[(slice(None),) + tuple(slice(0, s) for s in grid)]
    return x
