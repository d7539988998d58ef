"""Volume steps of the SAM-Med3D processor on the authors' grid (:mod:`zoo.geometry.grid3d`): the resampling plan,
the crop around the prompts, and the way back to the file's grid.

The crop is centred as the authors' ``CropOrPad(mask_name='label')`` centres on a label: here the "label" is the
resampled voxel under each point, so a single click lands at index ``S // 2`` of the crop (e.g. 64 of 128).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from nibabel.affines import apply_affine
from torch import Tensor

from zoo.errors import PromptError
from zoo.geometry.grid3d import CropWindow, ResamplePlan, crop_window, paste_back_nearest as paste_back, plan_resample, resample
from zoo.io.nifti import Volume
from zoo.prompts.types import PointPrompts


@dataclass(frozen=True)
class Crop:
    """The model-input crop (raw intensities, the dtype torchio resamples in), its index-to-world affine and its
    first voxel on the resampled, reoriented (canonical) grid."""

    array: np.ndarray
    affine: np.ndarray
    start: tuple[int, int, int] = (0, 0, 0)


def plan_for(volume: Volume, spacing: Sequence[float], max_bytes: int) -> ResamplePlan:
    """The resampling plan of ``volume`` (sizes checked before any voxel is allocated)."""
    return plan_resample(
        volume.shape, volume.affine, tuple(spacing), path=volume.path, itemsize=volume.array.dtype.itemsize,
        max_bytes=max_bytes,
    )


def crop_around_points(
    volume: Volume, plan: ResamplePlan, points: PointPrompts, size: Sequence[int], source: str
) -> Crop:
    """The ``size`` window of the resampled volume centred on the resampled voxels under the points."""
    real = points.coords[0][~points.is_padding[0]].to(torch.float64).numpy()
    world = apply_affine(volume.affine, real)
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
    roi = resample(volume.array, plan, "linear", window)
    return Crop(roi, window.affine(plan.canonical.affine), window.start)


def crop_at(volume: Volume, plan: ResamplePlan, start: Sequence[int], size: Sequence[int]) -> Crop:
    """The ``size`` window of the resampled volume whose first voxel is canonical index ``start``."""
    first = (int(start[0]), int(start[1]), int(start[2]))
    window = CropWindow(first, (int(size[0]), int(size[1]), int(size[2])), plan.canonical.shape)
    roi = resample(volume.array, plan, "linear", window)
    return Crop(roi, window.affine(plan.canonical.affine), first)


def paste_back_nearest(
    crop_mask: Tensor, crop_affine: Tensor, original_affine: Tensor, original_shape: Sequence[int]
) -> Tensor:
    """A crop-space bool mask on the original grid (SimpleITK's nearest rule); voxels outside the crop are False."""
    values = crop_mask.detach().cpu().numpy().astype(np.uint8)
    restored = paste_back(
        values, np.asarray(crop_affine, dtype=np.float64), tuple(original_shape), np.asarray(original_affine)
    )
    return torch.from_numpy(restored > 0)
