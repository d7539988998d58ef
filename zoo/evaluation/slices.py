"""Box-prompted evaluation of a 2D model on the slices of a labelled volume, scored on each slice's own grid.

Every slice goes through the model's processor (its preprocessing, its box from the label as its authors derive
boxes from masks, its decode policy and its way back), so a model is scored the way it is served.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from zoo.data.slicer import SliceSample
from zoo.processors import Processor, processor_for
from zoo.prompts.types import Prompts


@dataclass(frozen=True)
class SliceResult:
    """One structure on one slice: the prompt box, the predicted mask and its Dice with the label."""

    class_name: str
    slice_index: int
    box: tuple[float, float, float, float]
    mask: np.ndarray
    dice: float


def dice_score(prediction: np.ndarray, target: np.ndarray) -> float:
    """Dice of two bool masks; 1.0 when both are empty."""
    total = int(prediction.sum()) + int(target.sum())
    return 1.0 if total == 0 else 2.0 * int((prediction & target).sum()) / total


@torch.inference_mode()
def segment_slices_with_boxes(
    model: nn.Module,
    slices: Sequence[SliceSample],
    processor: Processor | None = None,
    progress: Callable[[Iterable], Iterable] | None = None,
) -> list[SliceResult]:
    """Segment every (structure, slice) sample with a box derived from its label; one image encoding per slice."""
    processor = processor or processor_for(model)
    device = next(model.parameters()).device
    by_slice: dict[int, list[SliceSample]] = defaultdict(list)
    for sample in slices:
        by_slice[sample.slice_index].append(sample)
    results = []
    indices = sorted(by_slice)
    for index in progress(indices) if progress else indices:
        samples = by_slice[index]
        frame = processor.prepare(samples[0].image, source=f"slice {index}")
        encoding = model.encode_image(frame.model_input[None].to(device))
        for sample in samples:
            target = torch.from_numpy(sample.mask)[None]
            boxes = processor.boxes_from_masks(target)
            on_model = processor.to_model_space(Prompts(boxes=boxes), frame)
            decoded = processor.segment(model, encoding, on_model.to(device))
            mask = processor.to_original(decoded.low_res_logits, frame).mask.reshape(sample.mask.shape).cpu().numpy()
            box = (float(boxes.lo[0, 1]), float(boxes.lo[0, 0]), float(boxes.hi[0, 1]), float(boxes.hi[0, 0]))
            results.append(SliceResult(sample.class_name, index, box, mask, dice_score(mask, sample.mask)))
    return results


def mean_dice_per_class(results: Iterable[SliceResult]) -> dict[str, float]:
    """Mean Dice over the slices of each structure, in name order."""
    scores: dict[str, list[float]] = defaultdict(list)
    for result in results:
        scores[result.class_name].append(result.dice)
    return {name: float(np.mean(values)) for name, values in sorted(scores.items())}
