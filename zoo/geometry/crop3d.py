"""SAM-Med3D's crop around the prompts on the authors' grid (:mod:`zoo.geometry.grid3d`), in numpy (no torch), for
the torch processor (:mod:`zoo.processors.volume3d`) and the ONNX runtime alike.

The crop is centred as the authors' ``CropOrPad(mask_name='label')`` centres on a label: here the "label" is the
resampled voxel under each point, so a single click lands at index ``S // 2`` of the crop (e.g. 64 of 128). Its
intensities are normalised by :func:`normalise_crop`.
"""

from __future__ import annotations

from collections.abc import Sequence
from os import PathLike

import numpy as np
from nibabel.affines import apply_affine

from zoo.errors import DataError, PromptError
from zoo.geometry.grid3d import CropWindow, ResamplePlan, crop_window, plan_resample, resample


def plan_for_volume(
    array: np.ndarray,
    affine: np.ndarray,
    spacing: Sequence[float],
    max_bytes: int,
    path: str | PathLike[str] | None = None,
) -> ResamplePlan:
    """The resampling plan of a volume (sizes checked before any voxel is allocated)."""
    return plan_resample(
        array.shape, affine, tuple(spacing), path=path, itemsize=array.dtype.itemsize, max_bytes=max_bytes
    )


def window_around_voxels(
    affine: np.ndarray, plan: ResamplePlan, points: np.ndarray, size: Sequence[int], source: str
) -> CropWindow:
    """The ``size`` window of the resampled grid centred on the resampled voxels under ``points`` (``N x 3`` voxel
    indices of the file); refuses points that span more than one window."""
    world = apply_affine(np.asarray(affine, dtype=np.float64), np.asarray(points, dtype=np.float64))
    canonical = apply_affine(np.linalg.inv(plan.canonical.affine), world)
    # The resampled voxel holding each point (a point on the last centre may round one voxel out: clip).
    voxels = np.clip(np.floor(canonical + 0.5).astype(int), 0, np.array(plan.canonical.shape) - 1)
    lo = tuple(int(v) for v in voxels.min(axis=0))
    hi = tuple(int(v) + 1 for v in voxels.max(axis=0))
    window = crop_window(plan.canonical.shape, tuple(size), (lo, hi))
    extent = np.array(hi) - np.array(lo)
    if (extent > np.array(size)).any():
        raise PromptError(
            f"the points span {extent.tolist()} voxels at the model's spacing, more than one {tuple(size)} crop; "
            "split them into objects that each fit one crop",
            source,
        )
    return window


def crop_around_voxels(
    array: np.ndarray, affine: np.ndarray, plan: ResamplePlan, points: np.ndarray, size: Sequence[int], source: str
) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    """The crop (raw intensities, linear resampling), its index-to-world affine and its first canonical voxel."""
    window = window_around_voxels(affine, plan, points, size, source)
    roi = resample(array, plan, "linear", window)
    return roi, window.affine(plan.canonical.affine), window.start


def normalise_crop(crop: np.ndarray, mode: str, source: str) -> np.ndarray:
    """The crop's intensities as the model takes them, float32.

    ``zscore_positive``: SAM-Med3D's ``ZNormalization(masking_method=x > 0)``, mean and unbiased std over the voxels
    > 0 (accumulated in float64, applied in float32 as torchio); ``ct_window``: [-1000, 1000] HU to [0, 1];
    ``none``: unchanged.
    """
    values = np.asarray(crop, dtype=np.float32)
    if mode == "none":
        return values
    if mode == "ct_window":
        return ((np.clip(values, -1000.0, 1000.0) + np.float32(1000.0)) / np.float32(2000.0)).astype(np.float32)
    if mode != "zscore_positive":
        raise ValueError(f"unknown normalization {mode!r}")
    positive = values[values > 0]
    if positive.size < 2:
        raise DataError(source, f"cannot z-normalise the crop: only {positive.size} voxels are > 0")
    mean = np.float32(positive.mean(dtype=np.float64))
    std = np.float32(positive.std(ddof=1, dtype=np.float64))
    if not std > 0:
        raise DataError(source, "cannot z-normalise the crop: the voxels > 0 all have the same intensity")
    return ((values - mean) / std).astype(np.float32)
