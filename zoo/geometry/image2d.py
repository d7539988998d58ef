"""2D image geometry as the authors' libraries compute it: OpenCV's nearest-neighbour stretch, PIL's bilinear
longest-side resize, centred letterbox padding, bottom/right padding and bilinear logit resizing.

Images are ``H x W`` or ``H x W x C`` (as read from disk); logits are ``B x M x h x w``. Pure functions, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.geometry.index_map import IndexMap
from zoo.geometry.pixels2d import (
    letterbox_layout,
    longest_side_shape,
    nearest_indices,
    resize_longest_side_bilinear,
)

__all__ = [
    "Letterbox",
    "as_tensor_image",
    "longest_side_shape",
    "nearest_source_indices",
    "pad_bottom_right",
    "resize_longest_side_bilinear",
    "resize_nearest",
    "stretch_map",
    "upsample_bilinear",
]

ArrayLike = np.ndarray | Tensor


def as_tensor_image(image: ArrayLike) -> Tensor:
    """A tensor view of an ``H x W`` or ``H x W x C`` array."""
    return image if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))


# ------------------------------------------------------------------------------------------- nearest stretch
def nearest_source_indices(src_size: int, dst_size: int) -> Tensor:
    """Source index read by each destination index in OpenCV's ``INTER_NEAREST`` resize
    (:func:`zoo.geometry.pixels2d.nearest_indices` as a tensor)."""
    return torch.from_numpy(nearest_indices(src_size, dst_size))


def resize_nearest(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an ``H x W (x C)`` tensor to ``size = (h, w)``, bit-identical to cv2 INTER_NEAREST."""
    rows = nearest_source_indices(image.shape[0], size[0])
    cols = nearest_source_indices(image.shape[1], size[1])
    return image[rows][:, cols]


def stretch_map(original_size: tuple[int, int], size: tuple[int, int]) -> IndexMap:
    """Index map of a stretch: ``c' = c * m / n`` per axis, how SAM's ``apply_coords`` scales prompts."""
    return IndexMap.resize(original_size, size, convention="nearest_floor")


def pad_bottom_right(image: Tensor, size: int) -> Tensor:
    """Zero-pad a ``C x h x w`` tensor at the bottom and right to ``C x size x size``."""
    height, width = image.shape[-2:]
    if height > size or width > size:
        raise ValueError(f"image of {height} x {width} does not fit the {size} x {size} input")
    return F.pad(image, (0, size - width, 0, size - height))


# --------------------------------------------------------------------------------------------- letterbox
@dataclass(frozen=True)
class Letterbox:
    """Where an original image sits inside the ``S x S`` input of SAM-Med2D's training and test scripts.

    ``padded`` is True when the image was centred on a zero canvas (``top``/``left`` are its offsets),
    False when it was stretched to ``S x S``.
    """

    original_size: tuple[int, int]
    image_size: int
    padded: bool
    top: int = 0
    left: int = 0

    @classmethod
    def for_size(cls, original_size: tuple[int, int], image_size: int) -> Letterbox:
        """Centred padding when BOTH sides are smaller than ``S``, otherwise a stretch."""
        height, width = (int(s) for s in original_size)
        padded, top, left = letterbox_layout((height, width), image_size)
        return cls((height, width), image_size, padded, top, left)

    def index_map(self) -> IndexMap:
        """Index map from the original ``H x W`` image to the ``S x S`` input (``.inverse()`` for back)."""
        size = (self.image_size, self.image_size)
        if self.padded:
            return IndexMap.crop_or_pad(self.original_size, (-self.top, -self.left), size)
        return stretch_map(self.original_size, size)

    def place(self, array: ArrayLike) -> Tensor:
        """An ``H x W (x C)`` array on the ``S x S`` frame: centred zero padding or a nearest stretch.

        Use the same call for an image (after normalisation) and its masks so that they stay aligned.
        """
        tensor = as_tensor_image(array)
        if tuple(tensor.shape[:2]) != tuple(self.original_size):
            raise ValueError(f"array is {tuple(tensor.shape[:2])} but the letterbox is for {self.original_size}")
        size = self.image_size
        if not self.padded:
            return resize_nearest(tensor, (size, size))
        canvas = tensor.new_zeros((size, size, *tensor.shape[2:]))
        height, width = self.original_size
        canvas[self.top : self.top + height, self.left : self.left + width] = tensor
        return canvas

    def logits_to_original(self, logits: Tensor) -> Tensor:
        """``B x M x S x S`` logits back to the original size: centre crop (padded) or bilinear resize."""
        height, width = self.original_size
        if self.padded:
            return logits[..., self.top : self.top + height, self.left : self.left + width]
        return upsample_bilinear(logits, self.original_size)


# ------------------------------------------------------------------------------------------------ logits
def upsample_bilinear(logits: Tensor, size: tuple[int, ...]) -> Tensor:
    """Bilinear resize (``align_corners=False``) of ``B x M x h x w`` logits to ``size``."""
    return F.interpolate(logits, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)
