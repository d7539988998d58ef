"""2D image geometry as the authors' libraries compute it: OpenCV's nearest-neighbour stretch, PIL's bilinear
longest-side resize, centred letterbox padding, bottom/right padding and bilinear logit resizing.

Images are ``H x W`` or ``H x W x C`` (as read from disk); logits are ``B x M x h x w``. Pure functions, no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from zoo.geometry.index_map import IndexMap

ArrayLike = np.ndarray | Tensor


def as_tensor_image(image: ArrayLike) -> Tensor:
    """A tensor view of an ``H x W`` or ``H x W x C`` array."""
    return image if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))


# ------------------------------------------------------------------------------------------- nearest stretch
def nearest_source_indices(src_size: int, dst_size: int) -> Tensor:
    """Source index read by each destination index in OpenCV's ``INTER_NEAREST`` resize.

    OpenCV computes ``scale = dst / src`` and ``inv = 1 / scale`` in double precision and reads
    ``min(floor(i * inv), src - 1)``. Both divisions are kept as OpenCV does them, because
    ``floor(i * src / dst)`` can differ by one where ``i * inv`` rounds just below an integer.
    """
    if src_size <= 0 or dst_size <= 0:
        raise ValueError(f"sizes must be positive, got src={src_size}, dst={dst_size}")
    inverse_scale = 1.0 / (float(dst_size) / float(src_size))
    indices = torch.floor(torch.arange(dst_size, dtype=torch.float64) * inverse_scale).to(torch.int64)
    return indices.clamp_(max=src_size - 1)


def resize_nearest(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest-neighbour resize of an ``H x W (x C)`` tensor to ``size = (h, w)``, bit-identical to cv2 INTER_NEAREST."""
    rows = nearest_source_indices(image.shape[0], size[0])
    cols = nearest_source_indices(image.shape[1], size[1])
    return image[rows][:, cols]


def stretch_map(original_size: tuple[int, int], size: tuple[int, int]) -> IndexMap:
    """Index map of a stretch: ``c' = c * m / n`` per axis, how SAM's ``apply_coords`` scales prompts."""
    return IndexMap.resize(original_size, size, convention="nearest_floor")


# ----------------------------------------------------------------------------------------- longest side
def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """``(h', w')`` after scaling the longer side to ``target`` (rounded half up, as SAM's ResizeLongestSide)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side_bilinear(image: np.ndarray, target: int) -> np.ndarray:
    """Resize an ``H x W (x 3)`` uint8 image so its longer side is ``target`` with PIL's bilinear filter.

    This is SAM's ``ResizeLongestSide.apply_image`` (torchvision's resize of a PIL image, which is PIL's
    antialiased bilinear filter), used by SAM and SAM-UNet.
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an H x W (x 3) uint8 image, got {image.dtype} of shape {image.shape}")
    height, width = longest_side_shape(image.shape[0], image.shape[1], target)
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.array(resized)  # a writable copy (PIL arrays are read-only)


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
        if height < image_size and width < image_size:
            return cls((height, width), image_size, True, (image_size - height) // 2, (image_size - width) // 2)
        return cls((height, width), image_size, False)

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
