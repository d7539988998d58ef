"""Affine maps between the index spaces of two grids.

Every geometric step of the pipelines (reorientation, resampling, crop/pad, flip, resize, letterbox padding) is an
affine map of continuous index coordinates, ``c_dst = A @ c_src + t``, in tensor-index order with integers at
element centres. :class:`IndexMap` holds that map, composes and inverts it, and applies it to coordinates and to
boxes. Boxes map through their edges (``lo - 0.5`` and ``hi - 0.5``), so a flip turns ``[lo, hi)`` into
``[n - hi, n - lo)`` and a resize scales the covered extent. The prompt containers move with
``PointPrompts.mapped(index_map)`` / ``BoxPrompts.mapped(index_map)``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from zoo.geometry.affine import crop_or_pad_matrix, resize_matrix


def _as_matrix(matrix: Tensor | Sequence[Sequence[float]]) -> Tensor:
    return torch.as_tensor(matrix, dtype=torch.float64)


@dataclass(frozen=True)
class IndexMap:
    """Affine map from index coordinates on a ``src_shape`` grid to a ``dst_shape`` grid.

    Attributes:
        matrix: ``(D+1) x (D+1)`` homogeneous float64 matrix, or ``B x (D+1) x (D+1)`` for one map per sample.
        src_shape: spatial shape of the source grid.
        dst_shape: spatial shape of the destination grid.
    """

    matrix: Tensor
    src_shape: tuple[int, ...]
    dst_shape: tuple[int, ...]

    def __post_init__(self) -> None:
        matrix = _as_matrix(self.matrix)
        size = len(self.src_shape) + 1
        if matrix.shape[-2:] != (size, size) or matrix.ndim not in (2, 3) or len(self.dst_shape) != size - 1:
            raise ValueError(
                f"an index map between {len(self.src_shape)}-D grids needs a {size} x {size} matrix "
                f"(optionally batched), got {tuple(matrix.shape)} for grids {self.src_shape} -> {self.dst_shape}"
            )
        object.__setattr__(self, "matrix", matrix)
        object.__setattr__(self, "src_shape", tuple(int(s) for s in self.src_shape))
        object.__setattr__(self, "dst_shape", tuple(int(s) for s in self.dst_shape))

    @property
    def ndim(self) -> int:
        return len(self.src_shape)

    # Constructors ---------------------------------------------------------------------------------------

    @classmethod
    def identity(cls, shape: Sequence[int]) -> IndexMap:
        return cls(torch.eye(len(shape) + 1, dtype=torch.float64), tuple(shape), tuple(shape))

    @classmethod
    def from_affines(
        cls,
        src_affine: Tensor | Sequence[Sequence[float]],
        dst_affine: Tensor | Sequence[Sequence[float]],
        src_shape: Sequence[int],
        dst_shape: Sequence[int],
    ) -> IndexMap:
        """Map between two grids given their index-to-world affines (NIfTI style, e.g. ``MetaTensor.affine``).

        Covers reorientation, resampling, crop/pad and flips at once: ``inv(dst_affine) @ src_affine``.
        Affines may be batched (``B x 4 x 4``).
        """
        src, dst = _as_matrix(src_affine), _as_matrix(dst_affine)
        return cls(torch.linalg.solve(dst, src), tuple(src_shape), tuple(dst_shape))

    @classmethod
    def flip(cls, shape: Sequence[int], axes: Sequence[int]) -> IndexMap:
        """Reverse the listed axes: ``c -> n - 1 - c`` on each."""
        matrix = torch.eye(len(shape) + 1, dtype=torch.float64)
        for axis in axes:
            matrix[axis, axis] = -1.0
            matrix[axis, -1] = shape[axis] - 1
        return cls(matrix, tuple(shape), tuple(shape))

    @classmethod
    def crop_or_pad(cls, src_shape: Sequence[int], start: Sequence[int], dst_shape: Sequence[int]) -> IndexMap:
        """Take a ``dst_shape`` window whose first element sits at source index ``start`` (negative = padding)."""
        return cls(torch.from_numpy(crop_or_pad_matrix(start)), tuple(src_shape), tuple(dst_shape))

    @classmethod
    def resize(
        cls,
        src_shape: Sequence[int],
        dst_shape: Sequence[int],
        convention: Literal["align_corners_false", "nearest_floor"] = "align_corners_false",
    ) -> IndexMap:
        """Stretch every axis from ``src_shape`` to ``dst_shape``.

        ``align_corners_false``: the element footprints scale, ``c' = (c + 0.5) * m / n - 0.5`` (torch/MONAI linear
        interpolation, ``nearest-exact``). ``nearest_floor``: ``c' = c * m / n``, the map consistent with OpenCV's
        ``INTER_NEAREST`` (destination ``j`` reads source ``floor(j * n / m)``) and with how SAM-Med2D's predictor
        scales prompts.
        """
        matrix = torch.from_numpy(resize_matrix(src_shape, dst_shape, convention))
        return cls(matrix, tuple(src_shape), tuple(dst_shape))

    # Algebra --------------------------------------------------------------------------------------------

    def then(self, other: IndexMap) -> IndexMap:
        """This map followed by ``other``."""
        if other.src_shape != self.dst_shape:
            raise ValueError(f"cannot chain a map onto grid {self.dst_shape} with one from grid {other.src_shape}")
        return IndexMap(other.matrix @ self.matrix, self.src_shape, other.dst_shape)

    def inverse(self) -> IndexMap:
        return IndexMap(torch.linalg.inv(self.matrix), self.dst_shape, self.src_shape)

    # Application ----------------------------------------------------------------------------------------

    def map_coords(self, coords: Tensor) -> Tensor:
        """Map raw ``B x N x D`` coordinates; returns float64."""
        matrix = self.matrix.to(coords.device)
        if matrix.ndim == 2:
            matrix = matrix.expand(coords.shape[0], -1, -1)
        elif matrix.shape[0] != coords.shape[0]:
            raise ValueError(f"index map holds {matrix.shape[0]} matrices but the prompts have batch {coords.shape[0]}")
        linear, shift = matrix[:, :-1, :-1], matrix[:, :-1, -1]
        return coords.to(torch.float64) @ linear.transpose(1, 2) + shift[:, None, :]

    def map_box_edges(self, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
        """Move ``B x D`` boxes ``[lo, hi)``: the tight box around the moved corners of their extent (float64)."""
        edges = torch.stack([lo, hi], dim=1).to(torch.float64) - 0.5
        axes = list(range(self.ndim))
        choices = itertools.product((0, 1), repeat=self.ndim)
        corners = torch.stack([edges[:, list(choice), axes] for choice in choices], dim=1)
        moved = self.map_coords(corners)
        return moved.amin(dim=1) + 0.5, moved.amax(dim=1) + 0.5

    def check_source_grid(self, shape: tuple[int, ...], what: str) -> None:
        """Raise ``ValueError`` unless ``shape`` is this map's source grid (``what`` names the thing in the message)."""
        if shape != self.src_shape:
            raise ValueError(f"{what} live on grid {shape} but this index map starts from grid {self.src_shape}")
