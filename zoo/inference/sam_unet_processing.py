"""SAM-UNet's image, prompt and mask geometry, as upstream's datasets and ``SAM_UNET.infer`` do it.

Forward: resize the longest side to ``S`` (PIL bilinear), scale box/point prompts by the same factors, normalise
with the ImageNet statistics and zero-pad bottom/right to ``S x S``. Back: bilinear 4x to ``S x S``
(:func:`postprocess_training`, the training-time logits) or additionally crop the padding and resize to the
original size (:func:`postprocess_masks`); masks are ``logits > 0``.

Pure functions on arrays and tensors: no model, no state.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

#: Upstream's ``SAM_UNET.mask_threshold``: a pixel is foreground when its logit is above it.
MASK_THRESHOLD = 0.0


def longest_side_shape(height: int, width: int, target: int) -> tuple[int, int]:
    """``(h', w')`` after scaling the longer side to ``target`` (rounded half up, as SAM's ResizeLongestSide)."""
    if height <= 0 or width <= 0:
        raise ValueError(f"image size must be positive, got {height} x {width}")
    scale = target * 1.0 / max(height, width)
    return int(height * scale + 0.5), int(width * scale + 0.5)


def resize_longest_side(image: np.ndarray, target: int) -> np.ndarray:
    """Resize an ``H x W`` or ``H x W x 3`` uint8 image so its longer side is ``target`` (PIL bilinear)."""
    if image.dtype != np.uint8 or image.ndim not in (2, 3):
        raise ValueError(f"expected an H x W (x 3) uint8 image, got {image.dtype} of shape {image.shape}")
    height, width = longest_side_shape(image.shape[0], image.shape[1], target)
    resized = Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR)
    return np.array(resized)  # a writable copy (PIL arrays are read-only)


def scale_coords(coords: Tensor, original_size: tuple[int, int], target: int) -> Tensor:
    """Map ``(x, y)`` coordinates (``... x 2``) from the original image to the resized one, in float32."""
    if coords.shape[-1] != 2:
        raise ValueError(f"coordinates must end in a dimension of size 2 (x, y), got shape {tuple(coords.shape)}")
    old_h, old_w = original_size
    new_h, new_w = longest_side_shape(old_h, old_w, target)
    scaled = coords.to(torch.float32).clone()
    scaled[..., 0] = scaled[..., 0] * (new_w / old_w)
    scaled[..., 1] = scaled[..., 1] * (new_h / old_h)
    return scaled


def scale_boxes(boxes: Tensor, original_size: tuple[int, int], target: int) -> Tensor:
    """Map ``(x0, y0, x1, y1)`` boxes (``N x 4``) from the original image to the resized one, in float32."""
    if boxes.ndim != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"boxes must be N x 4 (x0, y0, x1, y1), got shape {tuple(boxes.shape)}")
    return scale_coords(boxes.reshape(-1, 2, 2), original_size, target).reshape(-1, 4)


def preprocess(
    image: Tensor, image_size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> Tensor:
    """``(image - mean) / std`` on a resized ``3 x h x w`` 0..255 image, zero-padded bottom/right to ``3 x S x S``.

    Computed in float32, as upstream (its mean and std are float32 tensors).
    """
    if image.ndim != 3 or image.shape[0] != len(pixel_mean) or len(pixel_mean) != len(pixel_std):
        raise ValueError(
            f"expected a {len(pixel_mean)} x h x w image (channels first), got shape {tuple(image.shape)}"
        )
    height, width = image.shape[-2:]
    if height > image_size or width > image_size:
        raise ValueError(
            f"image of {height} x {width} does not fit the {image_size} x {image_size} input; "
            "resize its longest side first (resize_longest_side)"
        )
    mean = torch.tensor(pixel_mean, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    std = torch.tensor(pixel_std, dtype=torch.float32, device=image.device).view(-1, 1, 1)
    normalised = (image.to(torch.float32) - mean) / std
    return F.pad(normalised, (0, image_size - width, 0, image_size - height))


def preprocess_batch(
    images: Sequence[Tensor], image_size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> Tensor:
    """:func:`preprocess` each image (sizes may differ) and stack them: ``B x 3 x S x S``."""
    return torch.stack([preprocess(image, image_size, pixel_mean, pixel_std) for image in images])


def postprocess_training(low_res_logits: Tensor, image_size: int) -> Tensor:
    """Low-res logits ``N x 1 x S/4 x S/4`` to ``N x 1 x S x S`` (bilinear), the training-time output."""
    return F.interpolate(low_res_logits, (image_size, image_size), mode="bilinear", align_corners=False)


def postprocess_masks(
    low_res_logits: Tensor, input_size: tuple[int, int], original_size: tuple[int, int], image_size: int
) -> Tensor:
    """Logits at the original image size: bilinear to ``S x S``, crop the padding to ``input_size`` (the resized
    image's ``h' x w'``), bilinear to ``original_size``."""
    height, width = input_size
    if height > image_size or width > image_size:
        raise ValueError(f"input_size {tuple(input_size)} is larger than the {image_size} x {image_size} input")
    full = postprocess_training(low_res_logits, image_size)[..., :height, :width]
    return F.interpolate(full, tuple(original_size), mode="bilinear", align_corners=False)


def binarize(logits: Tensor, threshold: float = MASK_THRESHOLD) -> Tensor:
    """Boolean masks: ``logits > threshold``."""
    return logits > threshold
