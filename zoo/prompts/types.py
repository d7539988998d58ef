"""Typed, batched prompt containers shared by every model family.

Coordinate convention (the same rule for 2D and 3D, so one convention per dimensionality):

* **Points** are in *tensor-index order* of the spatial dims of the image they belong to: ``(row, col)`` for a
  ``B x C x H x W`` image, ``(d0, d1, d2)`` for a ``B x C x D0 x D1 x D2`` volume. Units are pixels/voxels and an
  integer coordinate is the *centre* of that element, so ``image[..., round(p0), round(p1)]`` is the pixel under
  the point. ``spatial_shape`` records the grid the coordinates refer to.
* **Boxes** use the same axes: ``lo`` and ``hi`` are the corner coordinates a model's authors pass (SAM's
  ``(x0, y0, x1, y1)`` in index order). Boxes made from masks by :func:`zoo.prompts.boxes_from_masks` have ``hi``
  one past the last covered index, exactly what ``skimage.regionprops`` and SAM-Med2D's ``get_boxes_from_mask``
  produce; a family whose authors use the last index instead (LiteMedSAM) converts in its processor.
* **Labels**: 1 foreground, 0 background, -1 padding ("not a point"). Padding slots make ragged batches
  rectangular; :attr:`PointPrompts.counts` gives the number of real points per sample.

What a model takes is produced by the family's processor (:mod:`zoo.processors`): SAM-style 2D models want
``(x, y)``, SAM-Med3D takes this index order unchanged. :mod:`zoo.prompts.validate` checks prompts against an image.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.geometry.index_map import IndexMap
from zoo.prompts.components import bounding_boxes
from zoo.prompts.rules import BACKGROUND_LABEL, FOREGROUND_LABEL, PADDING_LABEL  # noqa: F401 (re-exported)


def _check_spatial_shape(spatial_shape: Sequence[int], ndim: int, what: str) -> tuple[int, ...]:
    shape = tuple(int(s) for s in spatial_shape)
    if len(shape) != ndim or any(s <= 0 for s in shape):
        raise ValueError(f"{what}: spatial_shape must be {ndim} positive sizes, got {tuple(spatial_shape)}")
    return shape


@dataclass(frozen=True)
class PointPrompts:
    """``B`` samples of up to ``N`` points each.

    Attributes:
        coords: ``B x N x D`` float32 coordinates in tensor-index order (see module docstring).
        labels: ``B x N`` int64 labels: 1 foreground, 0 background, -1 padding.
        spatial_shape: the ``D`` sizes of the grid the coordinates live in.
    """

    coords: Tensor
    labels: Tensor
    spatial_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.coords.ndim != 3:
            raise ValueError(f"point coords must be B x N x D, got shape {tuple(self.coords.shape)}")
        if self.labels.shape != self.coords.shape[:2]:
            raise ValueError(
                f"point labels must be B x N = {tuple(self.coords.shape[:2])}, got {tuple(self.labels.shape)}"
            )
        if self.coords.dtype != torch.float32:
            raise ValueError(f"point coords must be float32, got {self.coords.dtype}")
        if self.labels.dtype != torch.int64:
            raise ValueError(f"point labels must be int64, got {self.labels.dtype}")
        shape = _check_spatial_shape(self.spatial_shape, self.coords.shape[2], "PointPrompts")
        object.__setattr__(self, "spatial_shape", shape)

    @property
    def batch_size(self) -> int:
        return self.coords.shape[0]

    @property
    def ndim(self) -> int:
        """Spatial dimensionality (2 or 3)."""
        return self.coords.shape[2]

    @property
    def counts(self) -> Tensor:
        """``B`` int64: number of real (non-padding) points per sample."""
        return (self.labels != PADDING_LABEL).sum(dim=1)

    @property
    def is_padding(self) -> Tensor:
        """``B x N`` bool: True where the slot is padding."""
        return self.labels == PADDING_LABEL

    @classmethod
    def empty(
        cls, batch_size: int, spatial_shape: Sequence[int], device: torch.device | str | None = None
    ) -> PointPrompts:
        """No points at all (``N = 0``); a starting value for :meth:`cat` when clicks accumulate."""
        ndim = len(spatial_shape)
        return cls(
            torch.zeros(batch_size, 0, ndim, dtype=torch.float32, device=device),
            torch.zeros(batch_size, 0, dtype=torch.int64, device=device),
            tuple(spatial_shape),
        )

    @classmethod
    def from_lists(
        cls,
        coords: Sequence[Sequence[Sequence[float]]],
        labels: Sequence[Sequence[int]],
        spatial_shape: Sequence[int],
        device: torch.device | str | None = None,
    ) -> PointPrompts:
        """Build a padded batch from ragged per-sample lists (shorter samples get padding slots at the end)."""
        if len(coords) != len(labels):
            raise ValueError(f"got coords for {len(coords)} samples but labels for {len(labels)}")
        ndim = len(spatial_shape)
        width = max((len(c) for c in coords), default=0)
        out_coords = torch.zeros(len(coords), width, ndim, dtype=torch.float32)
        out_labels = torch.full((len(coords), width), PADDING_LABEL, dtype=torch.int64)
        for i, (sample_coords, sample_labels) in enumerate(zip(coords, labels)):
            if len(sample_coords) != len(sample_labels):
                raise ValueError(f"sample {i}: {len(sample_coords)} points but {len(sample_labels)} labels")
            if len(sample_coords):
                sample = torch.as_tensor(sample_coords, dtype=torch.float32).reshape(-1, ndim)
                out_coords[i, : len(sample_coords)] = sample
                out_labels[i, : len(sample_labels)] = torch.as_tensor(sample_labels, dtype=torch.int64)
        return cls(out_coords.to(device), out_labels.to(device), tuple(spatial_shape))

    def cat(self, other: PointPrompts) -> PointPrompts:
        """Append ``other``'s points after this batch's (clicks accumulating over iterations)."""
        if other.spatial_shape != self.spatial_shape or other.batch_size != self.batch_size:
            raise ValueError(
                f"cannot concatenate points on grid {other.spatial_shape} (batch {other.batch_size}) to points on "
                f"grid {self.spatial_shape} (batch {self.batch_size})"
            )
        return PointPrompts(
            torch.cat([self.coords, other.coords], dim=1),
            torch.cat([self.labels, other.labels], dim=1),
            self.spatial_shape,
        )

    def to(self, device: torch.device | str) -> PointPrompts:
        return PointPrompts(self.coords.to(device), self.labels.to(device), self.spatial_shape)

    def mapped(self, index_map: IndexMap) -> PointPrompts:
        """These points on ``index_map``'s destination grid; padding slots stay padding (at the origin)."""
        index_map.check_source_grid(self.spatial_shape, "points")
        moved = index_map.map_coords(self.coords).to(torch.float32)
        moved = torch.where(self.is_padding[..., None], 0.0, moved)
        return PointPrompts(moved, self.labels, index_map.dst_shape)

    def voxel_indices(self) -> Tensor:
        """``B x N x D`` int64: the element under each point (``round``), for looking values up in an image."""
        return torch.round(self.coords).to(torch.int64)


@dataclass(frozen=True)
class BoxPrompts:
    """One axis-aligned box per sample.

    Attributes:
        lo: ``B x D`` float32 first covered index per axis (tensor-index order).
        hi: ``B x D`` float32 one past the last covered index per axis.
        valid: ``B`` bool; False where no box exists (e.g. an empty mask). Invalid rows hold zeros.
        spatial_shape: the ``D`` sizes of the grid the box lives in.
    """

    lo: Tensor
    hi: Tensor
    valid: Tensor
    spatial_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.lo.ndim != 2 or self.lo.shape != self.hi.shape:
            raise ValueError(f"box lo/hi must both be B x D, got {tuple(self.lo.shape)} and {tuple(self.hi.shape)}")
        if self.lo.dtype != torch.float32 or self.hi.dtype != torch.float32:
            raise ValueError(f"box corners must be float32, got {self.lo.dtype} and {self.hi.dtype}")
        if self.valid.shape != self.lo.shape[:1] or self.valid.dtype != torch.bool:
            raise ValueError(f"box valid must be a bool tensor of shape ({self.lo.shape[0]},)")
        shape = _check_spatial_shape(self.spatial_shape, self.lo.shape[1], "BoxPrompts")
        object.__setattr__(self, "spatial_shape", shape)

    @property
    def batch_size(self) -> int:
        return self.lo.shape[0]

    @property
    def ndim(self) -> int:
        return self.lo.shape[1]

    def to(self, device: torch.device | str) -> BoxPrompts:
        return BoxPrompts(self.lo.to(device), self.hi.to(device), self.valid.to(device), self.spatial_shape)

    def mapped(self, index_map: IndexMap) -> BoxPrompts:
        """These boxes on ``index_map``'s destination grid: the tight box around the moved corners."""
        index_map.check_source_grid(self.spatial_shape, "boxes")
        lo, hi = index_map.map_box_edges(self.lo, self.hi)
        valid = self.valid[:, None]
        lo = torch.where(valid, lo.to(torch.float32), 0.0)
        hi = torch.where(valid, hi.to(torch.float32), 0.0)
        return BoxPrompts(lo, hi, self.valid, index_map.dst_shape)

    def contains(self, mask: Tensor) -> Tensor:
        """``B`` bool: does each valid box cover every True element of the matching ``B x *spatial`` mask?

        An empty mask is covered by any valid box; an invalid box covers nothing.
        """
        if tuple(mask.shape[1:]) != self.spatial_shape:
            raise ValueError(f"mask grid {tuple(mask.shape[1:])} differs from the box grid {self.spatial_shape}")
        mask_lo, mask_hi, nonempty = bounding_boxes(mask)
        inside = (mask_lo.to(self.lo) >= self.lo).all(dim=1) & (mask_hi.to(self.hi) <= self.hi).all(dim=1)
        return self.valid & (inside | ~nonempty)


@dataclass(frozen=True)
class MaskPrompts:
    """Low-resolution mask prompts, as logits.

    Attributes:
        logits: ``B x 1 x *low_res`` float logits (SAM-Med3D: 32^3 for a 128^3 crop; SAM-Med2D: 64^2 for 256^2).
    """

    logits: Tensor

    def __post_init__(self) -> None:
        if self.logits.ndim not in (4, 5) or self.logits.shape[1] != 1:
            raise ValueError(f"mask prompt logits must be B x 1 x *spatial (2D or 3D), got {tuple(self.logits.shape)}")
        if not self.logits.is_floating_point():
            raise ValueError(f"mask prompt logits must be floating point, got {self.logits.dtype}")

    @classmethod
    def zeros(
        cls, batch_size: int, low_res_shape: Sequence[int], device: torch.device | str | None = None
    ) -> MaskPrompts:
        """All-zero logits: SAM-Med3D's first-click mask prompt (upstream feeds zeros, not 'no mask')."""
        return cls(torch.zeros(batch_size, 1, *low_res_shape, dtype=torch.float32, device=device))

    @property
    def batch_size(self) -> int:
        return self.logits.shape[0]

    @property
    def spatial_shape(self) -> tuple[int, ...]:
        return tuple(self.logits.shape[2:])


@dataclass(frozen=True)
class Prompts:
    """The prompts of one or more prompt sets on one grid: any of points, boxes and a low-res mask prompt.

    ``points`` and ``boxes`` share ``spatial_shape`` and batch size; ``masks`` are low-res logits on the model's
    mask-prompt grid (they come from a previous prediction, so they are always in model space).
    """

    points: PointPrompts | None = None
    boxes: BoxPrompts | None = None
    masks: MaskPrompts | None = None

    def __post_init__(self) -> None:
        if self.points is not None and self.boxes is not None:
            if self.points.spatial_shape != self.boxes.spatial_shape:
                raise ValueError(
                    f"points live on grid {self.points.spatial_shape} but boxes on {self.boxes.spatial_shape}"
                )
            if self.points.batch_size != self.boxes.batch_size:
                raise ValueError(f"{self.points.batch_size} point sets but {self.boxes.batch_size} boxes")

    @property
    def kinds(self) -> frozenset[str]:
        """Which of ``"points"``, ``"boxes"``, ``"masks"`` are given."""
        given = {"points": self.points, "boxes": self.boxes, "masks": self.masks}
        return frozenset(name for name, value in given.items() if value is not None)

    @property
    def spatial_shape(self) -> tuple[int, ...] | None:
        """The grid of the points and boxes (None when there are only mask prompts)."""
        located = self.points if self.points is not None else self.boxes
        return None if located is None else located.spatial_shape

    @property
    def batch_size(self) -> int:
        for part in (self.points, self.boxes, self.masks):
            if part is not None:
                return part.batch_size
        return 0

    def mapped(self, index_map: IndexMap) -> Prompts:
        """Points and boxes on ``index_map``'s destination grid (mask prompts unchanged)."""
        return Prompts(
            None if self.points is None else self.points.mapped(index_map),
            None if self.boxes is None else self.boxes.mapped(index_map),
            self.masks,
        )

    def to(self, device: torch.device | str) -> Prompts:
        return Prompts(
            None if self.points is None else self.points.to(device),
            None if self.boxes is None else self.boxes.to(device),
            None if self.masks is None else MaskPrompts(self.masks.logits.to(device)),
        )
