"""The one prompt validator: every entry point (predictors, ``zoo predict``, the DataModules, the training and
evaluation loops) checks prompts here, against the grid they live on, with one message per problem.

The rules, in the index convention of :mod:`zoo.prompts.types` (integers at element centres):

* a point must lie on an element of the grid: ``-0.5 <= c <= size - 0.5`` on every axis (the element's footprint);
  its label is 1 (foreground), 0 (background) or -1 (padding, ignored);
* a box must have finite corners with ``0 <= lo <= hi <= size`` on every axis (its edges inside the grid);
* a mask prompt must have the model's mask-prompt shape;
* and the model must take that kind of prompt at all.

User-facing input (lists, arrays, tensors in the order a user writes them) becomes containers through
:func:`points_from_user` and :func:`boxes_from_user`, which raise :class:`zoo.errors.PromptError` for bad shapes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from zoo.errors import PromptError
from zoo.prompts.rules import (
    AXIS_NAMES,
    PROMPT_KINDS,
    check_box_array,
    check_kinds,
    check_point_array,
    extent,
    user_boxes,
    user_points,
)
from zoo.prompts.types import BoxPrompts, PointPrompts, Prompts

#: How users write coordinates: ``"xy"`` (SAM's (x, y) = (column, row), 2D) or ``"index"`` (tensor-index order).
AxisOrder = str


def check_points(points: PointPrompts, shape: Sequence[int], source: str | None = None) -> None:
    """Raise :class:`PromptError` unless every non-padding point lies on an element of ``shape``."""
    shape = tuple(int(s) for s in shape)
    if points.ndim != len(shape):
        raise PromptError(f"got {points.ndim}-D points for a {len(shape)}-D image of size {extent(shape)}", source)
    check_point_array(
        points.coords.detach().cpu().to(torch.float64).numpy(), points.labels.detach().cpu().numpy(), shape, source
    )


def check_boxes(boxes: BoxPrompts, shape: Sequence[int], source: str | None = None) -> None:
    """Raise :class:`PromptError` unless every valid box has finite corners with ``0 <= lo <= hi <= size``."""
    shape = tuple(int(s) for s in shape)
    if boxes.ndim != len(shape):
        raise PromptError(f"got {boxes.ndim}-D boxes for a {len(shape)}-D image of size {extent(shape)}", source)
    if not bool(boxes.valid.all()):
        missing = torch.nonzero(~boxes.valid).flatten().tolist()
        problem = f"no box for prompt sets {missing} (empty masks); drop them or prompt them with points"
        raise PromptError(problem, source)
    lo, hi = (c.detach().cpu().to(torch.float64).numpy() for c in (boxes.lo, boxes.hi))
    check_box_array(lo, hi, shape, source)


def check_prompts(
    prompts: Prompts,
    shape: Sequence[int],
    supported: frozenset[str] | set[str],
    model_name: str,
    mask_shape: Sequence[int] | None = None,
    source: str | None = None,
) -> None:
    """Check a prompt set against the image grid ``shape`` and what the model takes (``supported`` kinds).

    ``mask_shape`` is the model's mask-prompt grid; ``model_name`` names the model in messages.
    """
    if not prompts.kinds:
        raise PromptError("no prompt given: give points (with labels), a box or a mask prompt", source)
    check_kinds(prompts.kinds, supported, model_name, source)
    if prompts.points is not None:
        check_points(prompts.points, shape, source)
    if prompts.boxes is not None:
        check_boxes(prompts.boxes, shape, source)
    if prompts.masks is not None and mask_shape is not None:
        if prompts.masks.spatial_shape != tuple(mask_shape):
            raise PromptError(
                f"a mask prompt for {model_name} is 1 x {' x '.join(map(str, mask_shape))} low-res logits, "
                f"got {' x '.join(map(str, prompts.masks.spatial_shape))}",
                source,
            )


# --------------------------------------------------------------------------------------------- user input
def _numpy(values: Any) -> Any:
    return values.detach().cpu().numpy() if isinstance(values, Tensor) else values


def points_from_user(
    coords: Any,
    labels: Any | None,
    spatial_shape: Sequence[int],
    axis_order: AxisOrder = "xy",
    source: str | None = None,
) -> PointPrompts:
    """One prompt set of ``N`` points as a user writes them, as a checked-shape :class:`PointPrompts`.

    ``coords`` is ``N x D``: ``(x, y)`` pixels for ``axis_order="xy"`` (2D, SAM's convention) or tensor-index order
    for ``"index"``. ``labels``: ``N`` values, 1 foreground or 0 background (default: all foreground).
    """
    array, label_array = user_points(_numpy(coords), _numpy(labels), len(spatial_shape), axis_order, source)
    return PointPrompts(
        torch.from_numpy(array).to(torch.float32)[None],
        torch.from_numpy(label_array)[None],
        tuple(int(s) for s in spatial_shape),
    )


def boxes_from_user(box: Any, spatial_shape: Sequence[int], source: str | None = None) -> BoxPrompts:
    """``K`` boxes ``(x0, y0, x1, y1)`` (a 4-list or ``K x 4``) in pixels of a 2D image, as :class:`BoxPrompts`."""
    lo, hi = user_boxes(_numpy(box), len(spatial_shape), source)
    return BoxPrompts(
        torch.from_numpy(lo).to(torch.float32),
        torch.from_numpy(hi).to(torch.float32),
        torch.ones(len(lo), dtype=torch.bool),
        tuple(int(s) for s in spatial_shape),
    )


__all__ = [
    "AXIS_NAMES", "PROMPT_KINDS", "AxisOrder", "boxes_from_user", "check_boxes", "check_kinds", "check_points",
    "check_prompts", "points_from_user",
]
