"""The 3D preprocessing pipeline (MONAI dictionary transforms) and its exact inverse.

Order, as SAM-Med3D's inference (``utils/infer_utils.py``) does it: reorient to RAS, resample to the target
spacing (linear for the image, nearest for the label), crop/pad to the crop size around the target (padding
with raw intensity 0), normalise the intensities of the crop, and (training) random flips.

Every spatial step is a MONAI transform on a ``MetaTensor``, which keeps the crop's index-to-world affine up to
date. That affine is all the inverse needs: :func:`restore_to_original` resamples a crop-space mask (nearest)
straight onto the original grid, and :func:`crop_to_original_map` moves prompts the same way.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    BorderPad,
    Compose,
    MapTransform,
    Orientationd,
    RandFlipd,
    Randomizable,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
    SpatialResample,
)
from torch import Tensor

from zoo.errors import DataError
from zoo.geometry.index_map import IndexMap

IMAGE_KEY, LABEL_KEY, PATH_KEY = "image", "label", "image_path"
RAS_AXIS_LABELS = (("L", "R"), ("P", "A"), ("I", "S"))

CropCenter = Literal["label_bbox", "random_foreground"]
Normalization = Literal["zscore_positive", "ct_window", "none"]


def as_triple(value: float | Sequence[float], what: str) -> tuple[float, float, float]:
    """A positive scalar or 3-sequence as a 3-tuple (spacing, crop size)."""
    values = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
    if len(values) != 3 or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be a positive number or three positive numbers, got {value!r}")
    return values  # type: ignore[return-value]


def crop_start_label_bbox(label: np.ndarray | Tensor, size: Sequence[int]) -> list[int]:
    """First index of a ``size`` window centred on the label's bounding box, as ``torchio.CropOrPad(mask_name=...)``.

    torchio centres on ``(bb_min + bb_max) / 2`` (``bb_max`` exclusive) and shifts half-voxel centres down, which
    is ``floor(centre - size / 2)`` for even and odd sizes alike. Negative starts mean padding.
    """
    occupied = torch.as_tensor(label).reshape(label.shape[-3:]).bool()
    start = []
    for axis, extent in enumerate(size):
        others = tuple(d for d in range(3) if d != axis)
        indices = torch.nonzero(occupied.any(dim=others)).flatten()
        centre = (int(indices[0]) + int(indices[-1]) + 1) / 2
        start.append(int(np.floor(centre - extent / 2)))
    return start


class CropOrPadAroundTargetd(Randomizable, MapTransform):
    """Crop/pad ``keys`` to ``size`` around the target in ``label_key``; pads with 0 and updates the affines.

    ``center="label_bbox"``: centre of the label's bounding box (SAM-Med3D's inference and training crop).
    ``center="random_foreground"``: a uniformly random target voxel lands at index ``size // 2`` (the paper's
    "crop around the click", upstream's ``pcc`` option).
    """

    def __init__(self, keys: Sequence[str], label_key: str, size: Sequence[int], center: CropCenter) -> None:
        MapTransform.__init__(self, keys)
        if center not in ("label_bbox", "random_foreground"):
            raise ValueError(f"unknown crop centre {center!r}; expected 'label_bbox' or 'random_foreground'")
        self.label_key, self.size, self.center = label_key, [int(s) for s in size], center
        self._centre_voxel: list[int] = []

    def randomize(self, label: Tensor) -> None:
        """Draw the target voxel to centre on (``random_foreground`` only)."""
        voxels = torch.nonzero(label.reshape(label.shape[-3:]).bool())
        self._centre_voxel = [int(c) for c in voxels[int(self.R.randint(len(voxels)))]]

    def _start(self, label: Tensor) -> list[int]:
        if self.center == "label_bbox":
            return crop_start_label_bbox(label, self.size)
        self.randomize(label)
        return [c - s // 2 for c, s in zip(self._centre_voxel, self.size)]

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        label = out[self.label_key]
        if not bool(torch.as_tensor(label).bool().any()):
            problem = "the target is empty after resampling (too small for the spacing); nothing to crop around"
            raise DataError(str(out.get(PATH_KEY, "?")), problem)
        start = self._start(label)
        shape = label.shape[-3:]
        before = [max(0, -s) for s in start]
        after = [max(0, s + n - extent) for s, n, extent in zip(start, self.size, shape)]
        border = [v for pair in zip(before, after) for v in pair]
        roi_start = [s + b for s, b in zip(start, before)]
        roi_end = [r + n for r, n in zip(roi_start, self.size)]
        pad = BorderPad(spatial_border=border, mode="constant", value=0)
        crop = SpatialCrop(roi_start=roi_start, roi_end=roi_end)
        for key in self.key_iterator(out):
            out[key] = crop(pad(out[key]))
        return out


class NormalizeIntensityd(MapTransform):
    """Intensity normalisation of the (cropped) image, optionally after clipping to ``clip_range``.

    ``zscore_positive``: SAM-Med3D's ``tio.ZNormalization(masking_method=lambda x: x > 0)``: mean and unbiased
    std over voxels > 0 only, applied to every voxel. ``ct_window``: clip to ``ct_window`` (HU) and scale to
    [0, 1]. ``none``: leave as is.
    """

    def __init__(
        self,
        keys: Sequence[str],
        mode: Normalization = "zscore_positive",
        ct_window: tuple[float, float] = (-1000.0, 1000.0),
        clip_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__(keys)
        if mode not in ("zscore_positive", "ct_window", "none"):
            raise ValueError(f"unknown normalization {mode!r}; expected 'zscore_positive', 'ct_window' or 'none'")
        self.mode, self.clip_range = mode, clip_range
        low, high = ct_window
        self.window = ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            if self.clip_range is not None:
                image = image.clamp(*self.clip_range)
            if self.mode == "zscore_positive":
                image = self._zscore_positive(image, str(out.get(PATH_KEY, "?")))
            out[key] = image
        if self.mode == "ct_window":
            out = self.window(out)
        return out

    @staticmethod
    def _zscore_positive(image: Tensor, path: str) -> Tensor:
        values = image[image > 0]
        if values.numel() < 2:
            raise DataError(path, f"cannot z-normalise the crop: only {values.numel()} voxels are > 0")
        mean, std = values.mean(), values.std()
        if not bool(std > 0):
            raise DataError(path, "cannot z-normalise the crop: the voxels > 0 all have the same intensity")
        return (image - mean) / std


def build_transforms_3d(
    train: bool,
    spacing: float | Sequence[float] = 1.5,
    crop_size: int | Sequence[int] = 128,
    crop_center: CropCenter | None = None,
    normalization: Normalization = "zscore_positive",
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    clip_range: tuple[float, float] | None = None,
    flips: bool = True,
) -> Compose:
    """The pipeline for ``{"image": MetaTensor 1xXxYxZ, "label": MetaTensor 1xXxYxZ (binary target)}``.

    ``crop_center`` defaults to ``random_foreground`` for training and ``label_bbox`` for evaluation; ``flips``
    (each axis with probability 0.5, as ``tio.RandomFlip(axes=(0, 1, 2))``) apply in training only.
    """
    keys = [IMAGE_KEY, LABEL_KEY]
    sizes = [int(s) for s in as_triple(crop_size, "crop_size")]
    steps: list[Any] = [
        Orientationd(keys, axcodes="RAS", labels=RAS_AXIS_LABELS),
        Spacingd(keys, pixdim=as_triple(spacing, "spacing"), mode=("bilinear", "nearest"), dtype=torch.float32),
        CropOrPadAroundTargetd(keys, LABEL_KEY, sizes, crop_center or ("random_foreground" if train else "label_bbox")),
        NormalizeIntensityd([IMAGE_KEY], normalization, ct_window, clip_range),
    ]
    if train and flips:
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    return Compose(steps, log_stats=False)


def crop_to_original_map(
    crop_affine: Tensor | np.ndarray,
    original_affine: Tensor | np.ndarray,
    crop_shape: Sequence[int],
    original_shape: Sequence[int],
) -> IndexMap:
    """Index map from the crop grid to the original file grid (apply ``.inverse()`` for the other way).

    Move prompts with it: ``points_in_crop.mapped(crop_to_original_map(...))``. Affines may be batched.
    """
    return IndexMap.from_affines(
        torch.as_tensor(crop_affine), torch.as_tensor(original_affine), tuple(crop_shape), tuple(original_shape)
    )


def restore_to_original(
    crop: Tensor,
    crop_affine: Tensor | np.ndarray,
    original_affine: Tensor | np.ndarray,
    original_shape: Sequence[int],
    mode: Literal["nearest", "bilinear"] = "nearest",
) -> Tensor:
    """Resample a ``C x *crop`` tensor (a mask, or probabilities with ``mode="bilinear"``) onto the original grid.

    Returns ``C x *original_shape`` on the input's device and dtype; voxels outside the crop get 0 (so resample
    probabilities, not logits, where 0 would mean 0.5). With
    ``nearest`` this is the exact inverse of the pipeline for every original voxel whose resampled voxel lies
    in the crop: a label map survives the round trip voxel for voxel (when resampling does not drop voxels).
    """
    if crop.ndim != 4:
        raise ValueError(f"expected a C x X x Y x Z crop, got shape {tuple(crop.shape)}")
    source = MetaTensor(crop.to(torch.float32), affine=torch.as_tensor(crop_affine, dtype=torch.float64))
    resampled = SpatialResample(mode=mode, padding_mode="zeros", dtype=torch.float64)(
        source,
        dst_affine=torch.as_tensor(original_affine, dtype=torch.float64),
        spatial_size=tuple(int(s) for s in original_shape),
    )
    restored = torch.as_tensor(resampled).to(crop.device)
    if not crop.is_floating_point():
        restored = torch.round(restored)
    return restored.to(crop.dtype)
