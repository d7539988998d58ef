"""Pure geometry below data, prompts and inference: index maps between grids, 2D resizes that match each author's
library, and 3D resampling grids."""

from zoo.geometry.index_map import IndexMap

__all__ = ["IndexMap"]
