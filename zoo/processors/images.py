"""What a 2D processor accepts as an image: ``H x W x 3`` 8-bit RGB (or ``H x W`` grey, repeated to three channels).

Anything else (16-bit, float, RGBA, other channel counts) is refused with a message saying how to convert it,
never rescaled silently: the released models were trained on 0..255 images and their normalisation assumes it.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from zoo.errors import DataError


def rgb_uint8(image: np.ndarray | Tensor, source: str = "image") -> np.ndarray:
    """``image`` as a contiguous ``H x W x 3`` uint8 numpy array; refuses what it cannot take unchanged."""
    array = image.detach().cpu().numpy() if isinstance(image, Tensor) else np.asarray(image)
    if array.dtype != np.uint8:
        if np.issubdtype(array.dtype, np.floating):
            hint = (
                "floating-point pixels are ambiguous (0..1 or 0..255?); convert explicitly, e.g. "
                "(image * 255).round().astype(np.uint8) for 0..1 values"
            )
        elif np.issubdtype(array.dtype, np.integer):
            hint = (
                "window or rescale it to 0..255 first (for CT, a window such as [-160, 240] HU mapped to 0..255), "
                "then .astype(np.uint8)"
            )
        else:
            hint = "convert it to 8-bit RGB first"
        raise DataError(source, f"expected 8-bit (uint8) pixels, got {array.dtype}; {hint}")
    if array.ndim == 2:
        array = np.repeat(array[:, :, None], 3, axis=2)
    if array.ndim != 3 or array.shape[2] != 3:
        raise DataError(
            source,
            f"expected an H x W x 3 RGB or H x W grey image, got shape {tuple(array.shape)}"
            + ("; drop the alpha channel first (image[..., :3])" if array.ndim == 3 and array.shape[2] == 4 else ""),
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise DataError(source, f"the image is empty (shape {tuple(array.shape)})")
    return np.ascontiguousarray(array)


def normalize(image: np.ndarray | Tensor, mean: tuple[float, ...], std: tuple[float, ...], dtype: torch.dtype) -> Tensor:
    """``(image - mean) / std`` per channel of an ``H x W x C`` image, computed in ``dtype``."""
    tensor = image if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if tensor.shape[-1] != len(mean) or len(mean) != len(std):
        raise ValueError(f"image has {tensor.shape[-1]} channels but mean/std have {len(mean)}/{len(std)}")
    return (tensor.to(dtype) - torch.tensor(mean, dtype=dtype)) / torch.tensor(std, dtype=dtype)
