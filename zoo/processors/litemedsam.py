"""LiteMedSAM's processor: the authors' ``CVPR24_LiteMedSAM_infer.py`` procedure.

Forward: resize the longest side to 256 with OpenCV's ``INTER_AREA`` (new size ``int(x * 256 / max(H, W) + 0.5)``),
min-max normalise the resized image to [0, 1] (denominator clipped at 1e-8), zero-pad bottom/right to 256 x 256.
Boxes ``(x_min, y_min, x_max, y_max)`` with the LAST covered index as max (the authors take ``np.max`` of a mask's
coordinates) are scaled by ``int(c * 256 / max(H, W))`` (truncation); points like SAM's ``apply_coords``.
Back: the 256 x 256 low-res logits are cropped to the resized image and resized bilinearly to ``H x W``;
``sigmoid > 0.5``. Single-mask output; the previous low-res logits are fed back as they are.

Boxes derived from masks (:meth:`LiteMedSAMProcessor.boxes_from_masks`): tight around all of the mask, first and
last index.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.geometry.area_resize import resize_area
from zoo.geometry.index_map import IndexMap
from zoo.geometry.model_input2d import litemedsam_box, litemedsam_input
from zoo.processors.base import DecodePolicy, ImageFrame, OriginalGridResult, ProcessorConfig
from zoo.processors.images import rgb_uint8
from zoo.processors.longest_side import crop_and_resize_logits
from zoo.processors.sam_style_2d import SamStyle2DProcessor
from zoo.prompts.simulate import boxes_from_masks
from zoo.prompts.types import BoxPrompts, Prompts


@dataclass
class LiteMedSAMProcessorConfig(ProcessorConfig):
    """LiteMedSAM's preprocessing and decode policy (the released model's defaults)."""

    processor_type = "litemedsam"
    image_size: int = 256
    decode: DecodePolicy = field(
        default_factory=lambda: DecodePolicy(multimask_output=False, binarize="sigmoid", mask_feedback="logits")
    )


class LiteMedSAMProcessor(SamStyle2DProcessor):
    """Image, prompts and masks of LiteMedSAM (see the module docstring)."""

    processor_type = "litemedsam"
    config_class = LiteMedSAMProcessorConfig
    family = "litemedsam"
    model_name = "LiteMedSAM"
    prompt_kinds = frozenset({"points", "boxes", "masks"})
    config: LiteMedSAMProcessorConfig

    def default_mask_prompt_shape(self) -> tuple[int, ...]:
        # The TinyViT embedding is image_size / 4, and the decoder upscales it 4x: low-res = input size.
        return self.input_shape

    def prepare(self, image: Any, prompts: Prompts | None = None, source: str = "image") -> ImageFrame:
        size = self.config.image_size
        prepared = litemedsam_input(rgb_uint8(image, source), size)
        to_model = IndexMap(torch.from_numpy(prepared.to_model), prepared.original_shape, (size, size))
        meta = {"input_size": prepared.input_size}
        return ImageFrame(torch.from_numpy(prepared.model_input), prepared.original_shape, to_model, meta)

    def _map_prompts(self, prompts: Prompts, frame: ImageFrame) -> Prompts:
        points = None if prompts.points is None else prompts.points.mapped(frame.to_model)
        boxes = None if prompts.boxes is None else self.scale_box(prompts.boxes, frame.original_shape)
        return Prompts(points, boxes, prompts.masks)

    def scale_box(self, boxes: BoxPrompts, original_shape: tuple[int, ...]) -> BoxPrompts:
        """The authors' ``resize_box_to_256``: every corner ``int(c * 256 / max(H, W))`` (truncated, in float64)."""
        lo, hi = litemedsam_box(boxes.lo.cpu().numpy(), boxes.hi.cpu().numpy(), original_shape, self.config.image_size)
        lo_t, hi_t = (torch.from_numpy(corner).to(boxes.lo.device) for corner in (lo, hi))
        return BoxPrompts(lo_t, hi_t, boxes.valid, self.input_shape)

    def boxes_from_masks(
        self, masks: Tensor, jitter: str = "none", generator: torch.Generator | None = None
    ) -> BoxPrompts:
        """The authors' box of each mask: around ALL its pixels, ``(x_min, y_min, x_max, y_max)`` with the last
        covered index as max (``np.min``/``np.max`` of the mask's coordinates); ``jitter="litemedsam"`` is their
        training jitter (each side outwards by ``randint(0, 10)``, clipped to the image)."""
        boxes = boxes_from_masks(masks, jitter, generator, component="all")
        hi = torch.where(boxes.valid[:, None], boxes.hi - 1, boxes.hi)
        return BoxPrompts(boxes.lo, hi, boxes.valid, boxes.spatial_shape)

    def box_from_previous_mask(self, mask: Tensor, frame: ImageFrame, margin: int = 3) -> BoxPrompts | None:
        """The authors' box from the previous slice's mask (``CVPR24_LiteMedSAM_infer.py``, 3D procedure): the mask
        resized like the image (OpenCV ``INTER_AREA`` on the uint8 mask, longest side to 256) and padded, its tight
        box ``(x_min, y_min, x_max, y_max)`` (last covered index) on the 256 grid grown by ``margin`` (their
        ``bbox_shift=3``) and clipped to ``[0, 256]`` (they clip the max to the side length, not side - 1), used on the
        model grid as it is. None when the resized mask is empty (they then reuse the middle slice's box).

        The authors resize a mask holding the object's index (1 for the first box of a file, 2 for the second...),
        which moves the rounding of boundary pixels for later objects; this is their first object's rule (mask = 1).
        """
        height, width = frame.meta["input_size"]
        previous = mask.detach().reshape(frame.original_shape).to(torch.uint8).cpu().numpy()
        resized = resize_area(previous, height, width)
        if not resized.any():
            return None
        rows, cols = np.nonzero(resized)  # the bottom/right padding adds no foreground
        side = self.config.image_size
        lo = torch.tensor([[max(0, int(rows.min()) - margin), max(0, int(cols.min()) - margin)]], dtype=torch.float32)
        hi = torch.tensor([[min(side, int(rows.max()) + margin), min(side, int(cols.max()) + margin)]], dtype=torch.float32)
        return BoxPrompts(lo, hi, torch.ones(1, dtype=torch.bool), self.input_shape)

    def to_original(self, low_res_logits: Tensor, frame: ImageFrame) -> OriginalGridResult:
        logits = crop_and_resize_logits(low_res_logits.float(), frame.meta["input_size"], frame.original_shape)
        return OriginalGridResult(logits, self.binarize(logits))

    def prepare_with_masks(self, image: Any, masks: list[np.ndarray] | Tensor, source: str = "image"):
        """The image and its ``N`` masks (nearest resize, bottom/right padding) on the ``S x S`` grid."""
        from zoo.processors.longest_side import _masks_longest_side

        frame = self.prepare(image, source=source)
        return frame, _masks_longest_side(masks, frame, self.config.image_size)


__all__ = ["LiteMedSAMProcessor", "LiteMedSAMProcessorConfig"]
