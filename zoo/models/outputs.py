"""Typed model outputs."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class MaskPrediction:
    """What a mask decoder returns.

    Attributes:
        low_res_logits: ``B x M x *low_res_grid`` mask logits (4x the embedding grid per axis).
        iou_predictions: ``B x M`` predicted IoU per mask, or ``None`` for decoders without an IoU head
            (SAM-UNet).
    """

    low_res_logits: Tensor
    iou_predictions: Tensor | None = None

    @property
    def num_masks(self) -> int:
        return self.low_res_logits.shape[1]
