"""The 3D preprocessing pipeline (MONAI dictionary transforms) and its exact inverse.

Order, as SAM-Med3D's inference (``utils/infer_utils.py``) does it: resample to the target spacing on the
authors' torchio grid and reorient to RAS (:class:`ResampleLikeAuthorsd`, exactly
:mod:`zoo.geometry.grid3d`: linear for the image in its stored type, nearest for the label), crop/pad to the
crop size around the target (padding with raw intensity 0), normalise the intensities of the crop, and
(training) random flips. The processor (:class:`zoo.processors.SamMed3DProcessor`) uses the same grid.

Every spatial step keeps the crop's index-to-world affine on a ``MetaTensor``. That affine is all the inverse
needs: :func:`restore_to_original` puts a crop-space mask back onto the original grid with the authors'
nearest-neighbour rule, and :func:`crop_to_original_map` moves prompts the same way.
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
    RandFlipd,
    Randomizable,
    ScaleIntensityRanged,
    SpatialCrop,
)
from torch import Tensor

from zoo.errors import DataError
from zoo.geometry.grid3d import paste_back_nearest, plan_resample, resample
from zoo.geometry.index_map import IndexMap

IMAGE_KEY, LABEL_KEY, PATH_KEY = "image", "label", "image_path"

CropCenter = Literal["label_bbox", "random_foreground"]
Normalization = Literal["zscore_positive", "ct_window", "none"]


def as_triple(value: float | Sequence[float], what: str) -> tuple[float, float, float]:
    """A positive scalar or 3-sequence as a 3-tuple (spacing, crop size)."""
    values = (value,) * 3 if isinstance(value, (int, float)) else tuple(value)
    if len(values) != 3 or any(v <= 0 for v in values):
        raise ValueError(f"{what} must be a positive number or three positive numbers, got {value!r}")
    return values  # type: ignore[return-value]


class ResampleLikeAuthorsd(MapTransform):
    """torchio's ``Resample(spacing)`` + ``ToCanonical`` of the image (linear, in its stored type) and the label
    (nearest), exactly as SAM-Med3D's authors prepare volumes (:mod:`zoo.geometry.grid3d`); the affines follow.

    The resampled size is checked before anything is allocated: a file whose spacing would need more than
    ``max_bytes`` is refused naming the file, its spacing and the size.
    """

    def __init__(self, image_key: str, label_key: str, spacing: Sequence[float], max_bytes: int = 2 << 30) -> None:
        MapTransform.__init__(self, [image_key, label_key])
        self.image_key, self.label_key = image_key, label_key
        self.spacing, self.max_bytes = tuple(float(s) for s in spacing), max_bytes

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        image = out[self.image_key]
        values = np.asarray(image.as_tensor()[0] if isinstance(image, MetaTensor) else image[0])
        affine = np.asarray(image.affine, dtype=np.float64)
        plan = plan_resample(
            values.shape, affine, self.spacing, path=out.get(PATH_KEY), itemsize=values.dtype.itemsize,
            max_bytes=self.max_bytes,
        )
        canonical = torch.from_numpy(plan.canonical.affine.copy())
        resampled = resample(values, plan, "linear")
        out[self.image_key] = MetaTensor(torch.from_numpy(np.ascontiguousarray(resampled))[None], affine=canonical)
        if self.label_key in out:
            label = np.asarray(out[self.label_key].as_tensor()[0])
            out[self.label_key] = MetaTensor(
                torch.from_numpy(np.ascontiguousarray(resample(label, plan, "nearest")))[None], affine=canonical.clone()
            )
        return out


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

    ``clip_path_pattern``: clip only images whose path contains it (SAM-Med3D's ``data_loader.py`` clamps
    images whose path contains ``"/ct_"`` to (-1000, 1000)).

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
        clip_path_pattern: str | None = None,
    ) -> None:
        super().__init__(keys)
        self.clip_path_pattern = clip_path_pattern
        if mode not in ("zscore_positive", "ct_window", "none"):
            raise ValueError(f"unknown normalization {mode!r}; expected 'zscore_positive', 'ct_window' or 'none'")
        self.mode, self.clip_range = mode, clip_range
        low, high = ct_window
        self.window = ScaleIntensityRanged(keys, a_min=low, a_max=high, b_min=0.0, b_max=1.0, clip=True)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        out = dict(data)
        for key in self.key_iterator(out):
            image = out[key]
            path = str(out.get(PATH_KEY, ""))
            if self.clip_range is not None and (self.clip_path_pattern is None or self.clip_path_pattern in path):
                image = image.clamp(*self.clip_range)
            if self.mode == "zscore_positive":
                image = self._zscore_positive(image, str(out.get(PATH_KEY, "?")))
            out[key] = image
        if self.mode == "ct_window":
            out = self.window(out)
        return out

    @staticmethod
    def _zscore_positive(image: Tensor, path: str) -> Tensor:
        from zoo.processors.sam_med3d import normalise_crop  # the processor's rule, shared with inference

        normalised = normalise_crop(image.as_tensor() if isinstance(image, MetaTensor) else image, "zscore_positive", path)
        return MetaTensor(normalised, affine=image.affine) if isinstance(image, MetaTensor) else normalised


def build_transforms_3d(
    train: bool,
    spacing: float | Sequence[float] = 1.5,
    crop_size: int | Sequence[int] = 128,
    crop_center: CropCenter | None = None,
    normalization: Normalization = "zscore_positive",
    ct_window: tuple[float, float] = (-1000.0, 1000.0),
    clip_range: tuple[float, float] | None = None,
    flips: bool = True,
    clip_path_pattern: str | None = None,
) -> Compose:
    """The pipeline for ``{"image": MetaTensor 1xXxYxZ, "label": MetaTensor 1xXxYxZ (binary target)}``.

    ``crop_center`` defaults to ``random_foreground`` for training and ``label_bbox`` for evaluation; ``flips``
    (each axis with probability 0.5, as ``tio.RandomFlip(axes=(0, 1, 2))``) apply in training only.
    """
    keys = [IMAGE_KEY, LABEL_KEY]
    sizes = [int(s) for s in as_triple(crop_size, "crop_size")]
    steps: list[Any] = [
        ResampleLikeAuthorsd(IMAGE_KEY, LABEL_KEY, as_triple(spacing, "spacing")),
        CropOrPadAroundTargetd(keys, LABEL_KEY, sizes, crop_center or ("random_foreground" if train else "label_bbox")),
        NormalizeIntensityd([IMAGE_KEY], normalization, ct_window, clip_range, clip_path_pattern),
    ]
    if train and flips:
        steps += [RandFlipd(keys, prob=0.5, spatial_axis=axis) for axis in range(3)]
    return Compose(steps, log_stats=False)


def zscore_positive_pooled(images: Tensor) -> Tensor:
    """SAM-Med3D's training normalisation (``train.py``: ``tio.ZNormalization(masking_method=lambda x: x > 0)``
    applied to the micro-batch squeezed to ``B x D x H x W``): ONE mean and unbiased std over the voxels > 0 of all
    the batch's crops, applied to every voxel, in float32."""
    images = images.to(torch.float32)
    values = images[images > 0]
    if values.numel() < 2:
        raise DataError("batch", f"cannot z-normalise the batch: only {values.numel()} voxels are > 0")
    mean, std = values.mean(), values.std()
    if not bool(std > 0):
        raise DataError("batch", "cannot z-normalise the batch: the voxels > 0 all have the same intensity")
    return (images - mean) / std


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
) -> Tensor:
    """Put a ``C x *crop`` mask back onto the original grid with the authors' nearest-neighbour rule
    (``data_postprocess``: torchio/SimpleITK ties; :func:`zoo.geometry.grid3d.paste_back_nearest`).

    Returns ``C x *original_shape`` on the input's device and dtype; voxels outside the crop get 0. This is the
    exact inverse of the pipeline for every original voxel whose resampled voxel lies in the crop.
    """
    if crop.ndim != 4:
        raise ValueError(f"expected a C x X x Y x Z crop, got shape {tuple(crop.shape)}")
    values = crop.detach().cpu().numpy()
    restored = np.stack([
        paste_back_nearest(channel, np.asarray(crop_affine, dtype=np.float64), tuple(int(s) for s in original_shape),
                           np.asarray(original_affine, dtype=np.float64))
        for channel in values
    ])
    return torch.from_numpy(restored).to(device=crop.device, dtype=crop.dtype)
