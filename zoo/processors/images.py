"""What a 2D processor accepts as an image: ``H x W x 3`` 8-bit RGB (or ``H x W`` grey, repeated to three channels).

Anything else (16-bit, float, RGBA, other channel counts) is refused with a message saying how to convert it,
never rescaled silently: the released models were trained on 0..255 images and their normalisation assumes it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from zoo.geometry.model_input2d import rgb_uint8 as check_rgb_uint8


def rgb_uint8(image: np.ndarray | Tensor, source: str = "image") -> np.ndarray:
    """``image`` as a contiguous ``H x W x 3`` uint8 numpy array; refuses what it cannot take unchanged
    (:func:`zoo.geometry.model_input2d.rgb_uint8`, which the ONNX runtime calls too)."""
    return check_rgb_uint8(image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image), source)


def normalize(image: np.ndarray | Tensor, mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype) -> Tensor:
    """``(image - mean) / std`` per channel of an ``H x W x C`` image, computed in ``dtype``."""
    tensor = image if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if tensor.shape[-1] != len(mean) or len(mean) != len(std):
        raise ValueError(f"image has {tensor.shape[-1]} channels but mean/std have {len(mean)}/{len(std)}")
    return (tensor.to(dtype) - torch.tensor(mean, dtype=dtype)) / torch.tensor(std, dtype=dtype)
