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

import numpy as np
import torch
from torch import Tensor

from zoo.errors import PromptError
from zoo.prompts.types import BACKGROUND_LABEL, FOREGROUND_LABEL, PADDING_LABEL, BoxPrompts, PointPrompts, Prompts

AXIS_NAMES = {2: ("y", "x"), 3: ("i", "j", "k")}
#: How users write coordinates: ``"xy"`` (SAM's (x, y) = (column, row), 2D) or ``"index"`` (tensor-index order).
AxisOrder = str
PROMPT_KINDS = ("points", "boxes", "masks")


def _names(ndim: int) -> tuple[str, ...]:
    return AXIS_NAMES.get(ndim, tuple(f"d{i}" for i in range(ndim)))


def _written(coords: Tensor, ndim: int) -> str:
    """A point as a user reads it: ``(x=.., y=..)`` for 2D, ``(i=.., j=.., k=..)`` for 3D."""
    names = _names(ndim)
    values = [float(v) for v in coords.tolist()]
    if ndim == 2:  # index order (row, col) -> the (x, y) users write
        return f"(x={values[1]:g}, y={values[0]:g})"
    return "(" + ", ".join(f"{n}={v:g}" for n, v in zip(names, values)) + ")"


def _extent(shape: Sequence[int]) -> str:
    if len(shape) == 2:
        return f"{shape[1]} x {shape[0]} (width x height)"
    return " x ".join(str(s) for s in shape)


def check_points(points: PointPrompts, shape: Sequence[int], source: str | None = None) -> None:
    """Raise :class:`PromptError` unless every non-padding point lies on an element of ``shape``."""
    shape = tuple(int(s) for s in shape)
    if points.ndim != len(shape):
        raise PromptError(f"got {points.ndim}-D points for a {len(shape)}-D image of size {_extent(shape)}", source)
    real = ~points.is_padding
    if not torch.isin(points.labels, torch.tensor([PADDING_LABEL, BACKGROUND_LABEL, FOREGROUND_LABEL])).all():
        raise PromptError(_bad_labels(points.labels.flatten().tolist()), source)
    coords = points.coords.to(torch.float64)
    if not torch.isfinite(coords[real]).all():
        raise PromptError("point coordinates contain NaN or infinite values", source)
    limits = torch.tensor(shape, dtype=torch.float64, device=coords.device) - 0.5
    outside = ((coords < -0.5) | (coords > limits)).any(dim=-1) & real
    if outside.any():
        sample, index = (int(v) for v in torch.nonzero(outside)[0])
        bounds = ", ".join(f"{n} in [-0.5, {s - 0.5:g}]" for n, s in _reader_axes(shape))
        where = f"point {index}" + (f" of prompt set {sample}" if points.batch_size > 1 else "")
        raise PromptError(
            f"{where} at {_written(coords[sample, index], len(shape))} lies outside the {_extent(shape)} image "
            f"({bounds})",
            source,
        )


def _bad_labels(values: Sequence[float]) -> str:
    """The one message for point labels other than 1 / 0 (the distinct values given, as written)."""
    found = ", ".join(f"{value:g}" for value in sorted({float(v) for v in values}))
    return f"point labels must be 1 (foreground) or 0 (background), got [{found}]"


def _reader_axes(shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """Axis names with their sizes in the order users write coordinates."""
    if len(shape) == 2:
        return [("x", shape[1]), ("y", shape[0])]
    return list(zip(_names(len(shape)), shape))


def check_boxes(boxes: BoxPrompts, shape: Sequence[int], source: str | None = None) -> None:
    """Raise :class:`PromptError` unless every valid box has finite corners with ``0 <= lo <= hi <= size``."""
    shape = tuple(int(s) for s in shape)
    if boxes.ndim != len(shape):
        raise PromptError(f"got {boxes.ndim}-D boxes for a {len(shape)}-D image of size {_extent(shape)}", source)
    if not bool(boxes.valid.all()):
        missing = torch.nonzero(~boxes.valid).flatten().tolist()
        raise PromptError(f"no box for prompt sets {missing} (empty masks); drop them or prompt them with points", source)
    lo, hi = boxes.lo.to(torch.float64), boxes.hi.to(torch.float64)
    size = torch.tensor(shape, dtype=torch.float64, device=lo.device)
    bad = ~(torch.isfinite(lo) & torch.isfinite(hi) & (lo >= 0) & (lo <= hi) & (hi <= size)).all(dim=1)
    if bad.any():
        sample = int(torch.nonzero(bad)[0])
        if len(shape) == 2:
            corners = [lo[sample, 1], lo[sample, 0], hi[sample, 1], hi[sample, 0]]
            written = "[" + ", ".join(f"{float(c):g}" for c in corners) + "] (x0, y0, x1, y1)"
            rule = f"0 <= x0 <= x1 <= {shape[1]}, 0 <= y0 <= y1 <= {shape[0]}"
        else:
            written = f"lo {lo[sample].tolist()} hi {hi[sample].tolist()}"
            rule = "0 <= lo <= hi <= size on every axis"
        where = "box" + (f" {sample}" if boxes.batch_size > 1 else "")
        raise PromptError(f"{where} {written} is not a box inside the {_extent(shape)} image ({rule})", source)


def check_kinds(
    kinds: frozenset[str] | set[str],
    supported: frozenset[str] | set[str],
    model_name: str,
    source: str | None = None,
) -> None:
    """Raise :class:`PromptError` unless the model takes every prompt kind in ``kinds`` (checked before parsing
    user input too, so a kind a model does not take gets this message whatever its shape)."""
    unsupported = sorted(set(kinds) - set(supported))
    if unsupported:
        takes = ", ".join(k for k in PROMPT_KINDS if k in supported)
        raise PromptError(f"{model_name} takes {takes}, not {', '.join(unsupported)}", source)


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
def _array(values: Any, what: str, source: str | None) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{what} must be numbers, got {values!r}", source) from exc
    if not np.isfinite(array).all():
        raise PromptError(f"{what} contain NaN or infinite values: {values!r}", source)
    return array


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
    ndim = len(spatial_shape)
    array = _array(coords, "points", source)
    if array.ndim != 2 or array.shape[1] != ndim or len(array) == 0:
        layout = "[[x, y], ...]" if (ndim == 2 and axis_order == "xy") else f"[[{', '.join(_names(ndim))}], ...]"
        raise PromptError(f"points of a {ndim}D image must be a non-empty list {layout}, got shape {array.shape}", source)
    if labels is None:
        label_array = np.ones(len(array))
    else:
        label_array = _array(labels, "point labels", source)
        if label_array.shape != (len(array),):
            raise PromptError(f"{len(array)} points but {label_array.size} labels ({labels!r})", source)
    if not np.isin(label_array, (BACKGROUND_LABEL, FOREGROUND_LABEL)).all():
        raise PromptError(_bad_labels(label_array.tolist()), source)
    if axis_order == "xy":
        if ndim != 2:
            raise PromptError("(x, y) points are 2D; give 3D points in index order (i, j, k)", source)
        array = array[:, ::-1]
    elif axis_order != "index":
        raise ValueError(f"axis_order must be 'xy' or 'index', got {axis_order!r}")
    return PointPrompts(
        torch.from_numpy(np.ascontiguousarray(array)).to(torch.float32)[None],
        torch.from_numpy(label_array.astype(np.int64))[None],
        tuple(int(s) for s in spatial_shape),
    )


def boxes_from_user(box: Any, spatial_shape: Sequence[int], source: str | None = None) -> BoxPrompts:
    """``K`` boxes ``(x0, y0, x1, y1)`` (a 4-list or ``K x 4``) in pixels of a 2D image, as :class:`BoxPrompts`."""
    if len(spatial_shape) != 2:
        raise PromptError("box prompts are 2D (x0, y0, x1, y1); this image is 3D", source)
    array = _array(box, "box", source)
    array = array[None] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[1] != 4 or len(array) == 0:
        raise PromptError(f"a box is [x0, y0, x1, y1] (or K x 4 boxes), got {box!r}", source)
    tensor = torch.from_numpy(array).to(torch.float32)
    lo = tensor[:, [1, 0]].contiguous()
    hi = tensor[:, [3, 2]].contiguous()
    return BoxPrompts(lo, hi, torch.ones(len(array), dtype=torch.bool), tuple(int(s) for s in spatial_shape))
