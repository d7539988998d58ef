"""SAM's image geometry, shared by SAM and SAM-UNet: ``ResizeLongestSide`` (PIL bilinear on the uint8 image), then
``(x - mean) / std`` in float32 and zero padding at the bottom and right to ``S x S``.

Prompts are scaled by the resize factors of each axis (``apply_coords``: ``x * w' / W``, ``y * h' / H``); logits go
back by a bilinear resize to ``S x S``, a crop of the padding to ``h' x w'`` and a bilinear resize to the original
size (SAM's ``postprocess_masks``); masks are ``logits > 0``.

* SAM (``sam_vit_b``, 1024): three candidate masks, the best by predicted IoU kept; the previous low-res logits
  fed back as they are.
* SAM-UNet (``sam_unet_r34``/``r50``, 256; upstream ``SAM_UNET.infer`` and its datasets): one mask per prompt
  set, no IoU head; it was trained with boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.geometry.image2d import longest_side_shape, resize_longest_side_bilinear, resize_nearest
from zoo.geometry.index_map import IndexMap
from zoo.geometry.model_input2d import longest_side_input, longest_side_matrix
from zoo.geometry.model_input2d import normalise_and_pad as numpy_normalise_and_pad
from zoo.processors.base import DecodePolicy, ImageFrame, OriginalGridResult, ProcessorConfig, map_box_corners
from zoo.processors.images import rgb_uint8
from zoo.processors.sam_med2d import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from zoo.processors.sam_style_2d import SamStyle2DProcessor
from zoo.prompts.simulate import boxes_from_masks
from zoo.prompts.types import BoxPrompts, Prompts


def longest_side_frame_map(original: tuple[int, int], resized: tuple[int, int], size: int) -> IndexMap:
    """Original -> model input: scale each axis by ``resized / original``, then pad bottom/right to ``size``
    (:func:`zoo.geometry.model_input2d.longest_side_matrix`)."""
    return IndexMap(torch.from_numpy(longest_side_matrix(original, resized)), original, (size, size))


def normalise_and_pad(resized: np.ndarray, size: int, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """``(x - mean) / std`` of a resized ``h x w x 3`` uint8 image in float32, zero-padded bottom/right: ``3 x S x S``
    (:func:`zoo.geometry.model_input2d.normalise_and_pad`)."""
    return torch.from_numpy(numpy_normalise_and_pad(resized, size, mean, std))


def crop_and_resize_logits(full: Tensor, input_size: tuple[int, int], original: tuple[int, ...]) -> Tensor:
    """``B x M x S x S`` logits: crop the bottom/right padding to ``input_size``, bilinear to ``original``."""
    height, width = input_size
    cropped = full[..., :height, :width]
    return F.interpolate(cropped, tuple(int(s) for s in original), mode="bilinear", align_corners=False)


@dataclass
class LongestSideProcessorConfig(ProcessorConfig):
    """Longest-side resize to ``image_size``, ImageNet normalisation on 0..255, bottom/right zero padding."""

    processor_type = "longest_side"
    image_size: int = 1024
    decode: DecodePolicy = field(default_factory=DecodePolicy)
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD

    def __post_init__(self) -> None:
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)


class LongestSideProcessor(SamStyle2DProcessor):
    """The shared geometry; :class:`SamProcessor` and :class:`SamUNetProcessor` fix the family and defaults."""

    config: LongestSideProcessorConfig

    def prepare(self, image: Any, prompts: Prompts | None = None, source: str = "image") -> ImageFrame:
        size = self.config.image_size
        prepared = longest_side_input(rgb_uint8(image, source), size, self.config.pixel_mean, self.config.pixel_std)
        to_model = IndexMap(torch.from_numpy(prepared.to_model), prepared.original_shape, (size, size))
        meta = {"input_size": prepared.input_size}
        return ImageFrame(torch.from_numpy(prepared.model_input), prepared.original_shape, to_model, meta)

    def prepare_with_masks(self, image: Any, masks: list[np.ndarray] | Tensor, source: str = "image"):
        """The image and its ``N`` masks (nearest, as upstream's datasets resize labels) on the padded grid."""
        frame = self.prepare(image, source=source)
        return frame, _masks_longest_side(masks, frame, self.config.image_size)

    def to_original(self, low_res_logits: Tensor, frame: ImageFrame) -> OriginalGridResult:
        full = self.upsample(low_res_logits.float())
        logits = crop_and_resize_logits(full, frame.meta["input_size"], frame.original_shape)
        return OriginalGridResult(logits, self.binarize(logits))


def _masks_longest_side(masks: list[np.ndarray] | Tensor, frame: ImageFrame, size: int) -> Tensor:
    """Masks resized to the image's resized size with OpenCV's nearest neighbour and padded bottom/right:
    ``N x 1 x S x S`` bool (LiteMedSAM's training data: ``cv2.resize(gt, INTER_NEAREST)`` then ``pad_image``)."""
    if isinstance(masks, Tensor):
        stacked = masks.bool()
    elif len(masks):
        stacked = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks]))
    else:
        stacked = torch.zeros((0, *frame.original_shape), dtype=torch.bool)
    height, width = frame.meta["input_size"]
    resized = resize_nearest(stacked.permute(1, 2, 0), (height, width)).permute(2, 0, 1)
    return F.pad(resized[:, None], (0, size - width, 0, size - height))


@dataclass
class SamProcessorConfig(LongestSideProcessorConfig):
    """Meta's SAM (ViT-B, 1024): best of three masks by predicted IoU, ``logits > 0``, logits fed back."""

    processor_type = "sam"
    image_size: int = 1024
    decode: DecodePolicy = field(
        default_factory=lambda: DecodePolicy(multimask_output=True, binarize="logits", mask_feedback="logits")
    )


class SamProcessor(LongestSideProcessor):
    processor_type = "sam"
    config_class = SamProcessorConfig
    family = "sam"
    model_name = "SAM"
    prompt_kinds = frozenset({"points", "boxes", "masks"})


@dataclass
class SamUNetProcessorConfig(LongestSideProcessorConfig):
    """SAM-UNet (256): one mask per prompt set, ``logits > 0``."""

    processor_type = "sam_unet"
    image_size: int = 256
    decode: DecodePolicy = field(
        default_factory=lambda: DecodePolicy(multimask_output=False, binarize="logits", mask_feedback="logits")
    )


class SamUNetProcessor(LongestSideProcessor):
    """SAM-UNet's geometry (upstream ``dataset.py``): masks resized like the image (``ResizeLongestSide.apply_image``,
    PIL bilinear on the 0/1 mask) and padded; boxes drawn on the original mask, then scaled."""

    processor_type = "sam_unet"
    config_class = SamUNetProcessorConfig
    family = "sam_unet"
    model_name = "SAM-UNet"
    prompt_kinds = frozenset({"points", "boxes", "masks"})

    def prepare_with_masks(self, image: Any, masks: list[np.ndarray] | Tensor, source: str = "image"):
        """The image and its ``N`` masks on the padded grid; each mask resized as a 0/1 uint8 image with PIL's
        bilinear filter, as the image (upstream ``dataset.py``: ``transforms.apply_image(image=pre_mask)``)."""
        frame = self.prepare(image, source=source)
        size = self.config.image_size
        arrays = [np.asarray(m.cpu() if isinstance(m, Tensor) else m).astype(np.uint8) for m in masks]
        resized = [torch.from_numpy(resize_longest_side_bilinear(a, size) > 0) for a in arrays]
        if not resized:
            return frame, torch.zeros(0, 1, size, size, dtype=torch.bool)
        height, width = frame.meta["input_size"]
        stacked = torch.stack(resized)[:, None]
        return frame, F.pad(stacked, (0, size - width, 0, size - height))

    def target_boxes(
        self,
        masks: Tensor,
        jitter: str = "none",
        generator: torch.Generator | None = None,
        frames: Sequence[ImageFrame] | None = None,
        original_masks: Sequence[Tensor] | None = None,
    ) -> BoxPrompts:
        """Upstream ``dataset.py``: the box of the largest component of the ORIGINAL mask, jittered there
        (``get_boxes_from_mask``: at most 5 original pixels; none in testing), then scaled to the resized frame
        (``apply_boxes_torch``). Without original masks, the model-grid masks are boxed instead."""
        if frames is None or original_masks is None:
            return self.boxes_from_masks(masks, jitter, generator)
        boxes = []
        for frame, mask in zip(frames, original_masks):
            original = boxes_from_masks(mask.reshape(frame.original_shape)[None].cpu(), jitter, generator)
            boxes.append(map_box_corners(original, frame.to_model))
        valid = torch.cat([b.valid for b in boxes]).to(masks.device)
        lo = torch.cat([b.lo for b in boxes]).to(masks.device)
        hi = torch.cat([b.hi for b in boxes]).to(masks.device)
        return BoxPrompts(lo, hi, valid, tuple(masks.shape[1:]))


__all__ = [
    "LongestSideProcessor",
    "SamProcessor",
    "SamProcessorConfig",
    "SamUNetProcessor",
    "SamUNetProcessorConfig",
    "longest_side_shape",
]
