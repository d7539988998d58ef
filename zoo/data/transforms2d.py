"""SAM-Med2D's 2D preprocessing applied to an image and its object masks together.

The image path (normalise, then centred zero padding when both sides are below the input size, otherwise a
nearest stretch) is :func:`zoo.inference.preprocess2d.preprocess_for_evaluation`, shared with the parity-tested
inference code; masks get the same geometry. :func:`letterbox_index_map` moves prompts along.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor

from zoo.inference.preprocess2d import Letterbox, letterbox_for, preprocess_for_evaluation, resize_nearest
from zoo.geometry.index_map import IndexMap

# SAM's ImageNet statistics on the 0..255 scale (SAM-Med2D's pixel_mean / pixel_std).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)


def letterbox_masks(masks: Tensor, letterbox: Letterbox) -> Tensor:
    """``N x H x W`` masks onto the ``S x S`` input grid, exactly like the image (pad with 0 or nearest stretch)."""
    size = letterbox.image_size
    if letterbox.padded:
        height, width = letterbox.original_size
        canvas = masks.new_zeros((masks.shape[0], size, size))
        canvas[:, letterbox.top : letterbox.top + height, letterbox.left : letterbox.left + width] = masks
        return canvas
    return resize_nearest(masks.permute(1, 2, 0), (size, size)).permute(2, 0, 1).contiguous()


def prepare_image_and_masks(
    image: np.ndarray,
    masks: Sequence[np.ndarray],
    image_size: int = 256,
    pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
    pixel_std: Sequence[float] = SAM_PIXEL_STD,
) -> tuple[Tensor, Tensor, Letterbox]:
    """``H x W x 3`` uint8 image + ``H x W`` bool masks -> ``3 x S x S`` float32, ``N x 1 x S x S`` bool, geometry."""
    model_input, letterbox = preprocess_for_evaluation(image, image_size, pixel_mean, pixel_std)
    if masks:
        stacked = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks]))
        prepared = letterbox_masks(stacked, letterbox)[:, None]
    else:
        prepared = torch.zeros(0, 1, image_size, image_size, dtype=torch.bool)
    return model_input[0], prepared, letterbox


def letterbox_index_map(letterbox: Letterbox) -> IndexMap:
    """Index map from the original ``H x W`` image to the ``S x S`` model input (``.inverse()`` for back)."""
    size = (letterbox.image_size, letterbox.image_size)
    if letterbox.padded:
        return IndexMap.crop_or_pad(letterbox.original_size, (-letterbox.top, -letterbox.left), size)
    return IndexMap.resize(letterbox.original_size, size, convention="nearest_floor")


def letterbox_of(original_size: Sequence[int], image_size: int) -> Letterbox:
    """The geometry a given original size gets (re-exported so data code needs one import)."""
    return letterbox_for((int(original_size[0]), int(original_size[1])), image_size)
