"""Each 2D family's model input in numpy (no torch): the image the network sees, the index map that moves prompts
onto it, and the window of it that holds the image. The torch processors (:mod:`zoo.processors`) build their
frames from these, and the ONNX runtime (:mod:`zoo.deploy`) calls the same functions.

* SAM, SAM-UNet: :func:`longest_side_input` (PIL bilinear longest side, ``(x - mean) / std`` in float32,
  bottom/right zero padding);
* LiteMedSAM: :func:`litemedsam_input` (OpenCV ``INTER_AREA`` longest side, min-max to [0, 1] in float64, padding)
  and its box rule :func:`litemedsam_box`;
* SAM-Med2D: :func:`sam_med2d_input` (``predictor``: normalise in float32 and stretch with OpenCV's nearest
  neighbour; ``test_script``: normalise in float64, centred padding when both sides are below ``S``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from zoo.errors import DataError
from zoo.geometry.affine import crop_or_pad_matrix, resize_matrix
from zoo.geometry.area_resize import resize_area
from zoo.geometry.pixels2d import letterbox_layout, longest_side_shape, nearest_indices, resize_longest_side_bilinear

MINMAX_EPSILON = 1e-8


def rgb_uint8(image: np.ndarray, source: str = "image") -> np.ndarray:
    """``image`` as a contiguous ``H x W x 3`` uint8 array (an ``H x W`` grey image repeated); anything else (16-bit,
    float, RGBA, other channel counts) is refused with a message saying how to convert it, never rescaled."""
    array = np.asarray(image)
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


@dataclass(frozen=True)
class ModelInput2D:
    """A 2D image prepared for a network.

    Attributes:
        model_input: ``3 x S x S`` float32.
        original_shape: ``(H, W)`` of the user's image.
        to_model: ``3 x 3`` float64 index map (index order) from the original grid to the model input.
        window: ``(top, left, height, width)``: the part of the model input that holds the image (the rest is
            padding); logits go back by cropping it and resizing it to ``original_shape``.
        input_size: ``(h', w')`` of the resized image before padding (the longest-side families).
    """

    model_input: np.ndarray
    original_shape: tuple[int, int]
    to_model: np.ndarray
    window: tuple[int, int, int, int]
    input_size: tuple[int, int]


def normalise(pixels: np.ndarray, mean: Sequence[float], std: Sequence[float], dtype: type) -> np.ndarray:
    """``(pixels - mean) / std`` per channel of an ``H x W x C`` image, computed in ``dtype``."""
    if pixels.shape[-1] != len(mean) or len(mean) != len(std):
        raise ValueError(f"image has {pixels.shape[-1]} channels but mean/std have {len(mean)}/{len(std)}")
    return (pixels.astype(dtype) - np.asarray(mean, dtype=dtype)) / np.asarray(std, dtype=dtype)


def pad_bottom_right(chw: np.ndarray, size: int) -> np.ndarray:
    """Zero-pad a ``C x h x w`` array at the bottom and right to ``C x size x size``."""
    height, width = chw.shape[-2:]
    if height > size or width > size:
        raise ValueError(f"image of {height} x {width} does not fit the {size} x {size} input")
    return np.pad(chw, ((0, 0), (0, size - height), (0, size - width)))


def longest_side_matrix(original: Sequence[int], resized: Sequence[int]) -> np.ndarray:
    """Original -> model input of the longest-side families: scale each axis by ``resized / original`` (SAM's
    ``apply_coords``); the bottom/right padding moves nothing."""
    return crop_or_pad_matrix((0, 0)) @ resize_matrix(tuple(original), tuple(resized), "nearest_floor")


def _longest_side(original: tuple[int, int], resized: tuple[int, int], chw: np.ndarray, size: int) -> ModelInput2D:
    model_input = pad_bottom_right(chw, size).astype(np.float32)
    return ModelInput2D(model_input, original, longest_side_matrix(original, resized), (0, 0, *resized), resized)


def normalise_and_pad(resized: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """``(x - mean) / std`` of a resized ``h x w x 3`` uint8 image in float32, zero-padded bottom/right:
    ``3 x S x S``."""
    channels_first = np.ascontiguousarray(resized.transpose(2, 0, 1)).astype(np.float32)
    mean_c = np.asarray(mean, dtype=np.float32).reshape(-1, 1, 1)
    std_c = np.asarray(std, dtype=np.float32).reshape(-1, 1, 1)
    return pad_bottom_right((channels_first - mean_c) / std_c, size)


def longest_side_input(
    image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float], source: str = "image"
) -> ModelInput2D:
    """SAM and SAM-UNet: ``ResizeLongestSide`` (PIL bilinear), ``(x - mean) / std`` in float32, bottom/right padding."""
    pixels = rgb_uint8(image, source)
    original = (int(pixels.shape[0]), int(pixels.shape[1]))
    resized = resize_longest_side_bilinear(pixels, size)
    input_size = (int(resized.shape[0]), int(resized.shape[1]))
    return _longest_side(original, input_size, normalise_and_pad(resized, size, mean, std), size)


def litemedsam_input(image: np.ndarray, size: int, source: str = "image") -> ModelInput2D:
    """LiteMedSAM: longest side with OpenCV's ``INTER_AREA``, min-max to [0, 1] (float64, denominator clipped at
    1e-8, as the authors' numpy code; then float32), bottom/right padding."""
    pixels = rgb_uint8(image, source)
    original = (int(pixels.shape[0]), int(pixels.shape[1]))
    input_size = longest_side_shape(*original, size)
    resized = resize_area(pixels, *input_size).astype(np.float64)
    low, high = resized.min(), resized.max()
    scaled = ((resized - low) / np.maximum(high - low, MINMAX_EPSILON)).astype(np.float32)
    return _longest_side(original, input_size, np.ascontiguousarray(scaled.transpose(2, 0, 1)), size)


def litemedsam_box(
    lo: np.ndarray, hi: np.ndarray, original_shape: Sequence[int], size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The authors' ``resize_box_to_256``: every corner ``int(c * S / max(H, W))`` (truncated, in float64); float32."""
    factor = size / max(int(s) for s in original_shape)
    scaled_lo = np.trunc(np.asarray(lo, dtype=np.float64) * factor).astype(np.float32)
    scaled_hi = np.trunc(np.asarray(hi, dtype=np.float64) * factor).astype(np.float32)
    return scaled_lo, scaled_hi


def sam_med2d_input(
    image: np.ndarray,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    geometry: str = "predictor",
    source: str = "image",
) -> ModelInput2D:
    """SAM-Med2D in one of its two upstream geometries (see :mod:`zoo.processors.sam_med2d`)."""
    pixels = rgb_uint8(image, source)
    original = (int(pixels.shape[0]), int(pixels.shape[1]))
    if geometry == "predictor":
        normalised = normalise(pixels, mean, std, np.float32)
        placed = normalised[nearest_indices(original[0], size)][:, nearest_indices(original[1], size)]
        to_model = resize_matrix(original, (size, size), "nearest_floor")
        return ModelInput2D(_channels_first(placed), original, to_model, (0, 0, size, size), (size, size))
    if geometry != "test_script":
        raise ValueError(f"geometry must be one of ('predictor', 'test_script'), got {geometry!r}")
    padded, top, left = letterbox_layout(original, size)
    normalised = normalise(pixels, mean, std, np.float64)
    if not padded:
        placed = normalised[nearest_indices(original[0], size)][:, nearest_indices(original[1], size)]
        to_model = resize_matrix(original, (size, size), "nearest_floor")
        return ModelInput2D(_channels_first(placed), original, to_model, (0, 0, size, size), (size, size))
    canvas = np.zeros((size, size, normalised.shape[2]), dtype=normalised.dtype)
    canvas[top : top + original[0], left : left + original[1]] = normalised
    to_model = crop_or_pad_matrix((-top, -left))
    return ModelInput2D(_channels_first(canvas), original, to_model, (top, left, *original), original)


def _channels_first(hwc: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(hwc.transpose(2, 0, 1)).astype(np.float32)
