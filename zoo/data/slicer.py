"""Turn a labelled 3D volume into 2D samples, so the 2D models train and evaluate on 3D data.

SAM-Med3D compares against SAM-Med2D by prompting every slice that contains the target (``N`` points for ``N``
slices) and scoring the re-assembled volume. :func:`slice_volume` produces those slices as 8-bit images in the
usual radiological display (axial: patient right on the image's left, anterior at the top);
:class:`SlicedVolumeDataset` wraps them in the 2D batch format of :mod:`zoo.data.sa_med2d`, and
:func:`assemble_volume` puts per-slice masks back on the volume's original grid.

Slicing happens on the volume reoriented to RAS by axis permutation and flips only (no resampling), so every
2D pixel is exactly one voxel.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import nibabel as nib
import numpy as np
import torch
from torch.utils.data import Dataset

from zoo.errors import DataError
from zoo.io.nifti import Volume, check_same_grid, load_image, load_label
from zoo.data.sa_med2d import sample_dict_2d
from zoo.processors import Processor

Plane = Literal["axial", "coronal", "sagittal"]
# plane -> (sliced RAS axis, RAS axis along image rows, RAS axis along image columns); both in-plane axes are
# displayed reversed (rows run anterior->posterior or superior->inferior, columns patient right->left).
_PLANES: dict[str, tuple[int, int, int]] = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}
_RAS = nib.orientations.axcodes2ornt(("R", "A", "S"))


@dataclass(frozen=True)
class SliceSample:
    """One 2D slice of one target: ``image`` ``H x W x 3`` uint8, ``mask`` ``H x W`` bool."""

    image: np.ndarray
    mask: np.ndarray
    class_id: int
    class_name: str
    plane: str
    slice_index: int


def to_ras(volume: Volume) -> np.ndarray:
    """The volume's voxels reordered to RAS (axis permutations and flips; no interpolation)."""
    transform = nib.orientations.ornt_transform(nib.orientations.io_orientation(volume.affine), _RAS)
    return nib.orientations.apply_orientation(volume.array, transform)


def from_ras(array: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Inverse of :func:`to_ras` for a volume whose file affine is ``affine``."""
    transform = nib.orientations.ornt_transform(_RAS, nib.orientations.io_orientation(affine))
    return nib.orientations.apply_orientation(array, transform)


def _plane(plane: str) -> tuple[int, int, int]:
    if plane not in _PLANES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {sorted(_PLANES)}")
    return _PLANES[plane]


def extract_slice(ras: np.ndarray, plane: Plane, index: int) -> np.ndarray:
    """Slice ``index`` of a RAS volume as a displayed 2D array (rows x columns)."""
    sliced, row_axis, col_axis = _plane(plane)
    section = np.take(ras, index, axis=sliced)
    in_plane = [a for a in range(3) if a != sliced]
    section = section.transpose(in_plane.index(row_axis), in_plane.index(col_axis))
    return section[::-1, ::-1]


def insert_slice(ras: np.ndarray, plane: Plane, index: int, section: np.ndarray) -> None:
    """Write a displayed 2D array back into slice ``index`` of a RAS volume (inverse of :func:`extract_slice`)."""
    sliced, row_axis, col_axis = _plane(plane)
    in_plane = [a for a in range(3) if a != sliced]
    unflipped = np.asarray(section)[::-1, ::-1]
    order = np.argsort([in_plane.index(row_axis), in_plane.index(col_axis)])
    view = [slice(None)] * 3
    view[sliced] = index
    ras[tuple(view)] = unflipped.transpose(order)


def to_uint8(
    volume: np.ndarray,
    window: tuple[float, float] | None = None,
    percentiles: tuple[float, float] = (0.5, 99.5),
    rule: Literal["rounded", "medsam"] = "rounded",
) -> np.ndarray:
    """Intensities to 0..255: a fixed ``window`` (e.g. CT HU) or, by default, the volume's percentile range.

    ``rule="rounded"`` maps the window's bounds to 0 and 255 and rounds. ``rule="medsam"`` is MedSAM's data
    preparation (``pre_CT_MR.py``): clip to the window, min-max of the CLIPPED volume to 0..255, truncate to
    uint8 (for CT with a level/width window such as abdomen L40 W400 = (-160, 240)).
    """
    low, high = window if window is not None else tuple(np.percentile(volume, percentiles))
    if not high > low:
        return np.zeros(volume.shape, dtype=np.uint8)
    clipped = np.clip(volume, low, high)
    if rule == "medsam":
        span = float(clipped.max() - clipped.min())
        if span <= 0:
            return np.zeros(volume.shape, dtype=np.uint8)
        return ((clipped - clipped.min()) / span * 255.0).astype(np.uint8)
    if rule != "rounded":
        raise ValueError(f"rule must be 'rounded' or 'medsam', got {rule!r}")
    return np.round((clipped - low) / (high - low) * 255.0).astype(np.uint8)


def slice_volume(
    image: Volume,
    label: Volume,
    class_names: Mapping[int, str],
    plane: Plane = "axial",
    min_pixels: int = 1,
    window: tuple[float, float] | None = None,
    intensity_rule: Literal["rounded", "medsam"] = "rounded",
) -> list[SliceSample]:
    """Every (class, slice) with at least ``min_pixels`` target pixels, as 8-bit RGB slices and binary masks
    (intensities through :func:`to_uint8` with ``window`` and ``intensity_rule``)."""
    check_same_grid(image, label)
    sliced_axis = _plane(plane)[0]
    grey = to_uint8(to_ras(image), window, rule=intensity_rule)
    labels = to_ras(label)
    unknown = sorted(set(np.unique(labels).tolist()) - {0} - set(class_names))
    if unknown:
        raise DataError(label.path, f"label values {unknown} have no name in the given class names")
    samples = []
    for class_id in sorted(int(v) for v in np.unique(labels) if v != 0):
        target = labels == class_id
        counts = target.sum(axis=tuple(a for a in range(3) if a != sliced_axis))
        for index in np.nonzero(counts >= min_pixels)[0].tolist():
            section = extract_slice(grey, plane, index)
            samples.append(
                SliceSample(
                    np.repeat(section[..., None], 3, axis=2).copy(),
                    extract_slice(target, plane, index).copy(),
                    class_id, class_names[class_id], plane, index,
                )
            )
    return samples


def assemble_volume(
    slice_masks: Mapping[int, np.ndarray], plane: Plane, label: Volume
) -> np.ndarray:
    """Per-slice 2D masks (slice index -> displayed ``H x W`` bool) as one bool volume on ``label``'s file grid."""
    ras = np.zeros(to_ras(label).shape, dtype=bool)
    for index, section in slice_masks.items():
        insert_slice(ras, plane, index, section)
    return from_ras(ras, label.affine)


class SlicedVolumeDataset(Dataset[dict[str, Any]]):
    """2D samples (one per class and slice) of a NIfTI image/label pair, in :mod:`zoo.data.sa_med2d`'s format.

    Extra keys: ``class_id`` (int), ``class_name``, ``plane`` and ``slice_index``; ``mask_paths`` holds the label file.
    """

    def __init__(
        self,
        image_path: str | Path,
        label_path: str | Path,
        class_names: Mapping[int, str],
        plane: Plane = "axial",
        min_pixels: int = 1,
        window: tuple[float, float] | None = None,
        processor: Processor | None = None,
        intensity_rule: Literal["rounded", "medsam"] = "rounded",
    ) -> None:
        if processor is None:
            raise ValueError("SlicedVolumeDataset needs the model's 2D processor (processor=...)")
        self.image_path, self.label_path = str(image_path), str(label_path)
        image, label = load_image(image_path), load_label(label_path)
        self.slices = slice_volume(image, label, class_names, plane, min_pixels, window, intensity_rule)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.slices)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.slices[index]
        frame, masks = self.processor.prepare_with_masks(item.image, [item.mask], source=self.image_path)
        sample = sample_dict_2d(frame, masks, self.image_path, [self.label_path])
        sample["original_masks"] = torch.from_numpy(item.mask[None].copy())
        sample.update(
            class_id=item.class_id, class_name=item.class_name, plane=item.plane, slice_index=item.slice_index
        )
        return sample
