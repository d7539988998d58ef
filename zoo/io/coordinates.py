"""World (mm) and voxel coordinates of a NIfTI file: the one conversion every entry point uses."""

from __future__ import annotations

import numpy as np

#: Coordinate spaces a user may write 3D points in: voxel indices of the file, or world mm (RAS as NIfTI affines
#: map to, or LPS as DICOM, ITK and SimpleITK use).
SPACES = ("voxel", "world", "world_lps")


def world_to_voxel(points: np.ndarray, affine: np.ndarray, space: str) -> np.ndarray:
    """``N x 3`` world points (RAS, or LPS for ``world_lps``) -> continuous voxel indices of the file."""
    ras = points * np.array([-1.0, -1.0, 1.0]) if space == "world_lps" else points
    homogeneous = np.concatenate([ras, np.ones((len(ras), 1))], axis=1)
    return np.linalg.solve(affine, homogeneous.T).T[:, :3]


def voxel_to_world(indices: np.ndarray, affine: np.ndarray, space: str = "world") -> np.ndarray:
    """``N x 3`` continuous voxel indices of the file -> world points (RAS, or LPS for ``world_lps``)."""
    homogeneous = np.concatenate([np.asarray(indices, dtype=np.float64), np.ones((len(indices), 1))], axis=1)
    ras = (np.asarray(affine, dtype=np.float64) @ homogeneous.T).T[:, :3]
    return ras * np.array([-1.0, -1.0, 1.0]) if space == "world_lps" else ras


__all__ = ["SPACES", "voxel_to_world", "world_to_voxel"]
