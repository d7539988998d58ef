"""Volume steps of the SAM-Med3D processor on the authors' grid (:mod:`zoo.geometry.grid3d`): the resampling plan,
the crop around the prompts (:mod:`zoo.geometry.crop3d`, shared with the ONNX runtime), and the way back to the
file's grid.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from zoo.geometry.crop3d import crop_around_voxels, plan_for_volume
from zoo.geometry.grid3d import CropWindow, ResamplePlan, paste_back_nearest as paste_back, resample
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
    return plan_for_volume(volume.array, volume.affine, spacing, max_bytes, volume.path)


def crop_around_points(
    volume: Volume, plan: ResamplePlan, points: PointPrompts, size: Sequence[int], source: str
) -> Crop:
    """The ``size`` window of the resampled volume centred on the resampled voxels under the points
    (:func:`zoo.geometry.crop3d.crop_around_voxels`)."""
    real = points.coords[0][~points.is_padding[0]].to(torch.float64).cpu().numpy()
    roi, affine, start = crop_around_voxels(volume.array, volume.affine, plan, real, size, source)
    return Crop(roi, affine, start)


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
    values = (crop_mask.detach() != 0).cpu().numpy().view(np.uint8)  # 0/1 bytes
    restored = paste_back(
        values, np.asarray(crop_affine, dtype=np.float64), tuple(original_shape), np.asarray(original_affine)
    )
    # Still 0/1 bytes: viewed as bool instead of compared, which was another pass over the whole original grid.
    return torch.from_numpy(restored.view(np.bool_))
