"""Reading NIfTI volumes with checks that turn bad files into :class:`~zoo.errors.DataError`.

Files are only ever read; nothing on disk is modified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.spatialimages import SpatialImage

from zoo.errors import DataError

# Largest difference (in mm, element-wise on the 4x4 affine) still treated as "the same grid".
DEFAULT_AFFINE_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Volume:
    """One 3D volume: ``array`` in the file's voxel order and its index-to-world (RAS mm) ``affine``.

    :func:`load_image` gives float32 intensities; :func:`load_stored` the voxel type SimpleITK/torchio read (what
    SAM-Med3D's authors resample: integers stay integers, uint16 widened to int32, scaled integers as float32).
    """

    array: np.ndarray
    affine: np.ndarray
    path: Path

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.array.shape)  # type: ignore[return-value]


@dataclass(frozen=True)
class VolumeHeader:
    """Shape and affine of a NIfTI file, read without loading the voxels."""

    shape: tuple[int, ...]
    affine: np.ndarray
    path: Path


def _open(path: Path) -> SpatialImage:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        return nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for unreadable headers
        raise DataError(path, f"cannot read as NIfTI ({type(exc).__name__}: {exc})") from exc


def _spatial_shape(shape: tuple[int, ...], path: Path) -> tuple[int, int, int]:
    """The 3D shape, allowing trailing singleton dims (``X x Y x Z x 1``); anything else is not one 3D volume."""
    if len(shape) < 3 or any(s != 1 for s in shape[3:]):
        raise DataError(
            path,
            f"expected a single-channel 3D volume, got shape {shape}"
            + (" (a 4D or multi-channel volume)" if len(shape) > 3 else ""),
        )
    return shape[0], shape[1], shape[2]


def _checked_affine(image: SpatialImage, path: Path) -> np.ndarray:
    affine = np.asarray(image.affine, dtype=np.float64)
    if affine.shape != (4, 4) or not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DataError(path, f"invalid affine (not finite or singular):\n{affine}")
    return affine


def read_header(path: str | Path) -> VolumeHeader:
    """Shape and affine of a NIfTI file (validated), without reading voxel data."""
    file = Path(path)
    image = _open(file)
    return VolumeHeader(_spatial_shape(tuple(image.shape), file), _checked_affine(image, file), file)


def _read_voxels(image: SpatialImage, path: Path, read: Callable[[], np.ndarray]) -> np.ndarray:
    try:
        data = read()
    except Exception as exc:  # truncated gzip streams raise EOFError, zlib.error, OSError, ValueError...
        problem = f"cannot read voxel data; the file is truncated or corrupt ({type(exc).__name__}: {exc})"
        raise DataError(path, problem) from exc
    return data.reshape(_spatial_shape(tuple(data.shape), path))


def _finite(data: np.ndarray, path: Path) -> np.ndarray:
    if np.issubdtype(data.dtype, np.floating):
        bad = int(np.count_nonzero(~np.isfinite(data)))
        if bad:
            raise DataError(path, f"{bad} voxels are NaN or infinite")
    return data


def load_image(path: str | Path) -> Volume:
    """A float32 intensity volume; NaN or infinite intensities are an error."""
    file = Path(path)
    image = _open(file)
    affine = _checked_affine(image, file)
    return Volume(_finite(_read_voxels(image, file, lambda: image.get_fdata(dtype=np.float32)), file), affine, file)


def load_stored(path: str | Path) -> Volume:
    """A volume in the voxel type torchio holds (the raw header scaling applied as ITK applies it); NaN or infinite
    intensities are an error."""
    from zoo.geometry.grid3d import torchio_voxels

    file = Path(path)
    image = _open(file)
    affine = _checked_affine(image, file)
    header = image.header
    try:  # the raw NIfTI fields: ITK applies an intercept even with slope 0, nibabel's proxy drops it
        slope, inter = float(header["scl_slope"]), float(header["scl_inter"])
    except (KeyError, ValueError, TypeError):
        slope, inter = float(image.dataobj.slope), float(image.dataobj.inter)
    data = _read_voxels(image, file, lambda: torchio_voxels(np.asanyarray(image.dataobj.get_unscaled()), slope, inter))
    return Volume(np.ascontiguousarray(_finite(data, file)), affine, file)


def load_label(path: str | Path) -> Volume:
    """An integer label volume (stored integers kept as they are; integral floats converted to int32)."""
    file = Path(path)
    image = _open(file)
    affine = _checked_affine(image, file)
    data = _read_voxels(image, file, lambda: np.asarray(image.dataobj))
    if not np.issubdtype(data.dtype, np.integer):
        if not np.isfinite(data).all():
            raise DataError(file, "label contains NaN or infinite values")
        if not np.array_equal(data, np.round(data)):
            raise DataError(file, "label contains non-integer values")
        data = data.astype(np.int32)
    if data.size and data.min() < 0:
        raise DataError(file, f"label contains negative values (min {data.min()})")
    return Volume(data, affine, file)


def check_same_grid(
    image: Volume | VolumeHeader, label: Volume | VolumeHeader, tolerance: float = DEFAULT_AFFINE_TOLERANCE
) -> None:
    """Image and label must share shape and affine (within ``tolerance`` mm); upstream silently copied them."""
    image_shape, label_shape = tuple(image.shape)[:3], tuple(label.shape)[:3]
    if image_shape != label_shape:
        raise DataError([image.path, label.path], f"image shape {image_shape} and label shape {label_shape} differ")
    difference = float(np.abs(image.affine - label.affine).max())
    if difference > tolerance:
        raise DataError(
            [image.path, label.path],
            f"image and label affines differ by up to {difference:.4g} (tolerance {tolerance:g}):\n"
            f"{image.affine}\nvs\n{label.affine}",
        )
