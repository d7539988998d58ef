"""What the 2D SAM-style families share: prompts in ``(x, y)`` for SAM's prompt encoder, and a bilinear upsampling of
low-res logits to the model input."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from zoo.geometry.image2d import upsample_bilinear
from zoo.processors.base import Processor
from zoo.prompts.types import Prompts


class SamStyle2DProcessor(Processor):
    """Base of the 2D processors: model inputs ``3 x S x S``; points ``(x, y)``, boxes ``(x0, y0, x1, y1)``."""

    spatial_dims = 2

    def model_kwargs(self, prompts: Prompts) -> dict[str, Any]:
        """Containers on the model grid (index order) -> SAM's ``(x, y)`` points and ``(x0, y0, x1, y1)`` boxes."""
        out: dict[str, Any] = {"points": None, "boxes": None, "masks": None}
        if prompts.points is not None:
            points = prompts.points
            out["points"] = (points.coords.flip(-1).contiguous(), points.labels)
        if prompts.boxes is not None:
            out["boxes"] = self.box_corners(prompts.boxes.lo, prompts.boxes.hi)
        if prompts.masks is not None:
            out["masks"] = prompts.masks.logits
        return out

    @staticmethod
    def box_corners(lo: Tensor, hi: Tensor) -> Tensor:
        """``B x 2`` index-order corners -> ``B x 4`` ``(x0, y0, x1, y1)``."""
        return torch.stack([lo[:, 1], lo[:, 0], hi[:, 1], hi[:, 0]], dim=1)

    def upsample(self, low_res_logits: Tensor) -> Tensor:
        return upsample_bilinear(low_res_logits, self.input_shape)
