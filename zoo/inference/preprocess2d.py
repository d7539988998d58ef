"""SAM-Med2D image and prompt geometry, exactly as the upstream pipelines do it.

Two upstream paths exist and they use different geometries:

* the interactive predictor (``SammedPredictor``): normalise at the original size in float32 (its mean and
  std come from the model's float32 buffers, so numpy computes in float32), then stretch to ``S x S`` with
  nearest-neighbour resampling (aspect ratio not kept, no padding); prompts are scaled per axis; low-res
  logits go back by two bilinear resizes (to ``S x S``, then to the original size);
* the evaluation script (``test.py``): normalise in float64 (mean and std are Python lists), then zero-pad
  to ``S x S`` (centred) when *both* sides are smaller than ``S``, otherwise stretch like the predictor;
  masks come back by a bilinear resize to ``S x S`` followed by a centre crop (padded case) or a bilinear
  resize to the original size.

Every function here is a small pure function on arrays/tensors, so data modules can reuse them.
Images are ``H x W x C`` (as read from disk); model inputs are ``1 x C x S x S`` float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

ArrayLike = np.ndarray | Tensor


def _as_hwc_tensor(image: ArrayLike) -> Tensor:
    tensor = image if isinstance(image, Tensor) else torch.from_numpy(np.ascontiguousarray(image))
    if tensor.ndim != 3:
        raise ValueError(f"expected an H x W x C image, got shape {tuple(tensor.shape)}")
    return tensor


def normalize(
    image: ArrayLike,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """``(image - mean) / std`` per channel of an ``H x W x C`` image, computed in ``dtype``."""
    hwc = _as_hwc_tensor(image)
    if hwc.shape[-1] != len(pixel_mean) or len(pixel_mean) != len(pixel_std):
        raise ValueError(
            f"image has {hwc.shape[-1]} channels but pixel_mean/pixel_std have {len(pixel_mean)}/{len(pixel_std)}"
        )
    mean = torch.tensor(pixel_mean, dtype=dtype)
    std = torch.tensor(pixel_std, dtype=dtype)
    return (hwc.to(dtype) - mean) / std


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
    """Nearest-neighbour resize of an ``H x W x C`` tensor to ``size = (h, w)``, bit-identical to cv2 INTER_NEAREST."""
    rows = nearest_source_indices(image.shape[0], size[0])
    cols = nearest_source_indices(image.shape[1], size[1])
    return image[rows][:, cols]


def _to_model_input(hwc: Tensor) -> Tensor:
    return hwc.permute(2, 0, 1).unsqueeze(0).to(torch.float32).contiguous()


def preprocess_for_predictor(
    image: ArrayLike, image_size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> Tensor:
    """SAM-Med2D predictor input ``1 x C x S x S`` float32: normalise at the original size, nearest stretch to S x S.

    Normalisation runs in float32 like upstream, whose mean/std are the model's float32 buffers.
    """
    normalized = normalize(image, pixel_mean, pixel_std, dtype=torch.float32)
    return _to_model_input(resize_nearest(normalized, (image_size, image_size)))


@dataclass(frozen=True)
class Letterbox:
    """Where an original image sits inside the ``S x S`` model input of the evaluation path.

    ``padded`` is True when the image was centred on a zero canvas (``top``/``left`` are its offsets),
    False when it was stretched to ``S x S``.
    """

    original_size: tuple[int, int]
    image_size: int
    padded: bool
    top: int = 0
    left: int = 0


def letterbox_for(original_size: tuple[int, int], image_size: int) -> Letterbox:
    """The evaluation path's geometry: centred padding when BOTH sides are smaller than ``S``, else a stretch."""
    height, width = original_size
    if height < image_size and width < image_size:
        return Letterbox(original_size, image_size, True, (image_size - height) // 2, (image_size - width) // 2)
    return Letterbox(original_size, image_size, False)


def to_evaluation_frame(array: ArrayLike, letterbox: Letterbox) -> Tensor:
    """Place an ``H x W`` or ``H x W x C`` array in the ``S x S`` frame as ``test.py`` does.

    Centred zero padding or a nearest stretch, per ``letterbox``. Use the same call for the image (after
    normalisation) and for its ground-truth masks so that they stay aligned.
    """
    tensor = array if isinstance(array, Tensor) else torch.from_numpy(np.ascontiguousarray(array))
    if tuple(tensor.shape[:2]) != tuple(letterbox.original_size):
        raise ValueError(f"array is {tuple(tensor.shape[:2])} but the letterbox is for {letterbox.original_size}")
    size = letterbox.image_size
    if not letterbox.padded:
        return resize_nearest(tensor, (size, size))
    canvas = tensor.new_zeros((size, size, *tensor.shape[2:]))
    height, width = letterbox.original_size
    canvas[letterbox.top : letterbox.top + height, letterbox.left : letterbox.left + width] = tensor
    return canvas


def preprocess_for_evaluation(
    image: ArrayLike, image_size: int, pixel_mean: Sequence[float], pixel_std: Sequence[float]
) -> tuple[Tensor, Letterbox]:
    """SAM-Med2D ``test.py`` input: normalise, then centred zero padding or nearest stretch to ``S x S``.

    Normalisation runs in float64 (upstream's mean/std are Python lists) and the result is cast to float32.
    The padding value is 0 *after* normalisation (i.e. the mean colour), as upstream. Upstream reads
    images with cv2 and does not convert BGR to RGB; pass the channels in the order you want normalised.
    """
    normalized = normalize(image, pixel_mean, pixel_std, dtype=torch.float64)
    letterbox = letterbox_for((normalized.shape[0], normalized.shape[1]), image_size)
    return _to_model_input(to_evaluation_frame(normalized, letterbox)), letterbox


def scale_coords(coords: ArrayLike, original_size: tuple[int, int], image_size: int) -> Tensor:
    """Map ``(x, y)`` pixel coordinates from the original image to the stretched ``S x S`` input.

    ``x * (S / W)``, ``y * (S / H)`` computed in float64 (as upstream's numpy code) and returned as float32.
    Works on any ``... x 2`` array.
    """
    height, width = original_size
    points = torch.as_tensor(coords).to(torch.float64)
    if points.shape[-1] != 2:
        raise ValueError(f"coordinates must end in a dimension of size 2 (x, y), got shape {tuple(points.shape)}")
    scale = torch.tensor([image_size / width, image_size / height], dtype=torch.float64)
    return (points * scale).to(torch.float32)


def scale_boxes(boxes: ArrayLike, original_size: tuple[int, int], image_size: int) -> Tensor:
    """Map ``(x0, y0, x1, y1)`` boxes (``... x 4``) to the stretched ``S x S`` input, corner by corner."""
    corners = torch.as_tensor(boxes)
    if corners.shape[-1] != 4:
        raise ValueError(f"boxes must end in a dimension of size 4 (x0, y0, x1, y1), got shape {tuple(corners.shape)}")
    scaled = scale_coords(corners.reshape(*corners.shape[:-1], 2, 2), original_size, image_size)
    return scaled.reshape(*corners.shape[:-1], 4)


def upsample_bilinear(logits: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize (``align_corners=False``) of ``B x M x h x w`` logits to ``size``."""
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


def postprocess_for_predictor(low_res_logits: Tensor, image_size: int, original_size: tuple[int, int]) -> Tensor:
    """Predictor path back to the original image: bilinear to ``S x S``, then bilinear to ``(H, W)``."""
    return upsample_bilinear(upsample_bilinear(low_res_logits, (image_size, image_size)), original_size)


def postprocess_for_evaluation(low_res_logits: Tensor, letterbox: Letterbox) -> Tensor:
    """``test.py`` path back to the original image: bilinear to ``S x S``, then centre crop (padded) or bilinear."""
    size = letterbox.image_size
    full = upsample_bilinear(low_res_logits, (size, size))
    height, width = letterbox.original_size
    if letterbox.padded:
        return full[..., letterbox.top : letterbox.top + height, letterbox.left : letterbox.left + width]
    return upsample_bilinear(full, letterbox.original_size)

