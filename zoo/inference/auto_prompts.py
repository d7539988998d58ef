"""Automatic prompts for a 2D model when a user has none: **outside the papers' protocols**.

None of the zoo's papers evaluates its model without a user's prompt. MedSAM's users who have no box are told to
give the whole image as the box; SAM's automatic mask generator prompts a grid of points. Both are offered here,
marked as such in every output (file names with ``auto``, the label table, a ``<stem>_auto_prompts.json`` record and
the command's printout), never as a published result:

* ``"box"``: one box around the whole image, made by the family's own box rule
  (:meth:`~zoo.processors.Processor.boxes_from_masks` of an all-foreground mask: LiteMedSAM's last index, the
  others' one-past-the-end).
* ``"grid"``: an ``n x n`` grid of single positive clicks at the cell centres (one image embedding), each decoded
  alone; masks that are empty, whose predicted IoU is under ``min_iou`` (families with an IoU head), or that
  overlap a better one by IoU > ``max_overlap`` are dropped; the rest become objects ``auto_0, auto_1, ...`` of
  one label map, numbered from the least to the most confident, so that where two overlap the more confident
  wins (the label map's later-object-wins rule).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.errors import PromptError
from zoo.processors import Processor
from zoo.prompts.types import BoxPrompts, Prompts
from zoo.prompts.validate import points_from_user

AUTO_MODES = ("box", "grid")
AUTO_NOTE = "automatic prompts: outside the papers' protocols (no published evaluation uses them); masks unvalidated"


def whole_image_box(processor: Processor, shape: tuple[int, int]) -> Prompts:
    """The whole image as one box, by the family's own box-from-mask rule (original grid)."""
    if processor.spatial_dims != 2 or "boxes" not in processor.prompt_kinds:
        raise PromptError(f"automatic box prompts need a 2D model that takes boxes; {processor.model_name} does not")
    boxes = processor.boxes_from_masks(torch.ones((1, *shape), dtype=torch.bool))
    return Prompts(boxes=BoxPrompts(boxes.lo, boxes.hi, boxes.valid, tuple(shape)))


def box_coordinates(boxes: BoxPrompts) -> list[float]:
    """``(x0, y0, x1, y1)`` of the first box (for the record written beside the masks)."""
    lo, hi = boxes.lo[0].tolist(), boxes.hi[0].tolist()
    return [lo[1], lo[0], hi[1], hi[0]]


def grid_clicks(shape: tuple[int, int], per_side: int) -> list[list[float]]:
    """``per_side x per_side`` click positions ``(x, y)`` at the cell centres of the image."""
    if per_side < 1:
        raise ValueError(f"the grid needs at least one point per side, got {per_side}")
    height, width = shape
    return [[(col + 0.5) * width / per_side - 0.5, (row + 0.5) * height / per_side - 0.5]
            for row in range(per_side) for col in range(per_side)]


@dataclass
class GridObject:
    """One kept mask of the grid mode: the click that made it, its mask and predicted IoU."""

    click: list[float]
    mask: Tensor
    iou_prediction: float | None


def segment_grid(
    predict: Any, shape: tuple[int, int], per_side: int = 8, min_iou: float = 0.7, max_overlap: float = 0.7
) -> list[GridObject]:
    """The grid mode (see the module docstring). ``predict(prompts)`` segments original-grid prompts on the image
    already embedded (a :class:`~zoo.inference.Predictor`'s ``predict_prompts``)."""
    found = []
    for click in grid_clicks(shape, per_side):
        prediction = predict(Prompts(points=points_from_user([click], [1], shape, "xy")))
        mask = prediction.masks[0].reshape(shape)
        iou = None if prediction.iou_predictions is None else float(prediction.iou_predictions.reshape(-1)[0])
        if not bool(mask.any()) or (iou is not None and iou < min_iou):
            continue
        found.append(GridObject(click, mask, iou))
    found.sort(key=lambda obj: -(obj.iou_prediction if obj.iou_prediction is not None else 0.0))
    kept: list[GridObject] = []
    for candidate in found:
        if all(_mask_iou(candidate.mask, other.mask) <= max_overlap for other in kept):
            kept.append(candidate)
    return kept[::-1]


def _mask_iou(a: Tensor, b: Tensor) -> float:
    union = int((a | b).sum())
    return 0.0 if union == 0 else int((a & b).sum()) / union


def grid_mask_list(objects: list[GridObject]) -> list[np.ndarray]:
    """The kept masks as uint8 arrays, in label order."""
    return [obj.mask.to(torch.uint8).cpu().numpy() for obj in objects]




def auto_to_folder(
    model: Any,
    image_path: str | Path,
    stem: str,
    mode: str,
    output_dir: str | Path,
    overwrite: bool = False,
    processor: Processor | None = None,
    per_side: int = 8,
) -> list[Path]:
    """Segment a 2D image with automatic prompts and write the result, marked ``auto`` (see the module docstring):
    ``"box"``: ``<stem>_auto_box_mask.png``; ``"grid"``: ``<stem>_auto_labels.png`` with its label table; both with
    ``<stem>_auto_prompts.json`` recording the prompts and that they are outside the papers' protocols."""
    from zoo.inference.predictor import Predictor
    from zoo.io.labels import label_map, label_table
    from zoo.io.masks import MaskSet
    from zoo.io.png import read_image

    if mode not in AUTO_MODES:
        raise ValueError(f"automatic prompts are one of {AUTO_MODES}, got {mode!r}")
    names = [f"{stem}_auto_box_mask.png"] if mode == "box" else [f"{stem}_auto_labels.png", f"{stem}_auto_labels.json"]
    record_name = f"{stem}_auto_prompts.json"
    files = MaskSet(output_dir, overwrite)
    files.check_targets([*names, record_name])
    image = read_image(image_path)
    predictor = Predictor(model, processor)
    predictor.set_image(image, str(image_path))
    shape = (int(image.shape[0]), int(image.shape[1]))
    record: dict[str, Any] = {"image": str(image_path), "mode": mode, "note": AUTO_NOTE,
                              "model": predictor.processor.model_name}
    with files:
        if mode == "box":
            prompts = whole_image_box(predictor.processor, shape)
            assert prompts.boxes is not None
            record["box"] = box_coordinates(prompts.boxes)
            mask = predictor.predict_prompts(prompts).masks[0].to(torch.uint8).cpu().numpy()
            files.add(names[0], mask, Path(image_path))
        else:
            kept = segment_grid(predictor.predict_prompts, shape, per_side)
            record["grid_per_side"] = per_side
            record["objects"] = [{"name": f"auto_{i}", "click": obj.click, "iou_prediction": obj.iou_prediction}
                                 for i, obj in enumerate(kept)]
            masks = grid_mask_list(kept) or [np.zeros(shape, dtype=np.uint8)]
            labels = label_map(masks) if kept else masks[0]
            files.add_labels(names[0], labels, Path(image_path))
            files.add_json(names[1], label_table([f"auto_{i}" for i in range(len(kept))]))
        files.add_json(record_name, record)
    return list(files.written)


__all__ = ["AUTO_MODES", "AUTO_NOTE", "GridObject", "auto_to_folder", "box_coordinates", "grid_clicks",
           "grid_mask_list", "segment_grid", "whole_image_box"]
