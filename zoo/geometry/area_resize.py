"""OpenCV's ``cv2.resize(..., interpolation=cv2.INTER_AREA)`` on uint8 images, bit for bit, in numpy.

LiteMedSAM's preprocessing resizes the longest side to 256 with INTER_AREA. OpenCV computes it three ways, all
reproduced here with the same float32 / integer arithmetic in the same order:

- shrinking by integer factors on both axes: the mean of each block, ``cvRound(sum * (1.f / area))``; for 2x2
  blocks with 1, 3 or 4 channels its vector path ``(sum + 2) >> 2`` instead (rounds halves up, not to even);
- shrinking otherwise: each output pixel is the source weighted by the overlap of its cell, accumulated in float32
  first along rows, then along columns, and rounded half to even;
- enlarging on either axis: a bilinear pass whose weights come from cell overlaps (``fx = (dx + 1) - (sx + 1) / s``
  wrapped to [0, 1)), in 11-bit fixed point, the vertical step in OpenCV's 16-bit form (rows shifted right by 4,
  high halves of the products, then ``(x + 2) >> 2``), which is not the exact rounding of the weighted sum.
"""

from __future__ import annotations

import math

import numpy as np

_DBL_EPSILON = np.finfo(np.float64).eps
_COEF_BITS = 11  # INTER_RESIZE_COEF_BITS
_COEF_SCALE = 1 << _COEF_BITS


def resize_area(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """``cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)`` for a uint8 ``H x W`` or ``H x W x C``."""
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected a uint8 H x W or H x W x C image, got {image.dtype} with shape {image.shape}")
    if height < 1 or width < 1 or image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"cannot resize {image.shape[:2]} to {(height, width)}: sizes must be positive")
    planar = image.ndim == 2
    src = image[:, :, None] if planar else image
    src_h, src_w = src.shape[:2]
    inv_scale_x, inv_scale_y = width / src_w, height / src_h
    scale_x, scale_y = 1.0 / inv_scale_x, 1.0 / inv_scale_y
    if (height, width) == (src_h, src_w):
        out = src.copy()
    elif scale_x >= 1 and scale_y >= 1:
        iscale_x, iscale_y = _round_half_even(scale_x), _round_half_even(scale_y)
        if abs(scale_x - iscale_x) < _DBL_EPSILON and abs(scale_y - iscale_y) < _DBL_EPSILON:
            out = _shrink_integer(src, iscale_x, iscale_y, height, width)
        else:
            out = _shrink_area(src, scale_x, scale_y, height, width)
    else:
        out = _enlarge(src, scale_x, scale_y, inv_scale_x, inv_scale_y, height, width)
    return out[:, :, 0] if planar else out


def _round_half_even(value: float) -> int:
    return int(np.rint(value))


# ------------------------------------------------------------------------------------------- integer shrink


def _shrink_integer(src: np.ndarray, fx: int, fy: int, height: int, width: int) -> np.ndarray:
    """Block means over ``fy x fx`` blocks (the output covers whole blocks only, as the factors divide the sizes)."""
    channels = src.shape[2]
    blocks = src[: height * fy, : width * fx].astype(np.int32).reshape(height, fy, width, fx, channels)
    sums = blocks.sum(axis=(1, 3))
    if fx == 2 and fy == 2 and channels in (1, 3, 4):
        return ((sums + 2) >> 2).astype(np.uint8)
    scale = np.float32(1.0) / np.float32(fx * fy)
    return _saturate_uint8(np.rint(sums.astype(np.float32) * scale))


# ------------------------------------------------------------------------------------------- general shrink


def _area_table(src_size: int, dst_size: int, scale: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """OpenCV's ``computeResizeAreaTab``: ``(dst index, src index, float32 weight)`` in accumulation order."""
    dst_index, src_index, weights = [], [], []
    for d in range(dst_size):
        start = d * scale
        stop = start + scale
        cell = min(scale, src_size - start)
        first, last = math.ceil(start), math.floor(stop)
        last = min(last, src_size - 1)
        first = min(first, last)
        if first - start > 1e-3:
            dst_index.append(d), src_index.append(first - 1), weights.append((first - start) / cell)
        for s in range(first, last):
            dst_index.append(d), src_index.append(s), weights.append(1.0 / cell)
        if stop - last > 1e-3:
            dst_index.append(d), src_index.append(last), weights.append(min(min(stop - last, 1.0), cell) / cell)
    return np.array(dst_index), np.array(src_index), np.array(weights, dtype=np.float64).astype(np.float32)


def _accumulate(
    values: np.ndarray, table: tuple[np.ndarray, np.ndarray, np.ndarray], axis: int, size: int
) -> np.ndarray:
    """``out[d] += values[s] * w`` along ``axis`` for the table's entries in order, in float32.

    Entries of one output index are contiguous; the j-th entries of all outputs are added in one step, which keeps
    every output's order of additions.
    """
    dst_index, src_index, weights = table
    starts = np.flatnonzero(np.r_[True, dst_index[1:] != dst_index[:-1]])
    counts = np.diff(np.r_[starts, len(dst_index)])
    moved = np.moveaxis(values, axis, 0)
    out = np.zeros((size, *moved.shape[1:]), dtype=np.float32)
    for j in range(int(counts.max())):
        entries = starts[counts > j] + j
        weight = weights[entries].reshape(-1, *([1] * (moved.ndim - 1)))
        out[dst_index[entries]] = out[dst_index[entries]] + moved[src_index[entries]] * weight
    return np.moveaxis(out, 0, axis)


def _shrink_area(src: np.ndarray, scale_x: float, scale_y: float, height: int, width: int) -> np.ndarray:
    src_h, src_w = src.shape[:2]
    # Each source row used by the vertical table gets the horizontal pass (``buf``), then rows are summed (``sum``).
    rows = _accumulate(src.astype(np.float32), _area_table(src_w, width, scale_x), axis=1, size=width)
    out = _accumulate(rows, _area_table(src_h, height, scale_y), axis=0, size=height)
    return _saturate_uint8(np.rint(out))


# ------------------------------------------------------------------------------------------------- enlarge


def _linear_taps(src_size: int, dst_size: int, scale: float, inv_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """First source index and the two 11-bit weights per output index (OpenCV's area-mode bilinear coefficients)."""
    index = np.empty(dst_size, dtype=np.int64)
    weights = np.empty((dst_size, 2), dtype=np.int64)
    for d in range(dst_size):
        s = math.floor(d * scale)
        f = np.float32((d + 1) - (s + 1) * inv_scale)
        f = np.float32(0.0) if f <= 0 else np.float32(f - np.float32(math.floor(f)))
        if s >= src_size - 1:
            s, f = src_size - 1, np.float32(0.0)
        index[d] = s
        weights[d] = [
            _round_half_even(np.float32(np.float32(1.0) - f) * np.float32(_COEF_SCALE)),
            _round_half_even(f * np.float32(_COEF_SCALE)),
        ]
    return index, weights


def _enlarge(
    src: np.ndarray, scale_x: float, scale_y: float, inv_x: float, inv_y: float, height: int, width: int
) -> np.ndarray:
    src_h, src_w, channels = src.shape
    x_index, x_weights = _linear_taps(src_w, width, scale_x, inv_x)
    y_index, y_weights = _linear_taps(src_h, height, scale_y, inv_y)
    pixels = src.astype(np.int64)
    right = np.minimum(x_index + 1, src_w - 1)
    rows = pixels[:, x_index] * x_weights[None, :, 0, None] + pixels[:, right] * x_weights[None, :, 1, None]
    top = rows[y_index].reshape(height, width * channels)
    bottom = rows[np.minimum(y_index + 1, src_h - 1)].reshape(height, width * channels)
    b0, b1 = y_weights[:, 0, None], y_weights[:, 1, None]
    # OpenCV's vertical step: 16-bit products of the rows shifted right by 4, keeping the high halves, then
    # (x + 2) >> 2; not the exact (top * b0 + bottom * b1 + 2^21) >> 22.
    out = ((((top >> 4) * b0) >> 16) + (((bottom >> 4) * b1) >> 16) + 2) >> 2
    return _saturate_uint8(out).reshape(height, width, channels)


def _saturate_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(values, 0, 255).astype(np.uint8)
