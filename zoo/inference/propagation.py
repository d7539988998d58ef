"""Slice propagation: segment an object through a stack of 2D slices from one 3D box, with any 2D family.

The protocol is LiteMedSAM's (``CVPR24_LiteMedSAM_infer.py``, ``MedSAM_infer_npz_3D``), the one published slice
propagation among the zoo's families:

1. the middle slice ``int((z_max - z_min) / 2 + z_min)`` is segmented with the 3D box's 2D box;
2. going up from the middle slice, then down from the slice below it, each slice gets its box from the previous
   slice's mask (the slice segmented just before it, on the middle side) by the family's rule
   (:meth:`zoo.processors.Processor.box_from_previous_mask`), or the middle box again when that mask is empty.

Every slice goes through the family's processor (``prepare``, ``to_model_space``, ``decode``, ``to_original``) and the
model's ``encode_image``, exactly as one 2D image would.

Which slices: the authors' current code (bowang-lab/MedSAM, LiteMedSAM branch, ``CVPR24_LiteMedSAM_infer.py`` since
commit 2a5a055, May 2024) segments every slice of the box, the end slices ``z_min`` and ``z_max`` included
(``z_max = min(z_max + 1, D)`` before ``range(z_middle, z_max)``, ``z_min = max(-1, z_min - 1)`` before
``range(z_middle - 1, z_min, -1)``). That is the default here (``include_ends=True``) and what the authors' parity
fixture reproduces. Earlier revisions (up to 0c044e9, April 2024) looped ``range(z_middle, z_max)`` and
``range(z_middle - 1, z_min, -1)`` and left both end slices empty; ``include_ends=False`` gives that behaviour.

Example::

    model = zoo.from_pretrained("litemedsam")
    masks = propagate_box(model, processor_for(model), ct_slices_uint8, (x0, y0, z0, x1, y1, z1)).masks
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.errors import PromptError
from zoo.processors import ImageFrame, Processor
from zoo.prompts.types import BoxPrompts, Prompts
from zoo.prompts.validate import boxes_from_user

#: The authors' ``bbox_shift``: how far the box from a previous mask is grown (LiteMedSAM: on the 256 grid).
DEFAULT_MARGIN = 3


@dataclass
class Propagation:
    """The result of :func:`propagate_box`.

    Attributes:
        masks: ``D x H x W`` bool; slices that were not segmented are empty.
        slices: the slice indices in the order they were segmented (middle, upwards, then downwards).
        boxes: per segmented slice, the box the model got, ``(x0, y0, x1, y1)`` on the model grid.
        from_previous: per segmented slice, whether its box came from the previous slice's mask (False: the
            middle box, on the middle slice or after an empty mask).
    """

    masks: Tensor
    slices: list[int] = field(default_factory=list)
    boxes: dict[int, Tensor] = field(default_factory=dict)
    from_previous: dict[int, bool] = field(default_factory=dict)


def slice_order(z_min: int, z_max: int, include_ends: bool = True) -> tuple[int, list[int], list[int]]:
    """``(z_middle, upwards, downwards)`` of the protocol: ``z_middle .. z_max`` and ``z_middle - 1 .. z_min`` (the
    authors' current loops); without ``include_ends``, their earlier ``range(z_middle, z_max)`` and
    ``range(z_middle - 1, z_min, -1)``, which leave ``z_max`` and ``z_min`` out."""
    middle = int((z_max - z_min) / 2 + z_min)
    end = 1 if include_ends else 0
    return middle, list(range(middle, z_max + end)), list(range(middle - 1, z_min - end, -1))


def _as_slices(slices: Any) -> Sequence[Any]:
    if isinstance(slices, Tensor):
        return slices.detach().cpu().numpy()
    if isinstance(slices, np.ndarray):
        return slices
    return list(slices)


@torch.inference_mode()
def propagate_box(
    model: nn.Module,
    processor: Processor,
    slices: Any,
    box3d: Sequence[float],
    margin: int = DEFAULT_MARGIN,
    include_ends: bool = True,
    source: str = "volume",
    beyond_box: bool = False,
) -> Propagation:
    """Segment one object through ``slices`` from a 3D box, slice by slice (see the module docstring).

    Args:
        model: a 2D zoo model (any family whose processor takes boxes); run in eval mode, its mode restored after.
        processor: the model's processor (:func:`zoo.processors.processor_for`).
        slices: ``D x H x W`` (grey) or ``D x H x W x 3`` uint8 slices (numpy, tensor, or a sequence of 2D images),
            each what the processor's ``prepare`` takes (e.g. CT windowed to 0..255).
        box3d: ``(x_min, y_min, z_min, x_max, y_max, z_max)`` in pixels and slice indices, max inclusive (the
            authors' ``boxes`` of a 3D file: ``np.min`` / ``np.max`` of a label's coordinates).
        margin: how far a box from a previous mask is grown (LiteMedSAM: ``bbox_shift`` on its 256 grid; the default
            rule: original pixels).
        include_ends: segment the end slices ``z_min`` and ``z_max`` too (the authors' current code; False: their
            revisions before May 2024, which leave them empty). A one-slice box (``z_min = z_max``, which the
            authors refuse) segments that slice; without ``include_ends`` it is refused.
        source: names the volume in error messages.
        beyond_box: after the box's end slices, go on slice by slice upwards and downwards while the previous
            slice's mask is not empty (its box by the same rule), stopping at the first empty mask or the volume's
            end: a box drawn on one slice then follows the object (not the authors' protocol, whose 3D box bounds
            the slices).

    Returns:
        :class:`Propagation`: ``D x H x W`` bool masks and what each slice got.
    """
    if processor.spatial_dims != 2 or "boxes" not in processor.prompt_kinds:
        raise ValueError(f"slice propagation needs a 2D model that takes boxes; {processor.model_name} does not")
    stack = _as_slices(slices)
    depth = len(stack)
    if len(box3d) != 6:
        raise PromptError(f"a 3D box is (x_min, y_min, z_min, x_max, y_max, z_max), got {list(box3d)!r}", source)
    x_min, y_min, z_min, x_max, y_max, z_max = (float(v) for v in box3d)
    if not (float(int(z_min)) == z_min and float(int(z_max)) == z_max and 0 <= z_min <= z_max < depth):
        problem = f"the box's slices z_min={z_min:g}, z_max={z_max:g} must be indices in [0, {depth - 1}]"
        raise PromptError(problem, source)
    z_min_i, z_max_i = int(z_min), int(z_max)
    if z_min_i == z_max_i and not include_ends:
        raise PromptError(
            f"z_min = z_max = {z_min_i}: without include_ends no slice of a one-slice box is segmented",
            source,
        )
    middle, upwards, downwards = slice_order(z_min_i, z_max_i, include_ends)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    masks: Tensor | None = None
    result = Propagation(torch.zeros(0, dtype=torch.bool))

    def order() -> Any:
        """(slice, previous slice) in the protocol's order; beyond the box while the previous mask is not empty."""
        for z in upwards:
            yield z, z - 1
        z = z_max_i + 1
        while beyond_box and z < depth and masks is not None and bool(masks[z - 1].any()):
            yield z, z - 1
            z += 1
        for z in downwards:
            yield z, z + 1
        z = z_min_i - 1
        while beyond_box and z >= 0 and masks is not None and bool(masks[z + 1].any()):
            yield z, z + 1
            z -= 1

    try:
        for z, previous in order():
            frame = processor.prepare(stack[z], source=f"{source} slice {z}")
            if masks is None:
                masks = torch.zeros((depth, *frame.original_shape), dtype=torch.bool)
            elif tuple(masks.shape[1:]) != frame.original_shape:
                raise PromptError(f"slice {z} is {frame.original_shape}, the others {tuple(masks.shape[1:])}", source)
            box = None if z == middle else processor.box_from_previous_mask(masks[previous], frame, margin)
            if box is None and not z_min_i <= z <= z_max_i:
                continue  # beyond the box, an object that vanishes on the model grid ends that direction
            result.from_previous[z] = box is not None
            if box is None:
                box = _middle_box(processor, frame, (x_min, y_min, x_max, y_max), f"{source} slice {z}")
            encoding = model.encode_image(frame.model_input[None].to(device))
            decoded = processor.decode(model, encoding, Prompts(boxes=box.to(device)))
            masks[z] = processor.to_original(decoded.low_res_logits, frame).mask.reshape(frame.original_shape).cpu()
            result.slices.append(z)
            result.boxes[z] = processor.model_kwargs(Prompts(boxes=box))["boxes"][0]
    finally:
        model.train(was_training)
    assert masks is not None
    result.masks = masks
    return result


def _middle_box(processor: Processor, frame: ImageFrame, box2d: tuple[float, ...], source: str) -> BoxPrompts:
    """The 3D box's 2D box mapped like a user's box (LiteMedSAM: the authors' ``resize_box_to_256``)."""
    boxes = boxes_from_user(list(box2d), frame.original_shape, source)
    mapped = processor.to_model_space(Prompts(boxes=boxes), frame, source).boxes
    assert mapped is not None
    return mapped


__all__ = ["DEFAULT_MARGIN", "Propagation", "propagate_box", "slice_order"]
