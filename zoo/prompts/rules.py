"""The prompt rules of :mod:`zoo.prompts.validate` on numpy arrays, with their messages: the one place they are
written. Importable without torch, so that the ONNX runtime (:mod:`zoo.deploy.runtime`) checks prompts with the
same rules and words as the PyTorch entry points.

Coordinates are in index order (rows, columns[, ...]) unless a function says otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from zoo.errors import PromptError

#: Point labels: foreground, background, and padding (a point that pads a prompt set to a common length).
FOREGROUND_LABEL, BACKGROUND_LABEL, PADDING_LABEL = 1, 0, -1
PROMPT_KINDS = ("points", "boxes", "masks")
AXIS_NAMES = {2: ("y", "x"), 3: ("i", "j", "k")}


def axis_names(ndim: int) -> tuple[str, ...]:
    return AXIS_NAMES.get(ndim, tuple(f"d{i}" for i in range(ndim)))


def extent(shape: Sequence[int]) -> str:
    """An image size as users read it: ``W x H (width x height)`` in 2D, the voxel shape in 3D."""
    if len(shape) == 2:
        return f"{shape[1]} x {shape[0]} (width x height)"
    return " x ".join(str(s) for s in shape)


def written_point(coords: Sequence[float], ndim: int) -> str:
    """A point as a user reads it: ``(x=.., y=..)`` for 2D, ``(i=.., j=.., k=..)`` for 3D."""
    values = [float(v) for v in coords]
    if ndim == 2:  # index order (row, col) -> the (x, y) users write
        return f"(x={values[1]:g}, y={values[0]:g})"
    return "(" + ", ".join(f"{n}={v:g}" for n, v in zip(axis_names(ndim), values)) + ")"


def bad_labels(values: Sequence[float]) -> str:
    """The one message for point labels other than 1 / 0 (the distinct values given, as written)."""
    found = ", ".join(f"{value:g}" for value in sorted({float(v) for v in values}))
    return f"point labels must be 1 (foreground) or 0 (background), got [{found}]"


def _reader_axes(shape: tuple[int, ...]) -> list[tuple[str, int]]:
    """Axis names with their sizes in the order users write coordinates."""
    if len(shape) == 2:
        return [("x", shape[1]), ("y", shape[0])]
    return list(zip(axis_names(len(shape)), shape))


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


def check_point_array(
    coords: np.ndarray, labels: np.ndarray, shape: Sequence[int], source: str | None = None
) -> None:
    """``B x N x D`` points (index order) with ``B x N`` labels on the grid ``shape``: labels 1, 0 or -1 (padding,
    not checked further), and every other point on an element (``-0.5 <= c <= size - 0.5``)."""
    shape = tuple(int(s) for s in shape)
    if not np.isin(labels, (PADDING_LABEL, BACKGROUND_LABEL, FOREGROUND_LABEL)).all():
        raise PromptError(bad_labels(labels.flatten().tolist()), source)
    coords = np.asarray(coords, dtype=np.float64)
    real = labels != PADDING_LABEL
    if not np.isfinite(coords[real]).all():
        raise PromptError("point coordinates contain NaN or infinite values", source)
    limits = np.asarray(shape, dtype=np.float64) - 0.5
    outside = ((coords < -0.5) | (coords > limits)).any(axis=-1) & real
    if outside.any():
        sample, index = (int(v) for v in np.argwhere(outside)[0])
        bounds = ", ".join(f"{n} in [-0.5, {s - 0.5:g}]" for n, s in _reader_axes(shape))
        where = f"point {index}" + (f" of prompt set {sample}" if coords.shape[0] > 1 else "")
        raise PromptError(
            f"{where} at {written_point(coords[sample, index], len(shape))} lies outside the {extent(shape)} image "
            f"({bounds})",
            source,
        )


def check_box_array(lo: np.ndarray, hi: np.ndarray, shape: Sequence[int], source: str | None = None) -> None:
    """``K x D`` box corners (index order) on the grid ``shape``: finite, with ``0 <= lo <= hi <= size``."""
    shape = tuple(int(s) for s in shape)
    lo, hi = np.asarray(lo, dtype=np.float64), np.asarray(hi, dtype=np.float64)
    size = np.asarray(shape, dtype=np.float64)
    bad = ~(np.isfinite(lo) & np.isfinite(hi) & (lo >= 0) & (lo <= hi) & (hi <= size)).all(axis=1)
    if bad.any():
        sample = int(np.flatnonzero(bad)[0])
        if len(shape) == 2:
            corners = [lo[sample, 1], lo[sample, 0], hi[sample, 1], hi[sample, 0]]
            written = "[" + ", ".join(f"{float(c):g}" for c in corners) + "] (x0, y0, x1, y1)"
            rule = f"0 <= x0 <= x1 <= {shape[1]}, 0 <= y0 <= y1 <= {shape[0]}"
        else:
            written = f"lo {lo[sample].tolist()} hi {hi[sample].tolist()}"
            rule = "0 <= lo <= hi <= size on every axis"
        where = "box" + (f" {sample}" if len(lo) > 1 else "")
        raise PromptError(f"{where} {written} is not a box inside the {extent(shape)} image ({rule})", source)


# --------------------------------------------------------------------------------------------- user input
def user_numbers(values: Any, what: str, source: str | None) -> np.ndarray:
    """``values`` (lists, numpy arrays) as finite float64 numbers, or a PromptError saying what is wrong."""
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise PromptError(f"{what} must be numbers, got {values!r}", source) from exc
    if not np.isfinite(array).all():
        raise PromptError(f"{what} contain NaN or infinite values: {values!r}", source)
    return array


def user_points(
    coords: Any, labels: Any | None, ndim: int, axis_order: str = "xy", source: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``N`` points as a user writes them -> ``N x D`` float64 coordinates in index order and ``N`` int64 labels.

    ``coords`` is ``N x D``: ``(x, y)`` pixels for ``axis_order="xy"`` (2D, SAM's convention) or tensor-index order
    for ``"index"``. ``labels``: ``N`` values, 1 foreground or 0 background (default: all foreground).
    """
    array = user_numbers(coords, "points", source)
    if array.ndim != 2 or array.shape[1] != ndim or len(array) == 0:
        names = ", ".join(axis_names(ndim))
        layout = "[[x, y], ...]" if (ndim == 2 and axis_order == "xy") else f"[[{names}], ...]"
        problem = f"points of a {ndim}D image must be a non-empty list {layout}, got shape {array.shape}"
        raise PromptError(problem, source)
    if labels is None:
        label_array = np.ones(len(array))
    else:
        label_array = user_numbers(labels, "point labels", source)
        if label_array.shape != (len(array),):
            raise PromptError(f"{len(array)} points but {label_array.size} labels ({labels!r})", source)
    if not np.isin(label_array, (BACKGROUND_LABEL, FOREGROUND_LABEL)).all():
        raise PromptError(bad_labels(label_array.tolist()), source)
    if axis_order == "xy":
        if ndim != 2:
            raise PromptError("(x, y) points are 2D; give 3D points in index order (i, j, k)", source)
        array = array[:, ::-1]
    elif axis_order != "index":
        raise ValueError(f"axis_order must be 'xy' or 'index', got {axis_order!r}")
    return np.ascontiguousarray(array), label_array.astype(np.int64)


def user_boxes(box: Any, ndim: int, source: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``K`` boxes ``(x0, y0, x1, y1)`` (a 4-list or ``K x 4``) in pixels of a 2D image -> ``K x 2`` float64 ``lo``
    and ``hi`` corners in index order."""
    if ndim != 2:
        raise PromptError("box prompts are 2D (x0, y0, x1, y1); this image is 3D", source)
    array = user_numbers(box, "box", source)
    array = array[None] if array.ndim == 1 else array
    if array.ndim != 2 or array.shape[1] != 4 or len(array) == 0:
        raise PromptError(f"a box is [x0, y0, x1, y1] (or K x 4 boxes), got {box!r}", source)
    return np.ascontiguousarray(array[:, [1, 0]]), np.ascontiguousarray(array[:, [3, 2]])
