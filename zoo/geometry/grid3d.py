"""SAM-Med3D's 3D geometry exactly as the authors' torchio pipeline computes it, without torchio.

Upstream inference (``utils/infer_utils.py``) runs ``tio.Resample(1.5)`` -> ``tio.ToCanonical()`` ->
``tio.CropOrPad(128, mask_name='label')`` -> model -> ``tio.Resample(original image)`` (nearest) of the 128^3
mask. Each step here is a pure function of shapes, affines and arrays that gives the same numbers:

* :func:`plan_resample` (check sizes first, then) :func:`torchio_resample_grid`: torchio keeps the field of
  view's *centre*: ``floor(n * spacing / target)`` voxels per axis centred on the old centre, so the first new
  centre sits half a new voxel before the old first centre when the ratio is 2 (MONAI's ``Spacingd`` starts on
  the old first centre instead, which shifts everything downstream);
* :func:`canonical_grid` / :class:`Reorientation`: ``ToCanonical`` (nibabel's axis codes and
  ``inv_ornt_aff``; an image already RAS is left alone);
* :func:`resample`: SimpleITK's linear (images) or nearest (labels) interpolation onto the canonical grid or a
  window of it, in the input's dtype (int16 CT stays int16: linear values are truncated toward zero, as ITK's
  cast does), see :mod:`zoo.geometry.itk_resample`;
* :func:`resampled_bbox`, :func:`crop_window`, :class:`CropWindow`: ``CropOrPad``'s window around the target's
  bounding box (or the volume's centre), its zero padding and its affine;
* :func:`paste_back_nearest`: the crop-space mask onto the original grid with ITK's nearest-neighbour rule
  (ties go to the higher crop index, decided in ITK's floating-point arithmetic), 0 outside the crop.

Arrays are in file (nibabel / torchio) index order ``i, j, k``; affines are 4x4 RAS index-to-world, float64.

Typical use by a processor::

    plan = plan_resample(image.shape, image.affine, 1.5, path=path)        # image = nibabel.load(path)
    voxels = torchio_voxels(image.dataobj.get_unscaled(), image.dataobj.slope, image.dataobj.inter)
    window = crop_window(plan.canonical.shape, 128, resampled_bbox(label, plan))
    roi = resample(voxels, plan, "linear", window)          # 128^3, zero padding outside the volume
    roi_affine = window.affine(plan.canonical.affine)
    ... model ...
    mask = paste_back_nearest(roi_mask, roi_affine, plan.source.shape, plan.source.affine)
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from os import PathLike
from typing import Literal

import numpy as np
from nibabel import orientations
from nibabel.affines import apply_affine

from zoo.errors import DataError
from zoo.geometry.itk_resample import Interpolation, ItkGeometry, resample_box

Triple = tuple[int, int, int]
Box = tuple[Triple, Triple]

# Default ceiling for one resampled volume: 2 GiB (a 1.5 mm whole body is ~50 MB as int16).
DEFAULT_MAX_BYTES = 2 << 30
# Default smallest resampled size per axis that SAM-Med3D can use: one 16-voxel patch of its ViT.
DEFAULT_MIN_SIZE = 16


class SmallVolumeWarning(UserWarning):
    """The resampled volume is smaller than the model can sensibly use (mostly padding in its crop)."""


# --------------------------------------------------------------------------------------------- grids
@dataclass(frozen=True)
class Grid3D:
    """A voxel grid: spatial ``shape`` and its 4x4 RAS index-to-world ``affine`` (float64, not writable)."""

    shape: Triple
    affine: np.ndarray

    def __post_init__(self) -> None:
        shape = tuple(int(n) for n in self.shape)
        affine = np.array(self.affine, dtype=np.float64)
        if len(shape) != 3 or affine.shape != (4, 4):
            raise ValueError(f"a 3D grid needs 3 sizes and a 4x4 affine, got {shape} and {affine.shape}")
        affine.setflags(write=False)
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "affine", affine)

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm per array axis (column norms of the affine, as torchio and nibabel compute it)."""
        zooms = np.sqrt(np.sum(self.affine[:3, :3] ** 2, axis=0))
        return float(zooms[0]), float(zooms[1]), float(zooms[2])


def _target_spacing(target: float | Sequence[float]) -> tuple[float, float, float]:
    values = (float(target),) * 3 if np.ndim(target) == 0 else tuple(float(v) for v in np.ravel(target))
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"target spacing must be one or three positive numbers, got {target!r}")
    return values  # type: ignore[return-value]


def _resampled_geometry(source: ItkGeometry, target_spacing: tuple[float, float, float]) -> ItkGeometry:
    """torchio's ``Resample.get_reference_image``: same direction, centre kept, ``floor`` of the extent."""
    old_spacing = np.array(source.spacing, dtype=float)
    new_spacing = np.array(target_spacing, dtype=float)
    old_size = np.array(source.size)
    old_last_lps = np.array(source.point((old_size - 1).tolist()), dtype=float)
    centre_lps = (old_last_lps + np.array(source.origin, dtype=float)) / 2
    new_size = np.floor(old_size * old_spacing / new_spacing)
    new_size[old_size == 1] = 1
    direction = np.asarray(source.direction, dtype=float).reshape(3, 3)
    half_extent = (new_size - 1) / 2 * new_spacing
    new_origin = (centre_lps - direction @ half_extent).tolist()
    return ItkGeometry(tuple(new_size.astype(int).tolist()), new_origin, new_spacing.tolist(), source.direction)


def torchio_resample_grid(shape: Sequence[int], affine: np.ndarray, target_spacing: float | Sequence[float]) -> Grid3D:
    """The grid ``tio.Resample(target_spacing)`` resamples a ``shape`` image with this ``affine`` onto.

    The new grid keeps the old direction and the centre of the old first-to-last voxel centres; it has
    ``floor(n * spacing / target)`` voxels per axis (1 where the old axis had 1). An axis can get 0 voxels
    (e.g. 2 voxels of 0.5 mm at 1.5 mm), which torchio cannot resample; :func:`plan_resample` refuses it.
    """
    source = ItkGeometry.from_ras_affine(shape, np.asarray(affine, dtype=np.float64))
    target = _resampled_geometry(source, _target_spacing(target_spacing))
    return Grid3D(target.size, target.ras_affine())


# --------------------------------------------------------------------------------------------- ToCanonical
@dataclass(frozen=True)
class Reorientation:
    """``ToCanonical`` as an axis permutation with flips.

    Array axis ``a`` of the ``source_shape`` grid becomes canonical axis ``axes[a]``, reversed where
    ``flips[a]`` (nibabel's orientation transform); the identity when the affine is already RAS.
    """

    source_shape: Triple
    axes: Triple
    flips: tuple[bool, bool, bool]

    @property
    def shape(self) -> Triple:
        """Shape of the canonical grid."""
        out = [0, 0, 0]
        for axis, target in enumerate(self.axes):
            out[target] = self.source_shape[axis]
        return out[0], out[1], out[2]

    @property
    def is_identity(self) -> bool:
        return self.axes == (0, 1, 2) and not any(self.flips)

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Reorient the last three axes of ``array`` (a source-grid array or a box cut from one)."""
        lead = array.ndim - 3
        flipped = [lead + a for a, flip in enumerate(self.flips) if flip]
        if flipped:
            array = np.flip(array, axis=flipped)
        order = list(range(lead)) + [lead + a for a in np.argsort(self.axes)]
        return np.ascontiguousarray(np.transpose(array, order))

    def source_box(self, lo: Sequence[int], hi: Sequence[int]) -> Box:
        """The source-grid box whose reoriented values fill the canonical box ``[lo, hi)``."""
        src_lo, src_hi = [0, 0, 0], [0, 0, 0]
        for axis, target in enumerate(self.axes):
            n = self.source_shape[axis]
            if self.flips[axis]:
                src_lo[axis], src_hi[axis] = n - hi[target], n - lo[target]
            else:
                src_lo[axis], src_hi[axis] = lo[target], hi[target]
        return (src_lo[0], src_lo[1], src_lo[2]), (src_hi[0], src_hi[1], src_hi[2])

    def canonical_index(self, index: Sequence[int]) -> Triple:
        """Canonical index of the source voxel ``index``."""
        out = [0, 0, 0]
        for axis, target in enumerate(self.axes):
            value = int(index[axis])
            out[target] = self.source_shape[axis] - 1 - value if self.flips[axis] else value
        return out[0], out[1], out[2]


def canonical_grid(grid: Grid3D) -> tuple[Grid3D, Reorientation]:
    """``tio.ToCanonical`` of a grid: the RAS-closest grid and the reorientation that gets there."""
    codes = orientations.aff2axcodes(grid.affine)
    if "".join(str(c) for c in codes) == "RAS":
        return grid, Reorientation(grid.shape, (0, 1, 2), (False, False, False))
    transform = orientations.ornt_transform(orientations.io_orientation(grid.affine), orientations.axcodes2ornt("RAS"))
    affine = grid.affine @ orientations.inv_ornt_aff(transform, grid.shape)
    axes = tuple(int(a) for a in transform[:, 0])
    flips = tuple(bool(f == -1) for f in transform[:, 1])
    reorientation = Reorientation(grid.shape, axes, flips)  # type: ignore[arg-type]
    return Grid3D(reorientation.shape, affine), reorientation


# --------------------------------------------------------------------------------------------- planning
@dataclass(frozen=True)
class ResamplePlan:
    """Where a volume goes before any voxel is touched (from :func:`plan_resample`).

    ``source``: the file's grid; ``resampled``: ``tio.Resample``'s output grid (source orientation);
    ``canonical``: that grid after ``tio.ToCanonical`` (crops are cut from it); ``nbytes``: one resampled
    volume at ``itemsize`` bytes per voxel.
    """

    source: Grid3D
    resampled: Grid3D
    canonical: Grid3D
    reorientation: Reorientation
    source_geometry: ItkGeometry
    resampled_geometry: ItkGeometry
    itemsize: int
    path: str | None = None

    @property
    def voxels(self) -> int:
        return math.prod(self.canonical.shape)

    @property
    def nbytes(self) -> int:
        return self.voxels * self.itemsize


def _format_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if n < 1024 or unit == "PiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    raise AssertionError("unreachable")


def plan_resample(
    shape: Sequence[int],
    affine: np.ndarray,
    target_spacing: float | Sequence[float] = 1.5,
    *,
    path: str | PathLike[str] | None = None,
    itemsize: int = 4,
    max_bytes: int = DEFAULT_MAX_BYTES,
    min_size: int = DEFAULT_MIN_SIZE,
    on_small: Literal["warn", "raise", "ignore"] = "warn",
) -> ResamplePlan:
    """Grids of the SAM-Med3D pipeline for a ``shape`` volume with this ``affine``, checked before allocation.

    Raises :class:`~zoo.errors.DataError` naming ``path``, its spacing and the resampled size when one
    resampled volume would need more than ``max_bytes`` (at ``itemsize`` bytes per voxel), or when an axis
    would get no voxel at all. A resampled axis shorter than ``min_size`` voxels (default: one 16-voxel ViT
    patch; the 128^3 crop is then almost all padding) gives a :class:`SmallVolumeWarning`, or a ``DataError``
    with ``on_small="raise"``; upstream runs such volumes silently. Singleton axes (2D images) count as short.
    """
    where = str(path) if path is not None else "<volume>"
    shape = tuple(int(n) for n in shape)
    affine = np.asarray(affine, dtype=np.float64)
    if len(shape) != 3 or any(n < 1 for n in shape):
        raise DataError(where, f"expected a 3D volume with at least one voxel per axis, got shape {shape}")
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(where, f"invalid affine (not finite or singular):\n{affine}")
    target = _target_spacing(target_spacing)
    source = Grid3D(shape, affine)
    source_geometry = ItkGeometry.from_ras_affine(shape, affine)
    spacing = ", ".join(f"{s:.4g}" for s in source_geometry.spacing)
    goal = ", ".join(f"{s:.4g}" for s in target)
    # The same float arithmetic as the grid, without building it (sizes can be astronomically large).
    sizes = np.floor(np.array(shape) * np.array(source_geometry.spacing) / np.array(target))
    sizes[np.array(shape) == 1] = 1
    voxels = float(np.prod(sizes))
    needed = voxels * itemsize
    size_text = " x ".join(f"{int(n)}" for n in sizes)
    if (sizes < 1).any():
        raise DataError(
            where,
            f"spacing ({spacing}) mm x shape {shape} resampled to ({goal}) mm gives {size_text} voxels: "
            "an axis shorter than one target voxel cannot be resampled",
        )
    if needed > max_bytes:
        raise DataError(
            where,
            f"spacing ({spacing}) mm x shape {shape} resampled to ({goal}) mm needs a {size_text} grid "
            f"({voxels:.3g} voxels, {_format_bytes(needed)} at {itemsize} bytes per voxel), over the limit of "
            f"{_format_bytes(max_bytes)}; check the file's spacing or raise max_bytes",
        )
    resampled_geometry = _resampled_geometry(source_geometry, target)
    resampled = Grid3D(resampled_geometry.size, resampled_geometry.ras_affine())
    canonical, reorientation = canonical_grid(resampled)
    if min(resampled.shape) < min_size and on_small != "ignore":
        problem = (
            f"spacing ({spacing}) mm x shape {shape} resampled to ({goal}) mm is only {size_text} voxels, "
            f"under {min_size} on an axis: the model's crop would be mostly padding"
        )
        if on_small == "raise":
            raise DataError(where, problem)
        warnings.warn(f"{where}: {problem}", SmallVolumeWarning, stacklevel=2)
    return ResamplePlan(source, resampled, canonical, reorientation, source_geometry, resampled_geometry, itemsize,
                        None if path is None else str(path))


# --------------------------------------------------------------------------------------------- voxel types
def _itk_scaling(scl_slope: float | None, scl_inter: float | None) -> tuple[float, float, bool]:
    """ITK's NIfTI reader: non-finite header values read as 0, a zero slope as 1; rescale unless ``1 x + 0``."""
    slope = 0.0 if scl_slope is None or not math.isfinite(scl_slope) else float(scl_slope)
    inter = 0.0 if scl_inter is None or not math.isfinite(scl_inter) else float(scl_inter)
    eps = float(np.finfo(np.float64).eps)
    if abs(slope) < eps:
        slope = 1.0
    return slope, inter, abs(slope) > eps and (abs(slope - 1.0) > eps or abs(inter) > eps)


def torchio_dtype(stored: np.dtype | type, scl_slope: float | None = None, scl_inter: float | None = None) -> np.dtype:
    """The dtype torchio holds (and resamples in) for NIfTI voxels stored as ``stored`` with this scaling.

    SimpleITK reads integers scaled by ``scl_slope``/``scl_inter`` (slope not 0 or 1, or intercept not 0) as
    float32, other voxels as stored; torchio then widens uint16 to int32 and uint32 to int64 (and bool to uint8).
    """
    dtype = np.dtype(stored)
    if _itk_scaling(scl_slope, scl_inter)[2] and dtype.kind in "iu":
        return np.dtype(np.float32)
    return _torch_compatible(dtype)


def torchio_voxels(stored: np.ndarray, scl_slope: float | None = None, scl_inter: float | None = None) -> np.ndarray:
    """The voxels torchio resamples, from a nibabel image's ``dataobj.get_unscaled()``, ``dataobj.slope``, ``.inter``.

    When the header scales, ITK computes ``value * slope + intercept`` in double and stores it as float32 for
    integer files (as the stored float type otherwise); see :func:`torchio_dtype` for the resulting dtype.
    nibabel's ``dataobj.slope``/``.inter`` give the same result except for a header with slope 0 and a non-zero
    intercept (ITK applies the intercept, nibabel drops it): pass the raw header fields to match that too.
    """
    values = np.asarray(stored)
    slope, inter, rescaled = _itk_scaling(scl_slope, scl_inter)
    if not rescaled:
        return values.astype(_torch_compatible(values.dtype), copy=False)
    dtype = torchio_dtype(values.dtype, scl_slope, scl_inter)
    return (values.astype(dtype).astype(np.float64) * slope + inter).astype(dtype)


def _torch_compatible(dtype: np.dtype) -> np.dtype:
    return {np.dtype(np.uint16): np.dtype(np.int32), np.dtype(np.uint32): np.dtype(np.int64),
            np.dtype(bool): np.dtype(np.uint8)}.get(np.dtype(dtype), np.dtype(dtype))


# --------------------------------------------------------------------------------------------- resampling
def _clip_box(lo: Sequence[int], hi: Sequence[int], shape: Sequence[int]) -> Box:
    a = tuple(min(max(int(l), 0), n) for l, n in zip(lo, shape))
    b = tuple(min(max(int(h), 0), n) for h, n in zip(hi, shape))
    b = tuple(max(x, y) for x, y in zip(a, b))
    return a, b  # type: ignore[return-value]


def _resample_canonical_box(values: np.ndarray, plan: ResamplePlan, lo: Triple, hi: Triple,
                            interpolation: Interpolation) -> np.ndarray:
    src_lo, src_hi = plan.reorientation.source_box(lo, hi)
    box = resample_box(values, plan.source_geometry, plan.resampled_geometry, src_lo, src_hi, interpolation)
    return plan.reorientation.apply(box)


def resample(
    array: np.ndarray,
    plan: ResamplePlan,
    interpolation: Interpolation,
    window: CropWindow | None = None,
) -> np.ndarray:
    """``tio.Resample`` + ``tio.ToCanonical`` (+ ``tio.CropOrPad`` when ``window`` is given) of a source array.

    ``interpolation``: ``"linear"`` for a ``ScalarImage``, ``"nearest"`` for a ``LabelMap``. ``array`` is on
    ``plan.source`` in the dtype torchio holds (see :func:`torchio_dtype`; uint16/uint32/bool are widened
    here as torchio does); the result keeps that dtype. With a ``window``, only its voxels are computed and
    the part outside the canonical grid is 0 (``CropOrPad``'s padding), so a 128^3 crop costs 128^3 voxels
    whatever the volume's size.
    """
    values = np.ascontiguousarray(array, dtype=_torch_compatible(np.asarray(array).dtype))
    if values.shape != plan.source.shape:
        raise ValueError(f"array shape {values.shape} is not the plan's source shape {plan.source.shape}")
    if window is None:
        return _resample_canonical_box(values, plan, (0, 0, 0), plan.canonical.shape, interpolation)
    if window.source_shape != plan.canonical.shape:
        raise ValueError(
            f"window is for a {window.source_shape} grid, the plan's canonical grid is {plan.canonical.shape}"
        )
    lo, hi = _clip_box(window.start, window.stop, plan.canonical.shape)
    out = np.zeros(window.size, dtype=values.dtype)
    if all(b > a for a, b in zip(lo, hi)):
        inner = _resample_canonical_box(values, plan, lo, hi, interpolation)
        at = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, window.start))
        out[at] = inner
    return out


def _world_box(corners_world: np.ndarray, grid_affine: np.ndarray, shape: Sequence[int], margin: int) -> Box:
    """Index box of ``shape`` that holds the given world points, widened by ``margin`` voxels and clipped."""
    indices = apply_affine(np.linalg.inv(grid_affine), corners_world)
    lo = np.floor(indices.min(axis=0)).astype(int) - margin
    hi = np.ceil(indices.max(axis=0)).astype(int) + 1 + margin
    return _clip_box(lo, hi, shape)


def nonzero_extent(values: np.ndarray) -> tuple[list[int], list[int]] | None:
    """First and last index per axis of the non-zero voxels of a 3D array, or ``None`` if there are none (in numpy:
    MONAI's ``generate_spatial_bounding_box`` does the same with torch, which this module must not import)."""
    first, last = [], []
    for axis in range(3):
        occupied = np.flatnonzero(np.any(values, axis=tuple(a for a in range(3) if a != axis)))
        if occupied.size == 0:
            return None
        first.append(int(occupied[0]))
        last.append(int(occupied[-1]))
    return first, last


def _buffer_corners(lo: Sequence[float], hi: Sequence[float]) -> np.ndarray:
    return np.array([[(lo, hi)[b][axis] for axis, b in enumerate(bits)]
                     for bits in np.ndindex(2, 2, 2)], dtype=np.float64)


def resampled_bbox(label: np.ndarray, plan: ResamplePlan) -> Box | None:
    """Bounding box ``[lo, hi)`` on ``plan.canonical`` of ``label != 0`` after nearest resampling, or ``None``.

    What ``CropOrPad(mask_name=...)`` centres on; only the neighbourhood of the label is resampled.
    """
    values = np.ascontiguousarray(label, dtype=_torch_compatible(np.asarray(label).dtype))
    if values.shape != plan.source.shape:
        raise ValueError(f"label shape {values.shape} is not the plan's source shape {plan.source.shape}")
    occupied = nonzero_extent(values)
    if occupied is None:
        return None
    first, last = occupied
    corners = apply_affine(plan.source.affine, _buffer_corners([v - 1 for v in first], [v + 1 for v in last]))
    box_lo, box_hi = _world_box(corners, plan.resampled.affine, plan.resampled.shape, margin=2)
    box = resample_box(values, plan.source_geometry, plan.resampled_geometry, box_lo, box_hi, "nearest")
    found = nonzero_extent(box)
    if found is None:
        return None
    first = [v + o for v, o in zip(found[0], box_lo)]
    last = [v + o for v, o in zip(found[1], box_lo)]
    a = plan.reorientation.canonical_index(first)
    b = plan.reorientation.canonical_index(last)
    return (
        (min(a[0], b[0]), min(a[1], b[1]), min(a[2], b[2])),
        (max(a[0], b[0]) + 1, max(a[1], b[1]) + 1, max(a[2], b[2]) + 1),
    )


# --------------------------------------------------------------------------------------------- CropOrPad
@dataclass(frozen=True)
class CropWindow:
    """A ``size`` window of a ``source_shape`` grid whose first voxel is source index ``start``.

    Negative starts and ends past the grid are zero padding. ``padding``/``cropping`` are torchio's
    ``(axis0 lo, axis0 hi, axis1 lo, axis1 hi, axis2 lo, axis2 hi)`` parameters of the same window.
    """

    start: Triple
    size: Triple
    source_shape: Triple

    @property
    def stop(self) -> Triple:
        return tuple(s + n for s, n in zip(self.start, self.size))  # type: ignore[return-value]

    @property
    def padding(self) -> tuple[int, ...]:
        bounds = zip(self.start, self.stop, self.source_shape)
        return tuple(v for s, e, n in bounds for v in (max(0, -s), max(0, e - n)))

    @property
    def cropping(self) -> tuple[int, ...]:
        bounds = zip(self.start, self.stop, self.source_shape)
        return tuple(v for s, e, n in bounds for v in (max(0, s), max(0, n - e)))

    def affine(self, source_affine: np.ndarray) -> np.ndarray:
        """The window's affine, with torchio's arithmetic (``Pad`` moves the origin first, then ``Crop``)."""
        affine = np.array(source_affine, dtype=np.float64)
        padding, cropping = self.padding, self.cropping
        if any(padding):
            padded = affine.copy()
            padded[:3, 3] = apply_affine(affine, -np.array(padding[::2]))
            affine = padded
        if any(cropping):
            cropped = affine.copy()
            cropped[:3, 3] = apply_affine(affine, np.array(cropping[::2]))
            affine = cropped
        return affine

    def apply(self, array: np.ndarray, fill: float = 0) -> np.ndarray:
        """Cut the window from the last three axes of a ``source_shape`` array, ``fill`` outside it."""
        if tuple(array.shape[-3:]) != self.source_shape:
            raise ValueError(f"array shape {array.shape} does not end with the window's grid {self.source_shape}")
        out = np.full(array.shape[:-3] + self.size, fill, dtype=array.dtype)
        lo, hi = _clip_box(self.start, self.stop, self.source_shape)
        if all(b > a for a, b in zip(lo, hi)):
            src = (...,) + tuple(slice(a, b) for a, b in zip(lo, hi))
            dst = (...,) + tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, self.start))
            out[dst] = array[src]
        return out


def _as_size(size: int | Sequence[int]) -> Triple:
    values = (int(size),) * 3 if np.ndim(size) == 0 else tuple(int(s) for s in np.ravel(size))
    if len(values) != 3 or any(s < 1 for s in values):
        raise ValueError(f"crop size must be one or three positive integers, got {size!r}")
    return values  # type: ignore[return-value]


def crop_window(source_shape: Sequence[int], size: int | Sequence[int], bbox: Box | None = None) -> CropWindow:
    """``tio.CropOrPad(size, mask_name=...)``'s window on a ``source_shape`` grid.

    With ``bbox`` (``[lo, hi)`` of the target, e.g. from :func:`resampled_bbox`) the window is centred on
    ``(lo + hi) / 2``, half-voxel centres rounded down, i.e. ``start = floor((lo + hi) / 2 - size / 2)``.
    Without it (torchio's fallback for an empty mask, and its ``mask_name=None`` mode) the window is centred on
    the volume, the odd voxel of cropping or padding going before: ``start = ceil((n - size) / 2)`` when
    cropping, ``-ceil((size - n) / 2)`` when padding.
    """
    shape = tuple(int(n) for n in source_shape)
    sizes = _as_size(size)
    start = []
    for axis, (n, target) in enumerate(zip(shape, sizes)):
        if bbox is None:
            start.append(math.ceil((n - target) / 2) if n >= target else -math.ceil((target - n) / 2))
            continue
        centre = (bbox[0][axis] + bbox[1][axis]) / 2
        if (target % 2 == 0) != (centre % 1 == 0):
            centre -= 0.5
        start.append(int(centre - target / 2))
    return CropWindow((start[0], start[1], start[2]), sizes, (shape[0], shape[1], shape[2]))


# --------------------------------------------------------------------------------------------- paste back
def paste_back_nearest(
    mask: np.ndarray,
    crop_affine: np.ndarray,
    original_shape: Sequence[int],
    original_affine: np.ndarray,
) -> np.ndarray:
    """A crop-space array resampled (nearest) onto the original grid, as upstream's ``data_postprocess``.

    That is ``tio.Resample(reference)`` of a ``LabelMap`` with ``crop_affine``: SimpleITK's nearest neighbour
    with ties to the higher crop index, in ITK's arithmetic; voxels whose centre falls outside the crop's buffer
    (``[-0.5, n - 0.5)`` in crop indices) are 0. Returns ``mask``'s dtype on ``original_shape``.
    """
    values = np.ascontiguousarray(mask, dtype=_torch_compatible(np.asarray(mask).dtype))
    if values.ndim != 3:
        raise ValueError(f"expected a 3D crop, got shape {values.shape}")
    shape = tuple(int(n) for n in original_shape)
    source = ItkGeometry.from_ras_affine(values.shape, np.asarray(crop_affine, dtype=np.float64))
    target = ItkGeometry.from_ras_affine(shape, np.asarray(original_affine, dtype=np.float64))
    out = np.zeros(shape, dtype=values.dtype)
    # Only the neighbourhood of the crop's non-zero voxels is resampled: every other output voxel is 0 (its
    # nearest crop voxel is 0, or it falls outside the crop's buffer), which is what it starts as.
    occupied = nonzero_extent(values)
    if occupied is None:
        return out
    corners = apply_affine(np.asarray(crop_affine, dtype=np.float64),
                           _buffer_corners([v - 0.5 for v in occupied[0]], [v + 0.5 for v in occupied[1]]))
    lo, hi = _world_box(corners, np.asarray(original_affine, dtype=np.float64), shape, margin=2)
    if all(b > a for a, b in zip(lo, hi)):
        out[tuple(slice(a, b) for a, b in zip(lo, hi))] = resample_box(values, source, target, lo, hi, "nearest")
    return out
