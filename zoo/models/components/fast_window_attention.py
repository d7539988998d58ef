"""Exact windowed attention that never materialises the zero padding of partial windows.

Upstream pads the token grid with zeros after ``norm1`` up to a multiple of the window size. A padded token's
query, key and value are therefore the qkv bias, the same for every padded token. A real query's logits over the
padded keys differ only through the relative-position bias, a sum of per-axis terms, so the sum of their softmax
weights factorises over axes and has a closed form. Attention over the real tokens plus ONE extra key (key = key
bias, value = value bias, mask = log of the summed bias weights) is then exactly the padded attention restricted
to real queries. Padded queries are never computed: upstream crops their outputs away.

The padded part of a window (real extent ``r`` of ``W`` per axis) is split into disjoint boxes, box ``a`` holding
the keys that are real on the axes before ``a``, padded on axis ``a`` and anything after it; every box is a
product of index sets, so its log-weight is a sum (or, for SAM-Med3D's broadcasting, a nested log-sum-exp) of
per-axis log-sum-exps. Summing positive parts in log space keeps it exact and free of cancellation.
"""

import functools
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from zoo.models.components.attention import RelPosAttention, relative_position_table
from zoo.models.components.headwise_attention import attention
from zoo.models.components.onednn_linear import passes
from zoo.models.components.weight_cache import kept_index, records_grad


@dataclass(frozen=True)
class WindowGroup:
    """A box of the unpadded grid tiled by windows that all have the same real extent per axis."""

    slices: tuple[slice, ...]
    extent: tuple[int, ...]


def window_groups(grid: Sequence[int], window: Sequence[int]) -> list[WindowGroup]:
    """Group the windows of ``grid`` by real extent: full windows and the last partial one, per axis."""
    per_axis = []
    for size, window_size in zip(grid, window):
        full, rest = divmod(size, window_size)
        choices = []
        if full:
            choices.append((slice(0, full * window_size), window_size))
        if rest:
            choices.append((slice(full * window_size, size), rest))
        per_axis.append(choices)
    return [
        WindowGroup(tuple(s for s, _ in combo), tuple(e for _, e in combo)) for combo in itertools.product(*per_axis)
    ]


def split_windows(x: Tensor, extent: Sequence[int]) -> Tensor:
    """``B x *box x C`` -> ``(B * windows) x prod(extent) x C`` for a box that ``extent`` tiles exactly."""
    batch, *box, channels = x.shape
    n = len(box)
    split = [batch]
    for size, e in zip(box, extent):
        split += [size // e, e]
    order = [0] + [1 + 2 * i for i in range(n)] + [2 + 2 * i for i in range(n)] + [1 + 2 * n]
    return x.reshape(*split, channels).permute(*order).reshape(-1, math.prod(extent), channels)


def merge_windows(windows: Tensor, extent: Sequence[int], box: Sequence[int]) -> Tensor:
    """Inverse of :func:`split_windows`: ``(B * windows) x prod(extent) x C`` -> ``B x *box x C``."""
    n = len(box)
    counts = [size // e for size, e in zip(box, extent)]
    x = windows.reshape(-1, *counts, *extent, windows.shape[-1])
    order = [0]
    for i in range(n):
        order += [1 + i, 1 + n + i]
    order.append(1 + 2 * n)
    return x.permute(*order).reshape(-1, *box, windows.shape[-1])


def broadcast_sum_mask(first: Tensor, second: Tensor, log_padded: list[Tensor]) -> Tensor:
    """The ``Bh x N x N`` bias ``first + second`` (broadcasting to ``Bh x *query grid x *key grid``), plus, when
    ``log_padded`` holds the padded boxes' log-weights (each ``Bh x *query grid``), a last column holding their
    ``log sum exp``.

    Without gradients, outside ``torch.compile``, the sum is written straight into the mask (a broadcast sum comes
    out in the inputs' layout, which the ``Bh x N x N`` view would copy, and the column would copy it all again),
    reduced precision through float32: torch's bfloat16 kernel is several times slower on these short broadcast
    rows, and the float32 sum rounded once is the same value.
    """
    shape = torch.broadcast_shapes(first.shape, second.shape)
    num_q = math.prod(shape[1 : (len(shape) + 1) // 2])
    if writes_in_place(first, second):
        mask, body = _empty_mask(first, shape[0], num_q, math.prod(shape[1:]) // num_q, log_padded)
        if first.dtype in (torch.float32, torch.float64):
            torch.add(first, second, out=body.view(shape))
        else:
            body.view(shape).copy_(torch.add(first.float(), second.float()))
        return mask
    bias = (first + second).reshape(shape[0], num_q, -1)  # autograd and inductor want it functional
    column = _padded_column(log_padded, shape[0], num_q)
    return bias if column is None else torch.cat([bias, column], dim=-1)


def writes_in_place(*terms: Tensor) -> bool:
    """Whether a mask built from ``terms`` may be written into a preallocated tensor: no gradient recorded for
    them and no ``torch.compile`` tracing (inductor fuses the functional sum)."""
    return not records_grad(*terms) and not torch.compiler.is_compiling()


def _padded_column(log_padded: list[Tensor], batch: int, num_q: int) -> Tensor | None:
    """The padded boxes' combined log-weight as a ``Bh x N x 1`` column, or None without padding."""
    if not log_padded:
        return None
    column = log_padded[0] if len(log_padded) == 1 else torch.logsumexp(torch.stack(log_padded), dim=0)
    return column.reshape(batch, num_q, 1)


def _empty_mask(like: Tensor, batch: int, num_q: int, num_k: int, log_padded: list[Tensor]) -> tuple[Tensor, Tensor]:
    """A ``Bh x N x (K + 1 if padded)`` mask with its padded column filled, and ``body``, the view of its first
    ``K`` columns, left for the caller to write."""
    column = _padded_column(log_padded, batch, num_q)
    mask = like.new_empty(batch, num_q, num_k + (column is not None))
    if column is not None:
        mask[..., -1:] = column
    return mask, mask[..., :num_k]


def _mask_by_product(term_rows: Tensor, selection: Tensor, batch: int, log_padded: list[Tensor]) -> Tensor:
    """A mask written as ONE product: ``term_rows`` (``Bh N x T``, each query's bias terms side by side) times
    ``selection`` (``T x K``, 0/1, picking each key's terms). The product sums a key's terms in float32 and rounds
    once; for reduced precision on the CPU that is several times faster than summing broadcast terms, whose rows
    are one window side long, and it rounds once where chained sums round at every step."""
    num_q = term_rows.shape[0] // batch
    mask, body = _empty_mask(term_rows, batch, num_q, selection.shape[1], log_padded)
    body.view(term_rows.shape[0], -1).addmm_(term_rows, selection, beta=0)
    return mask


def _sam_med3d_mask_by_product(a: Tensor, b: Tensor, c: Tensor, log_padded: list[Tensor], selection: Tensor) -> Tensor:
    """SAM-Med3D's bias ``a[q, kw] + b[q, kd, kw] + c[q, kh, kw]`` by :func:`_mask_by_product` (``a``:
    ``Bh x rd x rh x rw x rw``; ``b``, ``c``: ``Bh x rd x rh x rd|rh x rw``, shared by the queries of a (d, h) row;
    ``selection`` from :func:`_sam_med3d_selection`)."""
    bh, rd, rh, rw, _ = a.shape
    per_row = (bh, rd, rh, rw, -1)
    terms = torch.cat(
        [a, b.reshape(bh, rd, rh, 1, -1).expand(per_row), c.reshape(bh, rd, rh, 1, -1).expand(per_row)], dim=-1
    )
    return _mask_by_product(terms.view(bh * rd * rh * rw, -1), selection, bh, log_padded)


def _pick_matrix(picks: list[Tensor], widths: list[int], dtype: torch.dtype, device: torch.device) -> Tensor:
    """0/1 matrix ``sum(widths) x K``: for each term ``t`` (``widths[t]`` rows), key ``j`` takes row ``picks[t][j]``.
    Kept on the attention module by its callers (``kept_index``)."""
    keys = torch.arange(picks[0].numel())
    selection = torch.zeros(sum(widths), keys.numel())
    for offset, picked in zip(itertools.accumulate([0, *widths[:-1]]), picks):
        selection[offset + picked, keys] = 1.0
    return selection.to(dtype=dtype, device=device)


def _key_indices(extent: tuple[int, ...]) -> list[Tensor]:
    """Per axis, each key's index along it, keys in row-major order over ``extent``."""
    grid = torch.meshgrid(*(torch.arange(e) for e in extent), indexing="ij")
    return [index.flatten() for index in grid]


def _sam_med3d_selection(rd: int, rh: int, rw: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """Key (kd, kh, kw) takes a's kw, b's (kd, kw) and c's (kh, kw)."""
    kd, kh, kw = _key_indices((rd, rh, rw))
    return _pick_matrix([kw, kd * rw + kw, kh * rw + kw], [rw, rd * rw, rh * rw], dtype, device)


def _separable_selection(extent: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> Tensor:
    """Key (k_0, ..., k_n) takes term a's k_a, for every axis a."""
    return _pick_matrix(_key_indices(extent), list(extent), dtype, device)


def uses_product_mask(*terms: Tensor) -> bool:
    """Whether a mask of these reduced-precision CPU terms is built by :func:`_mask_by_product`: written in place
    (:func:`writes_in_place`) and the kernel found to round as relied on (:func:`product_sums_round_once`)."""
    first = terms[0]
    return (
        first.is_cpu
        and first.dtype in (torch.bfloat16, torch.float16)
        and writes_in_place(*terms)
        and product_sums_round_once(first.dtype)
    )


@functools.cache
def product_sums_round_once(dtype: torch.dtype) -> bool:
    """Whether :func:`_mask_by_product` in ``dtype`` gives each key's terms summed in float32 and rounded once, as
    the kernels relied on do (checked once per dtype, on tiny SAM-Med3D and separable masks)."""

    def check() -> bool:
        generator = torch.Generator().manual_seed(0)
        # rd 2, rh 3, rw 2: a is Bh x rd x rh x rw x rw, b Bh x rd x rh x rd x rw, c Bh x rd x rh x rh x rw
        a, b, c = (torch.randn(3, 2, 3, k, 2, generator=generator).to(dtype) for k in (2, 2, 3))
        total = a.float()[:, :, :, :, None, None, :] + b.float()[:, :, :, None, :, None, :]
        total = total + c.float()[:, :, :, None, None, :, :]
        med3d_mask = _sam_med3d_mask_by_product(a, b, c, [], _sam_med3d_selection(2, 3, 2, dtype, a.device))
        med3d = torch.equal(med3d_mask, total.to(dtype).reshape(3, 12, 12))
        rows, cols = (torch.randn(3, 2, 3, k, generator=generator).to(dtype) for k in (2, 3))  # extent 2 x 3
        selection = _separable_selection((2, 3), dtype, rows.device)
        separable = _mask_by_product(torch.cat([rows, cols], dim=-1).view(18, 5), selection, 3, [])
        expected = (rows.float()[..., :, None] + cols.float()[..., None, :]).to(dtype).reshape(3, 6, 6)
        return med3d and torch.equal(separable, expected)

    return passes(check)


def separable_mask(
    q: Tensor, tables: list[Tensor], extent: tuple[int, ...], window: tuple[int, ...], owner: nn.Module
) -> Tensor:
    """Attention mask for standard decomposed relative positions over one zero-padded window.

    ``q``: unscaled queries ``Bh x prod(extent) x c`` of the real tokens of windows of shape ``window``.
    bias[q, k] = sum_a T_a[q, k_a] with T_a[q, j] = <q, R_a[q_a, j]>. Returns ``Bh x N x N`` biases over the
    real keys, plus, when the window has padding, a last column holding ``log sum_{padded k} exp(bias[q, k])``.
    ``owner`` (the attention module) keeps the product path's selection matrices (``kept_index``).
    """
    n = len(extent)
    bh, _, dim = q.shape
    letters = "dhw"[-n:]
    grid_q = q.reshape(bh, *extent, dim)
    terms = []  # T_a: Bh x *extent x window[a]
    for axis, table in enumerate(tables):
        rel = relative_position_table(window[axis], window[axis], table.to(q.dtype))[: extent[axis]]
        terms.append(torch.einsum(f"b{letters}c,{letters[axis]}kc->b{letters}k", grid_q, rel))

    boxes = []
    if extent != window:
        real_log_weights = [torch.logsumexp(t[..., :e], dim=-1) for t, e in zip(terms, extent)]
        for axis, e in enumerate(extent):
            if e == window[axis]:
                continue
            log_weight = torch.logsumexp(terms[axis][..., e:], dim=-1)
            for other in range(n):
                if other < axis:
                    log_weight = log_weight + real_log_weights[other]
                elif other > axis:
                    log_weight = log_weight + torch.logsumexp(terms[other], dim=-1)
            boxes.append(log_weight)

    real = [term[..., :e] for term, e in zip(terms, extent)]  # each Bh x *extent x e_a
    if uses_product_mask(*real, *boxes):
        term_rows = torch.cat(real, dim=-1).view(bh * math.prod(extent), -1)
        key = ("separable_selection", extent, q.dtype, q.device)
        selection = kept_index(owner, key, lambda: _separable_selection(extent, q.dtype, q.device))
        return _mask_by_product(term_rows, selection, bh, boxes)
    # Bh x *extent (queries) x k_0 x ... x k_a, one key axis at a time; the last sum goes into the mask.
    bias = real[0]
    for axis in range(1, n - 1):
        bias = bias[..., None] + real[axis].reshape(bh, *extent, *([1] * axis), -1)
    last = real[-1].reshape(bh, *extent, *([1] * (n - 1)), -1)
    return broadcast_sum_mask(bias[..., None], last, boxes)


def sam_med3d_mask(
    q: Tensor, q_pad: Tensor, tables: list[Tensor], extent: tuple[int, ...], window: tuple[int, ...], owner: nn.Module
) -> Tensor:
    """Like :func:`separable_mask` for SAM-Med3D's broadcasting (see ``decomposed_rel_pos_bias``).

    For query (d, h, w) and key (kd, kh, kw) the bias is ``A[d,h,w,kw] + B[d,h,kd,kw] + C[d,h,kh,kw]`` with
    ``A[d,h,w,j] = <q(d,h,w), R_d[d,j]>``, ``B[d,h,i,j] = <q(d,h,i), R_h[h,j]>`` and
    ``C[d,h,i,j] = <q(d,h,i), R_w[i,j]>``: B and C read the query at another position along the w axis, which
    may be a padded one (its query is ``q_pad``, the query bias, ``Bh x c``). For a fixed kw the key terms
    separate over kd and kh, so each padded box is a log-sum-exp over kw of A plus two per-axis log-sum-exps.
    """
    if len(set(window)) != 1:
        raise ValueError(f"SAM-Med3D relative positions need cubic windows, got {window}")
    rd, rh, rw = extent
    ws = window[0]
    bh, _, dim = q.shape
    grid_q = q.reshape(bh, rd, rh, rw, dim)
    rel_d, rel_h, rel_w = (relative_position_table(ws, ws, t.to(q.dtype)) for t in tables)
    # Queries at every w index of the window (padded ones are the query bias).
    q_ext = torch.cat([grid_q, q_pad[:, None, None, None, :].expand(bh, rd, rh, ws - rw, dim)], dim=3)
    a = torch.einsum("bdhwc,dkc->bdhwk", grid_q, rel_d[:rd])  # Bh x rd x rh x rw x W(kw)
    b = torch.einsum("bdhic,hkc->bdhik", q_ext, rel_h[:rh])  # Bh x rd x rh x W(kd) x W(kw)
    c = torch.einsum("bdhic,ikc->bdhik", q_ext, rel_w)  # Bh x rd x rh x W(kh) x W(kw)

    boxes = [] if extent == window else _sam_med3d_padded_boxes(a, b, c, extent, window)
    a, b, c = a[..., :rw], b[..., :rd, :rw], c[..., :rh, :rw]  # the real keys' terms
    if uses_product_mask(a, b, c, *boxes):
        key = ("sam_med3d_selection", extent, a.dtype, a.device)
        selection = kept_index(owner, key, lambda: _sam_med3d_selection(rd, rh, rw, a.dtype, a.device))
        return _sam_med3d_mask_by_product(a, b, c, boxes, selection)
    key_terms = b[:, :, :, :, None, :] + c[:, :, :, None, :, :]  # Bh x rd x rh x kd x kh x kw
    return broadcast_sum_mask(a[:, :, :, :, None, None, :], key_terms[:, :, :, None], boxes)


def _sam_med3d_padded_boxes(
    a: Tensor, b: Tensor, c: Tensor, extent: tuple[int, ...], window: tuple[int, ...]
) -> list[Tensor]:
    """Log-weights ``Bh x rd x rh x rw`` of the padded keys of SAM-Med3D's window, one per box."""
    rd, rh, rw = extent
    ws = window[0]
    b_real = torch.logsumexp(b[..., :rd, :], dim=-2)  # Bh x rd x rh x W(kw)
    c_real = torch.logsumexp(c[..., :rh, :], dim=-2)
    # Boxes over every kw: kd padded (kh anything), or kd real and kh padded.
    all_kw = []
    if rd < ws:
        all_kw.append(torch.logsumexp(b[..., rd:, :], dim=-2) + torch.logsumexp(c, dim=-2))
    if rh < ws:
        all_kw.append(b_real + torch.logsumexp(c[..., rh:, :], dim=-2))
    boxes = []
    if all_kw:
        per_kw = all_kw[0] if len(all_kw) == 1 else torch.logaddexp(*all_kw)
        boxes.append(torch.logsumexp(a + per_kw[:, :, :, None, :], dim=-1))
    if rw < ws:  # kd and kh real, kw padded
        boxes.append(torch.logsumexp(a[..., rw:] + (b_real + c_real)[:, :, :, None, rw:], dim=-1))
    return boxes


def padded_window_attention(attn: RelPosAttention, x: Tensor, window: Sequence[int]) -> Tensor:
    """``attn`` over zero-padded windows of shape ``window`` of ``x`` (``B x *grid x C``, the ``norm1`` output).

    Equals ``window_unpartition(attn(window_partition(x)))`` cropped to ``grid`` (or ``attn(x)`` when ``window``
    is the grid), computing only the real tokens. Padded keys enter as one aggregated key.
    """
    window = tuple(window)
    batch, *grid, channels = x.shape
    heads = attn.num_heads
    head_dim = channels // heads
    window_tokens = math.prod(window)
    qkv = attn.qkv(x)
    if attn.qkv.bias is not None:
        pad_q, pad_k, pad_v = attn.qkv.bias.to(qkv.dtype).reshape(3, heads, head_dim).unbind(0)
    else:
        pad_q = pad_k = pad_v = qkv.new_zeros(heads, head_dim)
    out = qkv.new_empty(batch, *grid, channels)
    for group in window_groups(grid, window):
        box = qkv[(slice(None), *group.slices)]
        windows = split_windows(box, group.extent)  # Bw x N x 3C
        num_windows, num_tokens, _ = windows.shape
        q, k, v = windows.reshape(num_windows, num_tokens, 3, heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        padded = num_tokens < window_tokens
        mask = None
        if attn.use_rel_pos:
            flat_q = q.reshape(num_windows * heads, num_tokens, head_dim)
            tables = attn.rel_pos_tables()
            if attn.sam_med3d_broadcast:
                q_pad = pad_q.expand(num_windows, heads, head_dim).reshape(-1, head_dim)
                mask = sam_med3d_mask(flat_q, q_pad, tables, group.extent, window, owner=attn)
            else:
                mask = separable_mask(flat_q, tables, group.extent, window, owner=attn)
            mask = mask.view(num_windows, heads, num_tokens, -1)
        elif padded:  # every padded key has the same logit: log(count) adds their weights
            mask = q.new_zeros(num_windows, heads, num_tokens, num_tokens + 1)
            mask[..., -1] = math.log(window_tokens - num_tokens)
        if padded:
            k = torch.cat([k, pad_k[None, :, None, :].expand(num_windows, heads, 1, head_dim)], dim=2)
            v = torch.cat([v, pad_v[None, :, None, :].expand(num_windows, heads, 1, head_dim)], dim=2)
        attended = attention(q, k, v, mask)
        attended = attended.permute(0, 2, 1, 3).reshape(num_windows, num_tokens, channels)
        out[(slice(None), *group.slices)] = merge_windows(attended, group.extent, box.shape[1:-1])
    return attn.proj(out)
