"""SAM-Med2D's processor: its two upstream geometries, its decode policy and its mask feedback.

* ``geometry="predictor"`` (the default, upstream's ``SammedPredictor``): normalise at the original size in float32
  (mean and std come from the model's float32 buffers), stretch to ``S x S`` with OpenCV's nearest neighbour (aspect
  ratio not kept, no padding); prompts scaled per axis as ``apply_coords``; logits back by two bilinear resizes (to
  ``S x S``, then to the original size).
* ``geometry="test_script"`` (upstream ``test.py``, ``train.py``'s data): normalise in float64 (mean and std are
  Python lists), then centred zero padding when BOTH sides are below ``S``, otherwise the same stretch; logits back
  by a bilinear resize to ``S x S`` and a centre crop (padded) or a bilinear resize.

Decode policy (both): three candidate masks, the one with the highest predicted IoU kept, ``sigmoid > 0.5``; the
previous mask is fed back as sigmoid probabilities (SAM-Med2D was trained on them).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor

from zoo.geometry.image2d import Letterbox, resize_nearest, upsample_bilinear
from zoo.geometry.index_map import IndexMap
from zoo.geometry.model_input2d import sam_med2d_input
from zoo.processors.base import DecodePolicy, ImageFrame, OriginalGridResult, ProcessorConfig
from zoo.processors.images import rgb_uint8
from zoo.processors.sam_style_2d import SamStyle2DProcessor
from zoo.prompts.types import Prompts

#: SAM's ImageNet statistics on the 0..255 scale (SAM-Med2D's pixel_mean / pixel_std).
SAM_PIXEL_MEAN = (123.675, 116.28, 103.53)
SAM_PIXEL_STD = (58.395, 57.12, 57.375)

Geometry2D = Literal["predictor", "test_script"]
GEOMETRIES = ("predictor", "test_script")


@dataclass
class SamMed2DProcessorConfig(ProcessorConfig):
    """SAM-Med2D's preprocessing and decode policy; the defaults are the released sam-med2d_b's.

    ``geometry`` is what inference uses (``predictor``: upstream's predictor; ``test_script``: upstream's
    ``test.py``, the protocol behind the paper's tables); ``training_geometry`` is what the training data use
    (upstream ``train.py``: the test-script geometry).
    """

    processor_type = "sam_med2d"
    image_size: int = 256
    decode: DecodePolicy = field(
        default_factory=lambda: DecodePolicy(multimask_output=True, binarize="sigmoid", mask_feedback="sigmoid")
    )
    pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN
    pixel_std: tuple[float, float, float] = SAM_PIXEL_STD
    geometry: Geometry2D = "predictor"
    training_geometry: Geometry2D = "test_script"

    def __post_init__(self) -> None:
        self.pixel_mean, self.pixel_std = tuple(self.pixel_mean), tuple(self.pixel_std)
        for name in ("geometry", "training_geometry"):
            if getattr(self, name) not in GEOMETRIES:
                raise ValueError(f"{name} must be one of {GEOMETRIES}, got {getattr(self, name)!r}")


class SamMed2DProcessor(SamStyle2DProcessor):
    """Image, prompts and masks of SAM-Med2D (see the module docstring)."""

    processor_type = "sam_med2d"
    config_class = SamMed2DProcessorConfig
    family = "sam_med2d"
    model_name = "SAM-Med2D"
    prompt_kinds = frozenset({"points", "boxes", "masks"})
    config: SamMed2DProcessorConfig

    def prepare(
        self, image: Any, prompts: Prompts | None = None, source: str = "image", geometry: Geometry2D | None = None
    ) -> ImageFrame:
        """``3 x S x S`` model input of an ``H x W x 3`` uint8 RGB image, in ``geometry`` (default: the config's)."""
        geometry = geometry or self.config.geometry
        if geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {geometry!r}")
        size = self.config.image_size
        config = self.config
        prepared = sam_med2d_input(rgb_uint8(image, source), size, config.pixel_mean, config.pixel_std, geometry)
        original = prepared.original_shape
        to_model = IndexMap(torch.from_numpy(prepared.to_model), original, (size, size))
        meta: dict[str, Any] = {"geometry": geometry}
        if geometry == "test_script":
            meta["letterbox"] = Letterbox.for_size(original, size)
        return ImageFrame(torch.from_numpy(prepared.model_input), original, to_model, meta)

    def prepare_with_masks(
        self, image: Any, masks: list[np.ndarray] | Tensor, source: str = "image"
    ) -> tuple[ImageFrame, Tensor]:
        """The training geometry applied to an image and its ``N`` object masks: the frame and ``N x 1 x S x S`` bool."""
        frame = self.prepare(image, source=source, geometry=self.config.training_geometry)
        return frame, place_masks(masks, frame, self.config.image_size)

    def to_original(self, low_res_logits: Tensor, frame: ImageFrame) -> OriginalGridResult:
        full = self.upsample(low_res_logits.float())
        letterbox = frame.meta.get("letterbox")
        if letterbox is not None:
            logits = letterbox.logits_to_original(full)
        else:
            logits = upsample_bilinear(full, frame.original_shape)
        return OriginalGridResult(logits, self.binarize(logits))


def place_masks(masks: list[np.ndarray] | Tensor, frame: ImageFrame, image_size: int) -> Tensor:
    """``N`` ``H x W`` masks on the frame's ``S x S`` grid exactly like its image (letterbox or nearest stretch)."""
    if isinstance(masks, Tensor):
        stacked = masks.bool()
    elif len(masks):
        stacked = torch.from_numpy(np.stack([np.asarray(m, dtype=bool) for m in masks]))
    else:
        return torch.zeros(0, 1, image_size, image_size, dtype=torch.bool)
    hwn = stacked.permute(1, 2, 0)
    letterbox = frame.meta.get("letterbox")
    placed = letterbox.place(hwn) if letterbox is not None else resize_nearest(hwn, (image_size, image_size))
    return placed.permute(2, 0, 1)[:, None].contiguous()

