"""A 2D model on a volume: slice by slice along a chosen plane, the prompt given once and propagated.

The volume's slices come from :func:`zoo.data.predict.read_volume_slices` (RAS reorientation without resampling,
MedSAM's windowing; the exact inverse puts the masks back on the file's grid). The prompt is a 3D box of the file's
voxel indices; :func:`~zoo.inference.propagation.propagate_box` (LiteMedSAM's 3D procedure, for every 2D family)
segments the middle slice with the box's 2D box and each further slice with a box from its neighbour's mask. A box
on one slice (``k0 == k1`` along the plane's axis) follows the object beyond that slice while the masks last.

    slices = read_volume_slices("ct.nii.gz", plane="axial", window=(-160, 240))
    result = segment_volume(zoo.from_pretrained("litemedsam"), slices, box3d=(41, 25, 0, 105, 86, 29))
    result.mask            # bool, the file's voxel grid
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from zoo.inference.propagation import propagate_box
from zoo.io.masks import MaskSet
from zoo.processors import Processor, processor_for


class SliceStack(Protocol):
    """What :func:`segment_volume` needs of a volume (:class:`zoo.data.predict.VolumeSlices` is one)."""

    images: np.ndarray
    plane: str
    shape: tuple[int, int, int]

    def box_on_slices(self, box3d: Sequence[float]) -> tuple[float, ...]: ...

    def to_file(self, masks: np.ndarray) -> np.ndarray: ...


@dataclass
class VolumeSegmentation:
    """A 2D model's mask of a volume.

    Attributes:
        mask: bool on the file's voxel grid.
        plane: the plane sliced.
        box_on_slices: the 3D box as the slices see it ``(x_min, y_min, z_min, x_max, y_max, z_max)``.
        slices: the slice indices segmented, in order (middle, upwards, downwards).
        seconds: wall time of the propagation (encoder and decoder of every slice).
        protocol: how the prompt was propagated.
    """

    mask: np.ndarray
    plane: str
    box_on_slices: tuple[float, ...]
    slices: list[int] = field(default_factory=list)
    seconds: float = 0.0
    protocol: str = ""

    @property
    def slices_per_second(self) -> float:
        return len(self.slices) / self.seconds if self.seconds > 0 else float("nan")


def segment_volume(
    model: nn.Module,
    stack: SliceStack,
    box3d: Sequence[float],
    processor: Processor | None = None,
    beyond_box: bool | None = None,
    source: str | None = None,
) -> VolumeSegmentation:
    """Segment one object of a volume with a 2D model (see the module docstring).

    Args:
        model: a 2D zoo model whose processor takes boxes (SAM-Med2D, SAM-UNet, SAM, LiteMedSAM).
        stack: the volume's slices (:func:`zoo.data.predict.read_volume_slices`).
        box3d: ``(i0, j0, k0, i1, j1, k1)`` voxel indices of the file, max inclusive.
        beyond_box: follow the object beyond the box's slices while the masks last; default: only for a box on one
            slice.
    """
    processor = processor or processor_for(model)
    box = stack.box_on_slices(box3d)
    beyond = bool(box[2] == box[5]) if beyond_box is None else beyond_box
    started = time.perf_counter()
    with torch.inference_mode():
        result = propagate_box(model, processor, stack.images, box, source=source or str(getattr(stack, "path", "")),
                               beyond_box=beyond)
    seconds = time.perf_counter() - started
    protocol = "propagate_box: LiteMedSAM's 3D procedure (middle slice, then each box from the previous mask)"
    if beyond:
        protocol += ", beyond the box while the masks last"
    mask = stack.to_file(result.masks.cpu().numpy())
    return VolumeSegmentation(mask.astype(bool), stack.plane, box, list(result.slices), seconds, protocol)


def whole_volume_box(stack: Any) -> list[int]:
    """The whole volume as a 3D box of voxel indices (automatic prompt; outside the papers' protocols)."""
    shape = stack.shape
    return [0, 0, 0, shape[0] - 1, shape[1] - 1, shape[2] - 1]




def segment_volume_to_folder(
    model: nn.Module,
    stack: Any,
    box3d: Sequence[float],
    output_dir: str | Path,
    file_name: str,
    overwrite: bool = False,
    processor: Processor | None = None,
    beyond_box: bool | None = None,
) -> tuple[VolumeSegmentation, Path]:
    """:func:`segment_volume` and the mask written as ``file_name`` in ``output_dir`` with the volume's geometry
    (an existing file is replaced only with ``overwrite``)."""
    files = MaskSet(output_dir, overwrite)
    files.check_targets([file_name])
    result = segment_volume(model, stack, box3d, processor, beyond_box)
    with files:
        target = files.add(file_name, result.mask.astype(np.uint8), Path(stack.path))
    return result, target


__all__ = ["SliceStack", "VolumeSegmentation", "segment_volume", "segment_volume_to_folder", "whole_volume_box"]
