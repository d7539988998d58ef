"""SimpleITK's ``ResampleImageFilter`` (identity transform) in numpy, with ITK's floating-point arithmetic.

What torchio's ``Resample`` runs is ``sitk.ResampleImageFilter`` with an identity transform, a linear or
nearest-neighbour interpolator and default pixel value 0. This module reproduces it voxel for voxel
(ITK 5.4 as in SimpleITK 2.5.x):

* geometry: an image is origin / spacing / direction in LPS (:class:`ItkGeometry`), made from a RAS affine
  the way torchio's ``nib_to_sitk`` does it (spacing = column norms, direction = columns / spacing, x and y
  negated); index -> point is ``origin + (D diag(s)) @ index`` summed left to right, point -> index uses the
  SVD-based inverse of :mod:`zoo.geometry.itk_inverse`;
* scanlines: for a linear transform ITK maps the first voxel of each output row (index 0 on axis 0) and the
  voxel one past its end (index ``size[0]``) into the input, and every voxel in between at
  ``start + (i / size[0]) * (end - start)`` (``ResampleImageFilter::LinearThreadedGenerateData``);
* the input buffer covers continuous indices ``[-0.5, n - 0.5)`` on every axis; outside it the output is 0;
* nearest neighbour rounds half up (``floor(c + 0.5)``, computed as SSE2 ``round_to_even(2c + 0.5) >> 1``):
  ties go to the higher index;
* linear interpolation is ``LinearInterpolateImageFunction::EvaluateOptimized``: base index
  ``max(floor(c), 0)``, neighbours past the last voxel are dropped (the border voxel is repeated), nested
  ``a + (b - a) * d`` in double, x then y then z;
* the double result is clamped to the output type's range and converted with C++ ``static_cast`` (integers
  truncate toward zero, floats round to nearest). The output type is the input's.

Exact on x86-64 (no fused multiply-add in the wheels); ``aarch64`` builds may contract ``a + b * c`` and differ
in the last bit, which only matters for voxel centres exactly halfway between two input voxels.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from zoo.geometry.itk_inverse import itk_inverse_3x3

Interpolation = Literal["linear", "nearest"]

# Output voxels evaluated per chunk (bounds the float64 temporaries to a few hundred MB at most).
CHUNK_VOXELS = 1 << 20

# RAS <-> LPS (torchio's FLIPXY_33).
_FLIP_XY = np.diag([-1, -1, 1])


@dataclass(frozen=True)
class ItkGeometry:
    """An ITK image grid: ``size`` (x, y, z = array axes 0, 1, 2), LPS ``origin``, ``spacing``, ``direction``.

    ``index_to_point`` and ``point_to_index`` are the matrices ITK derives from them (``D diag(s)`` and its
    SVD-based inverse), as nested tuples of Python floats.
    """

    size: tuple[int, int, int]
    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    direction: tuple[tuple[float, float, float], ...]
    index_to_point: tuple[tuple[float, ...], ...] = field(init=False, repr=False)
    point_to_index: tuple[tuple[float, ...], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "size", tuple(int(n) for n in self.size))
        object.__setattr__(self, "origin", tuple(float(v) for v in self.origin))
        object.__setattr__(self, "spacing", tuple(float(v) for v in self.spacing))
        object.__setattr__(self, "direction", tuple(tuple(float(v) for v in row) for row in self.direction))
        # vnl's fixed-size product D * diag(s): every entry is D[i][j] * s[j] plus exact zeros.
        matrix = [[self.direction[i][j] * self.spacing[j] for j in range(3)] for i in range(3)]
        object.__setattr__(self, "index_to_point", tuple(tuple(row) for row in matrix))
        object.__setattr__(self, "point_to_index", tuple(tuple(row) for row in itk_inverse_3x3(matrix)))

    @classmethod
    def from_ras_affine(cls, shape: Sequence[int], affine: np.ndarray) -> ItkGeometry:
        """The grid torchio hands to SimpleITK for a ``shape`` array with this RAS affine (``nib_to_sitk``)."""
        affine = np.asarray(affine, dtype=np.float64)
        rotation_zoom = affine[:3, :3]
        spacing = np.sqrt(np.sum(rotation_zoom * rotation_zoom, axis=0))
        direction_ras = rotation_zoom / spacing
        origin_lps = np.dot(_FLIP_XY, affine[:3, 3])
        direction_lps = np.dot(_FLIP_XY, direction_ras)
        return cls(tuple(shape), tuple(origin_lps.tolist()), tuple(spacing.tolist()), tuple(map(tuple, direction_lps)))

    def ras_affine(self) -> np.ndarray:
        """The RAS affine torchio reads back from a SimpleITK image with this grid (``get_ras_affine_from_sitk``)."""
        spacing = np.array(self.spacing, dtype=np.float64)
        rotation_lps = np.array(self.direction, dtype=np.float64)
        affine = np.eye(4)
        affine[:3, :3] = np.dot(_FLIP_XY, rotation_lps) * spacing
        affine[:3, 3] = np.dot(_FLIP_XY, np.array(self.origin, dtype=np.float64))
        return affine

    def point(self, index: Sequence[float]) -> tuple[float, float, float]:
        """``TransformIndexToPhysicalPoint``: ``origin[i] + M[i][0] * index[0] + M[i][1] * index[1] + ...``."""
        out = []
        for i in range(3):
            value = self.origin[i]
            for j in range(3):
                value += self.index_to_point[i][j] * float(index[j])
            out.append(value)
        return out[0], out[1], out[2]


def _points_to_indices(
    source: ItkGeometry, points: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> list[np.ndarray]:
    """``TransformPhysicalPointToContinuousIndex`` elementwise: ``inverse @ (point - origin)``, summed from 0."""
    offsets = [points[k] - source.origin[k] for k in range(3)]
    indices = []
    for row in source.point_to_index:
        total = 0.0 + row[0] * offsets[0]
        total = total + row[1] * offsets[1]
        indices.append(total + row[2] * offsets[2])
    return indices


def _row_points(target: ItkGeometry, first: float, js: np.ndarray, ks: np.ndarray) -> tuple[np.ndarray, ...]:
    """Physical points of output voxels ``(first, j, k)`` for a ``len(js) x len(ks)`` block of rows."""
    points = []
    for i in range(3):
        m0, m1, m2 = target.index_to_point[i]
        value = target.origin[i] + m0 * first
        points.append((value + m1 * js[:, None]) + m2 * ks[None, :])
    return points[0], points[1], points[2]


def continuous_indices(
    source: ItkGeometry,
    target: ItkGeometry,
    lo: Sequence[int],
    hi: Sequence[int],
) -> Iterator[tuple[int, int, list[np.ndarray]]]:
    """Input continuous indices of the output voxels in the box ``[lo, hi)``, as ``LinearThreadedGenerateData``.

    Yields ``(i0, i1, [c0, c1, c2])`` per slab of output axis 0 (``i0 <= i < i1``); each ``c`` has shape
    ``(i1 - i0, hi[1] - lo[1], hi[2] - lo[2])``.
    """
    start, step = _row_ends(source, target, lo, hi)
    per_slab = max(1, CHUNK_VOXELS // max(1, start[0].size))
    for i0 in range(lo[0], hi[0], per_slab):
        i1 = min(hi[0], i0 + per_slab)
        alpha = _row_fractions(target, i0, i1)[:, None, None]
        yield i0, i1, [s[None] + alpha * d[None] for s, d in zip(start, step)]


def _row_ends(
    source: ItkGeometry, target: ItkGeometry, lo: Sequence[int], hi: Sequence[int]
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Per input axis, the continuous index of each output row's first voxel and its step to one past the row's
    end (``(hi[1] - lo[1]) x (hi[2] - lo[2])`` arrays): voxel ``i`` of a row is at ``start + (i / size[0]) * step``."""
    js = np.arange(lo[1], hi[1], dtype=np.float64)
    ks = np.arange(lo[2], hi[2], dtype=np.float64)
    start = _points_to_indices(source, _row_points(target, 0.0, js, ks))
    end = _points_to_indices(source, _row_points(target, float(target.size[0]), js, ks))
    return start, [e - s for e, s in zip(end, start)]


def _row_fractions(target: ItkGeometry, i0: int, i1: int) -> np.ndarray:
    """``i / size[0]`` for output indices ``i0 <= i < i1`` along axis 0."""
    return np.arange(i0, i1, dtype=np.float64) / float(target.size[0])


def _axis_lines(
    source: ItkGeometry, target: ItkGeometry, lo: Sequence[int], hi: Sequence[int]
) -> list[tuple[int, np.ndarray]] | None:
    """Per input axis, the output axis its continuous index depends on and that index along it (the values
    :func:`continuous_indices` gives every voxel), or ``None`` unless every input axis depends on exactly one
    output axis, a different one each.

    That holds between grids whose axes correspond where ITK's inverse holds exact zeros (flips, and permutations
    without its 1e-16 cross terms): an input axis with a zero step along the rows has the index ``start`` (as
    ``start + a * 0``), constant along one of the row plane's axes; the remaining one has the same start and step
    on every row, so its index is the same function of ``i`` on every row.
    """
    start, step = _row_ends(source, target, lo, hi)
    lines = []
    for s, d in zip(start, step):
        if not d.any():
            if (s == s[:, :1]).all():
                lines.append((1, s[:, 0]))
            elif (s == s[:1, :]).all():
                lines.append((2, s[0, :]))
            else:
                return None
        elif (s == s.flat[0]).all() and (d == d.flat[0]).all():
            lines.append((0, s.flat[0] + _row_fractions(target, lo[0], hi[0]) * d.flat[0]))
        else:
            return None
    if sorted(axis for axis, _ in lines) != [0, 1, 2]:
        return None
    return lines


def _separable_resample(
    values: np.ndarray, lines: list[tuple[int, np.ndarray]], out: np.ndarray, interpolation: Interpolation
) -> None:
    """:func:`resample_box`'s result written into ``out`` from :func:`_axis_lines`, one input axis at a time.

    Nearest neighbour gathers each input index once per output axis. Linear interpolation runs ITK's nested
    ``a + (b - a) * d`` as three passes, x then y then z as ITK nests them: each pass computes, on the same
    doubles, the values that every output voxel's own evaluation computes, once for all the voxels that share them.
    Outputs are written in slabs along the output axis of input axis 2, to bound the temporaries.
    """
    size = values.shape
    axes = [axis for axis, _ in lines]
    view = out.transpose(axes)  # out with its axes in input-axis order
    inside = [_inside_axis(c, n) for (_, c), n in zip(lines, size)]
    if not all(flags.any() for flags in inside):
        return
    # Outside the buffer an axis gets a stand-in coordinate inside it; those voxels are written as 0.
    coords = [np.where(flags, c, c[flags][0]) for (_, c), flags in zip(lines, inside)]
    if interpolation == "nearest":
        picks = [round_half_up(c) for c in coords]
        # One axis at a time (each a gather of whole rows or planes): the input at every (x, y) output pair, over
        # the input planes z reads.
        z0, z1 = int(picks[2].min()), int(picks[2].max()) + 1
        on_xy = values[:, :, z0:z1].take(picks[0], axis=0).take(picks[1], axis=1)
        picks[2] = picks[2] - z0
        per_output = view.shape[0] * view.shape[1]  # voxels gathered per output index along the last axis
    else:
        picks = [_linear_weights(c, n) for c, n in zip(coords, size)]
        # The first pass holds the input rows that y and z read: per output index along z, about
        # (x outputs) x (input rows spanned in y) x (input planes spanned in z per output).
        y_span, z_span = (int(b.max(initial=0)) + 2 - int(a.min(initial=0)) for a, b, _ in picks[1:])
        per_output = view.shape[0] * y_span * max(1, -(-z_span // view.shape[2]))
    per_slab = max(1, 4 * CHUNK_VOXELS // max(1, per_output))  # temporaries of at most 32 MB each
    for k0 in range(0, view.shape[2], per_slab):
        slab = slice(k0, min(view.shape[2], k0 + per_slab))
        flags = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, slab]
        if interpolation == "nearest":
            result = on_xy.take(picks[2][slab], axis=2)
        else:
            z_base, z_upper, z_weight = (part[slab] for part in picks[2])
            result = cast_like_itk(_separable_linear(values, picks[0], picks[1], (z_base, z_upper, z_weight)),
                                   values.dtype)
        view[:, :, slab] = np.where(flags, result, np.zeros((), dtype=values.dtype))


def _linear_weights(c: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ITK's base index, upper neighbour (the border voxel repeated past the last one) and weight along one axis,
    for in-buffer continuous indices ``c``."""
    b = np.maximum(np.floor(c), 0.0)
    distance = c - b
    b = b.astype(np.int64)
    has_next = b + 1 <= n - 1
    return b, np.where(has_next, b + 1, b), np.where(has_next, distance, 0.0)


def _separable_linear(
    values: np.ndarray,
    x: tuple[np.ndarray, ...],
    y: tuple[np.ndarray, ...],
    z: tuple[np.ndarray, ...],
) -> np.ndarray:
    """ITK's trilinear values on the outer product of per-axis (base, upper, weight), in double: along x on the
    input rows and columns that y and z use, then along y, then along z (the nesting of :func:`_linear`)."""
    spans = [(int(min(b.min(), u.min())), int(max(b.max(), u.max())) + 1) for b, u, _ in (x, y, z)]
    block = values[tuple(slice(a, b) for a, b in spans)]
    (x0, y0, z0) = (a for a, _ in spans)
    # Gathered in the input's type, then made double: the values _linear casts corner by corner.
    lower, upper = (block[indices - x0].astype(np.float64) for indices in x[:2])
    along_x = _lerp(lower, upper, x[2][:, None, None])
    along_y = _lerp(along_x[:, y[0] - y0], along_x[:, y[1] - y0], y[2][None, :, None])
    return _lerp(along_y[:, :, z[0] - z0], along_y[:, :, z[1] - z0], z[2][None, None, :])


def _inside(indices: list[np.ndarray], size: Sequence[int]) -> np.ndarray:
    """``ImageFunction::IsInsideBuffer``: ``-0.5 <= c < n - 0.5`` on every axis (NaN is outside)."""
    inside = np.ones(indices[0].shape, dtype=bool)
    for c, n in zip(indices, size):
        inside &= _inside_axis(c, n)
    return inside


def _inside_axis(c: np.ndarray, n: int) -> np.ndarray:
    """``-0.5 <= c < n - 0.5`` along one axis of ``n`` voxels."""
    return (c >= -0.5) & (c < (n - 1) + 0.5)


def round_half_up(c: np.ndarray) -> np.ndarray:
    """``itk::Math::Round`` on x86-64: ``round_to_even(2c + 0.5) >> 1`` (half-way values go up)."""
    return np.right_shift(np.rint(2.0 * c + 0.5).astype(np.int64), 1)


def _lerp(a: np.ndarray, b: np.ndarray, d: np.ndarray) -> np.ndarray:
    return np.where(d > 0.0, a + (b - a) * d, a)


def _linear(values: np.ndarray, indices: list[np.ndarray]) -> np.ndarray:
    """``LinearInterpolateImageFunction::EvaluateOptimized`` (3D) at in-buffer continuous indices, in double."""
    size = values.shape
    base, upper, weight = zip(*(_linear_weights(c, n) for c, n in zip(indices, size)))
    flat = values.reshape(-1)
    strides = (size[1] * size[2], size[2], 1)

    def corner(x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        return flat[x * strides[0] + y * strides[1] + z].astype(np.float64)

    x0, x1 = base[0], upper[0]
    lerp_x = {
        (y, z): _lerp(corner(x0, yi, zi), corner(x1, yi, zi), weight[0])
        for y, yi in ((0, base[1]), (1, upper[1]))
        for z, zi in ((0, base[2]), (1, upper[2]))
    }
    near = _lerp(lerp_x[0, 0], lerp_x[1, 0], weight[1])
    far = _lerp(lerp_x[0, 1], lerp_x[1, 1], weight[1])
    return _lerp(near, far, weight[2])


def cast_like_itk(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """``ResampleImageFilter::CastPixelWithBoundsChecking``: clamp a double to ``dtype``'s range, then C++ cast."""
    dtype = np.dtype(dtype)
    if dtype == np.float64:
        return values.astype(np.float64)
    if dtype.kind == "f":
        limit = float(np.finfo(dtype).max)
        return np.clip(values, -limit, limit).astype(dtype)
    info = np.iinfo(dtype)
    low, high = float(info.min), float(info.max)
    inner = np.trunc(np.where((values > low) & (values < high), values, 0.0)).astype(dtype)
    return np.where(values <= low, info.min, np.where(values >= high, info.max, inner)).astype(dtype)


def resample_box(
    values: np.ndarray,
    source: ItkGeometry,
    target: ItkGeometry,
    lo: Sequence[int],
    hi: Sequence[int],
    interpolation: Interpolation,
) -> np.ndarray:
    """SimpleITK's resampling of ``values`` (on ``source``) at the ``target`` voxels in the box ``[lo, hi)``.

    Returns an array of shape ``hi - lo`` and ``values``' dtype; voxels that map outside the input buffer are 0.
    Between grids whose axes correspond, each input index is computed once per output axis and the interpolation
    runs one axis at a time (:func:`_axis_lines`, :func:`_separable_resample`), otherwise voxel by voxel.
    """
    if tuple(values.shape) != source.size:
        raise ValueError(f"array shape {tuple(values.shape)} does not match its grid size {source.size}")
    if interpolation not in ("linear", "nearest"):
        raise ValueError(f"unknown interpolation {interpolation!r}; expected 'linear' or 'nearest'")
    shape = tuple(max(0, h - l) for l, h in zip(lo, hi))
    out = np.zeros(shape, dtype=values.dtype)
    if 0 in shape:
        return out
    lines = _axis_lines(source, target, lo, hi)
    if lines is not None:
        _separable_resample(values, lines, out, interpolation)
        return out
    flat = values.reshape(-1)  # a copy of the whole input when it is not C-ordered (nibabel's arrays)
    for i0, i1, indices in continuous_indices(source, target, lo, hi):
        inside = _inside(indices, source.size)
        if not inside.any():
            continue
        picked = [c[inside] for c in indices]
        if interpolation == "nearest":
            nearest = [round_half_up(c) for c in picked]
            flat_index = (nearest[0] * source.size[1] + nearest[1]) * source.size[2] + nearest[2]
            result = flat[flat_index]
        else:
            result = cast_like_itk(_linear(values, picked), values.dtype)
        slab = out[i0 - lo[0] : i1 - lo[0]]
        slab[inside] = result
    return out
