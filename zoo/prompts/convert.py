"""Explicit conversion from the shared prompt containers to what each model family's prompt encoder takes.

Both functions return keyword arguments for ``model.prompt_encoder(...)`` / ``model(...)``:
``{"points": (coords, labels) | None, "boxes": Tensor | None, "masks": Tensor | None}``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts

SAM_MED3D_INPUT_SIZE = (128, 128, 128)
SAM_MED2D_INPUT_SIZE = 256


def _check_mask_prompt(masks: MaskPrompts, image_size: Sequence[int], family: str) -> None:
    expected = tuple(s // 4 for s in image_size)
    if masks.spatial_shape != expected:
        raise ValueError(
            f"{family} takes mask prompts at a quarter of the input size {tuple(image_size)}, i.e. {expected}; "
            f"got {masks.spatial_shape}"
        )


def sam_med3d_prompts(
    points: PointPrompts | None = None,
    masks: MaskPrompts | None = None,
    boxes: BoxPrompts | None = None,
    image_size: Sequence[int] = SAM_MED3D_INPUT_SIZE,
) -> dict[str, Any]:
    """Prompts for SAM-Med3D: points in tensor-index order ``(dim2, dim3, dim4)`` of the crop, unchanged.

    The crop must be ``image_size`` (128^3 for the released model); mask prompts are logits at a quarter of it
    (32^3). SAM-Med3D has no working box prompt (upstream indexes point embeddings that do not exist), so
    ``boxes`` raises.
    """
    if boxes is not None:
        raise ValueError("SAM-Med3D has no box prompt (upstream's box embedding is broken); use points or masks")
    size = tuple(int(s) for s in image_size)
    out: dict[str, Any] = {"points": None, "boxes": None, "masks": None}
    if points is not None:
        if points.ndim != 3 or points.spatial_shape != size:
            raise ValueError(
                f"SAM-Med3D points must live on the {size} crop grid, "
                f"got {points.ndim}-D points on {points.spatial_shape}"
            )
        out["points"] = (points.coords, points.labels)
    if masks is not None:
        _check_mask_prompt(masks, size, "SAM-Med3D")
        out["masks"] = masks.logits
    return out


def sam_med2d_prompts(
    points: PointPrompts | None = None,
    boxes: BoxPrompts | None = None,
    masks: MaskPrompts | None = None,
    image_size: int = SAM_MED2D_INPUT_SIZE,
    mask_as_probabilities: bool = True,
) -> dict[str, Any]:
    """Prompts for SAM-Med2D (and SAM / SAM-UNet): ``(x, y)`` pixels of the ``image_size`` square input.

    Points go from ``(row, col)`` to ``(x, y) = (col, row)``; boxes become ``(x0, y0, x1, y1)`` with the
    exclusive ``hi`` corner as upstream's boxes. Every box must be valid. SAM-Med2D's evaluation and training
    feed the previous mask as ``sigmoid(logits)``, not logits; ``mask_as_probabilities`` (default True)
    reproduces that.
    """
    size = (int(image_size), int(image_size))
    out: dict[str, Any] = {"points": None, "boxes": None, "masks": None}
    if points is not None:
        if points.ndim != 2 or points.spatial_shape != size:
            raise ValueError(
                f"SAM-Med2D points must live on the {size} input grid, "
                f"got {points.ndim}-D points on {points.spatial_shape}"
            )
        out["points"] = (points.coords.flip(-1).contiguous(), points.labels)
    if boxes is not None:
        if boxes.ndim != 2 or boxes.spatial_shape != size:
            raise ValueError(
                f"SAM-Med2D boxes must live on the {size} input grid, "
                f"got {boxes.ndim}-D boxes on {boxes.spatial_shape}"
            )
        if not bool(boxes.valid.all()):
            missing = torch.nonzero(~boxes.valid).flatten().tolist()
            raise ValueError(f"no box for samples {missing} (empty masks); drop them or prompt them with points")
        out["boxes"] = torch.stack([boxes.lo[:, 1], boxes.lo[:, 0], boxes.hi[:, 1], boxes.hi[:, 0]], dim=1)
    if masks is not None:
        _check_mask_prompt(masks, size, "SAM-Med2D")
        out["masks"] = torch.sigmoid(masks.logits) if mask_as_probabilities else masks.logits
    return out
