"""The homogeneous float64 matrices of index maps, in numpy (no torch).

:class:`zoo.geometry.index_map.IndexMap` holds these matrices for the torch side; the ONNX runtime applies them to
numpy coordinates. Conventions as there: tensor-index order, integers at element centres.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

ResizeConvention = Literal["align_corners_false", "nearest_floor"]


def resize_matrix(
    src_shape: Sequence[int], dst_shape: Sequence[int], convention: ResizeConvention = "align_corners_false"
) -> np.ndarray:
    """Stretch every axis from ``src_shape`` to ``dst_shape``: ``c' = c * m / n`` (``nearest_floor``) or
    ``c' = (c + 0.5) * m / n - 0.5`` (``align_corners_false``)."""
    matrix = np.eye(len(src_shape) + 1, dtype=np.float64)
    for axis, (n, m) in enumerate(zip(src_shape, dst_shape)):
        scale = m / n
        matrix[axis, axis] = scale
        if convention == "align_corners_false":
            matrix[axis, -1] = 0.5 * scale - 0.5
        elif convention != "nearest_floor":
            raise ValueError(f"unknown resize convention {convention!r}")
    return matrix


def crop_or_pad_matrix(start: Sequence[int]) -> np.ndarray:
    """A window whose first element sits at source index ``start`` (negative = padding): ``c' = c - start``."""
    matrix = np.eye(len(start) + 1, dtype=np.float64)
    matrix[:-1, -1] = -np.asarray(list(start), dtype=np.float64)
    return matrix


def between_affines(src_affine: np.ndarray, dst_affine: np.ndarray) -> np.ndarray:
    """Index map between two grids given their index-to-world affines: ``inv(dst_affine) @ src_affine``."""
    return np.linalg.solve(np.asarray(dst_affine, dtype=np.float64), np.asarray(src_affine, dtype=np.float64))


def map_coords(matrix: np.ndarray, coords: np.ndarray) -> np.ndarray:
    """``... x D`` index coordinates through a ``(D+1) x (D+1)`` matrix (float64)."""
    points = np.asarray(coords, dtype=np.float64)
    return points @ matrix[:-1, :-1].T + matrix[:-1, -1]
