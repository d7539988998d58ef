"""2D grid rules in numpy and PIL only (no torch), shared by the torch processors and the ONNX runtime.

* :func:`nearest_indices`: the source index OpenCV's ``INTER_NEAREST`` reads for each destination index;
* :func:`longest_side_shape`, :func:`resize_longest_side_bilinear`: SAM's ``ResizeLongestSide`` (size rule, PIL
  bilinear on the uint8 image);
* :func:`letterbox_layout`: where SAM-Med2D's test script places an image in its ``S x S`` input;
* :func:`resize_bilinear`: torch's ``F.interpolate(mode="bilinear", align_corners=False)`` to a given size, with
  the same sample positions and weights in float32 (the torch-free way back of logits).

:mod:`zoo.geometry.image2d` builds its torch functions on these.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image


def nearest_indices(src_size: int, dst_size: int) -> np.ndarray:
    """Source index read by each destination index in OpenCV's ``INTER_NEAREST`` resize (int64).

    OpenCV computes ``scale = dst / src`` and ``inv = 1 / scale`` in double precision and reads
    ``min(floor(i * inv), src - 1)``. Both divisions are kept as OpenCV does them, because
    ``floor(i * src / dst)`` can differ by one where ``i * inv`` rounds just below an integer.
    """
    if src_size <= 0 or dst_size <= 0:
        raise ValueError(f"sizes must be positive, got src={src_size}, dst={dst_size}")
    inverse_scale = 1.0 / (float(dst_size) / float(src_size))
    indices = np.floor(np.arange(dst_size, dtype=np.float64) * inverse_scale).astype(np.int64)
    return np.minimum(indices, src_size - 1)


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


def letterbox_layout(original_size: Sequence[int], image_size: int) -> tuple[bool, int, int]:
    """``(padded, top, left)``: centred on a zero ``S x S`` canvas when BOTH sides are smaller than ``S``
    (``top``/``left`` its offsets), otherwise stretched to ``S x S`` (``False, 0, 0``)."""
    height, width = (int(s) for s in original_size)
    if height < image_size and width < image_size:
        return True, (image_size - height) // 2, (image_size - width) // 2
    return False, 0, 0


def _linear_taps(src_size: int, dst_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """First and second source index and their float32 weights per destination index (torch's
    ``compute_source_index_and_lambda``: ``src = (dst + 0.5) * (in / out) - 0.5`` clamped at 0, in float32)."""
    if src_size == dst_size:
        index = np.arange(dst_size, dtype=np.int64)
        return index, index, np.ones(dst_size, np.float32), np.zeros(dst_size, np.float32)
    ratio = np.float32(src_size) / np.float32(dst_size)
    real = ratio * (np.arange(dst_size, dtype=np.float32) + np.float32(0.5)) - np.float32(0.5)
    real = np.maximum(real, np.float32(0.0))
    first = np.minimum(np.floor(real).astype(np.int64), src_size - 1)
    weight1 = np.clip(real - first.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    second = first + (first < src_size - 1)
    return first, second, (np.float32(1.0) - weight1).astype(np.float32), weight1


def resize_bilinear(values: np.ndarray, size: Sequence[int]) -> np.ndarray:
    """Bilinear resize of the last two axes of a float array to ``size = (h, w)``, in float32, as torch's
    ``F.interpolate(values, size, mode="bilinear", align_corners=False)`` samples and weighs (a resize to the
    same size is a copy)."""
    array = np.asarray(values, dtype=np.float32)
    rows0, rows1, row_w0, row_w1 = _linear_taps(array.shape[-2], int(size[0]))
    cols0, cols1, col_w0, col_w1 = _linear_taps(array.shape[-1], int(size[1]))

    def along_columns(rows: np.ndarray) -> np.ndarray:
        picked = array[..., rows, :]
        return picked[..., cols0] * col_w0 + picked[..., cols1] * col_w1

    return (along_columns(rows0) * row_w0[:, None] + along_columns(rows1) * row_w1[:, None]).astype(np.float32)
