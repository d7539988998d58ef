"""Pure geometry below data, prompts and inference: index maps between grids, 2D resizes that match each author's
library, and 3D resampling grids.

Only :mod:`zoo.geometry.index_map` (and the modules built on it) and :mod:`zoo.geometry.separable_resize` use torch;
the numpy modules (``affine``, ``pixels2d``, ``area_resize``, ``grid3d``, ...) import without it, for the ONNX
runtime.
"""

from typing import Any

__all__ = ["IndexMap"]


def __getattr__(name: str) -> Any:
    if name == "IndexMap":  # imported on first use: importing a numpy module of this package must not need torch
        from zoo.geometry.index_map import IndexMap

        return IndexMap
    raise AttributeError(f"module 'zoo.geometry' has no attribute {name!r}")
