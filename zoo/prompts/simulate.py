"""Seeded, batched prompt simulators, each named for the protocol it reproduces.

Every simulator takes masks as ``B x *spatial`` tensors (2D or 3D; squeeze the channel of a ``B x 1 x ...``
target first) on any device and returns :class:`~zoo.prompts.types.PointPrompts` or
:class:`~zoo.prompts.types.BoxPrompts` on that device, in the tensor-index convention of
:mod:`zoo.prompts.types`. Predictions are boolean masks: threshold them the way the protocol does
(SAM-Med3D training: ``logits > 0.5``; SAM-Med3D inference and SAM-Med2D: ``sigmoid(logits) > 0.5``).

Randomness comes only from ``generator`` (a ``torch.Generator``; ``None`` uses torch's global CPU
generator). Random numbers are drawn on the generator's device (CPU by default) and moved, so a CPU
generator gives the same clicks whether the masks live on the CPU or a GPU.

Empty inputs have defined results rather than upstream's crashes: when there is nothing to click (an empty
mask, or a prediction without errors) the point is padding (label -1 at the origin), and a box from an empty
mask is marked invalid.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from zoo.prompts.components import bounding_boxes, interior_distance, largest_component
from zoo.prompts.types import BACKGROUND_LABEL, FOREGROUND_LABEL, PADDING_LABEL, BoxPrompts, PointPrompts

# SAM-Med2D's get_boxes_from_mask defaults: noise std = 0.1 * shorter side, capped at 5 pixels.
SAM_MED2D_BOX_NOISE_STD = 0.1
SAM_MED2D_BOX_MAX_PIXEL = 5
# LiteMedSAM's NpyDataset(bbox_shift=10): each side moves outwards by randint(0, 10).
LITEMEDSAM_BOX_SHIFT = 10


def _check_masks(*masks: Tensor) -> None:
    first = masks[0]
    if first.ndim not in (3, 4):
        raise ValueError(f"masks must be B x H x W or B x D x H x W, got shape {tuple(first.shape)}")
    for other in masks[1:]:
        if other.shape != first.shape:
            raise ValueError(f"prediction and target shapes differ: {tuple(other.shape)} vs {tuple(first.shape)}")


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    draw_device = generator.device if generator is not None else torch.device("cpu")
    return torch.rand(shape, generator=generator, dtype=torch.float64, device=draw_device).to(device)


def _sample_uniform(candidates: Tensor, num: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """Draw ``num`` flat indices per row, uniformly with replacement among the row's True entries.

    ``candidates`` is ``B x M`` bool. Returns ``B x num`` int64 indices and ``B`` bool ``found`` (False for an
    all-False row, whose indices are 0). One uniform number per draw picks the r-th True entry via a cumsum.
    """
    counts = candidates.sum(dim=1)
    uniforms = _uniform((candidates.shape[0], num), generator, candidates.device)
    rank = torch.floor(uniforms * counts[:, None]).to(torch.int64)
    rank = torch.minimum(rank, (counts - 1).clamp(min=0)[:, None])
    running = candidates.cumsum(dim=1, dtype=torch.int32)
    index = torch.searchsorted(running, (rank + 1).to(torch.int32)).clamp(max=candidates.shape[1] - 1)
    found = counts > 0
    return torch.where(found[:, None], index, 0), found


def _argmax_points(score: Tensor) -> tuple[Tensor, Tensor]:
    """Flat index of each sample's highest score (first in raster order on ties) and whether it is > 0."""
    flat = score.flatten(1)
    best, index = flat.max(dim=1)
    found = best > 0
    return torch.where(found, index, 0)[:, None], found


def _to_points(flat_index: Tensor, labels: Tensor, spatial_shape: tuple[int, ...]) -> PointPrompts:
    coords = torch.stack(torch.unravel_index(flat_index, spatial_shape), dim=-1).to(torch.float32)
    coords = torch.where((labels == PADDING_LABEL)[..., None], 0.0, coords)
    return PointPrompts(coords, labels.to(torch.int64), spatial_shape)


def _gather(mask: Tensor, flat_index: Tensor) -> Tensor:
    return torch.gather(mask.flatten(1), 1, flat_index)


def first_click_random_foreground(target: Tensor, generator: torch.Generator | None = None) -> PointPrompts:
    """SAM-Med3D's first click: one foreground element drawn uniformly at random (label 1).

    This is upstream's error-region click against an empty prediction (``random_sample_next_click`` in
    inference, ``get_next_click3D_torch_2`` in training). Empty target: a padding point.
    """
    _check_masks(target)
    index, found = _sample_uniform(target.bool().flatten(1), 1, generator)
    labels = torch.where(found, FOREGROUND_LABEL, PADDING_LABEL)[:, None]
    return _to_points(index, labels, tuple(target.shape[1:]))


def centre_click(target: Tensor) -> PointPrompts:
    """A foreground click (label 1) at the centre element ``S // 2`` of every axis, one per sample.

    The SAM-Med3D paper's evaluation crops its patch around the first point (Sec. 4.3): with the crop centred on a
    random foreground voxel, that voxel lies at the crop's centre element.
    """
    _check_masks(target)
    spatial_shape = tuple(target.shape[1:])
    coords = torch.tensor([s // 2 for s in spatial_shape], dtype=torch.float32, device=target.device)
    coords = coords.expand(target.shape[0], 1, len(spatial_shape)).clone()
    labels = torch.full((target.shape[0], 1), FOREGROUND_LABEL, dtype=torch.int64, device=target.device)
    return PointPrompts(coords, labels, spatial_shape)


def first_click_interior(target: Tensor) -> PointPrompts:
    """Deterministic first click: the interior-most element of the largest connected component (label 1).

    Interior-most means the largest Euclidean distance to the background (the array border counts as
    background); ties go to the first element in raster order. Empty target: a padding point.
    """
    _check_masks(target)
    depth = interior_distance(largest_component(target))
    index, found = _argmax_points(depth)
    labels = torch.where(found, FOREGROUND_LABEL, PADDING_LABEL)[:, None]
    return _to_points(index, labels, tuple(target.shape[1:]))


def _error_regions(prediction: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    _check_masks(prediction, target)
    predicted, truth = prediction.bool(), target.bool()
    return truth & ~predicted, predicted & ~truth


def next_click_random_error(
    prediction: Tensor, target: Tensor, num_points: int = 1, generator: torch.Generator | None = None
) -> PointPrompts:
    """Error-region clicks drawn uniformly (with replacement) from false negatives and false positives.

    Reproduces SAM-Med3D (``get_next_click3D_torch_2`` in training, ``random_sample_next_click`` in inference;
    ``num_points=1``) and SAM-Med2D's ``select_random_points`` (iterative evaluation with 1 point, training with
    1/3/5/9 points). A click is labelled 1 on a false negative and 0 on a false positive. No error at all:
    padding points.
    """
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    false_negative, false_positive = _error_regions(prediction, target)
    index, found = _sample_uniform((false_negative | false_positive).flatten(1), num_points, generator)
    on_false_negative = _gather(false_negative, index)
    labels = torch.where(on_false_negative, FOREGROUND_LABEL, BACKGROUND_LABEL)
    labels = torch.where(found[:, None], labels, PADDING_LABEL)
    return _to_points(index, labels, tuple(target.shape[1:]))


def next_click_ritm(prediction: Tensor, target: Tensor, generator: torch.Generator | None = None) -> PointPrompts:
    """SAM-Med3D's 'ritm' click (``get_next_click3D_torch_ritm``): uniform in the deep part of the larger error.

    The distance transform of the false negatives and of the false positives (array border as background)
    decides the error type: false negatives if their largest distance is strictly larger, else false
    positives. The click is drawn uniformly among that type's elements deeper than half that largest
    distance, and labelled 1 on a false negative, 0 on a false positive. Upstream computes this for the first
    sample only and reuses it for the whole batch; here every sample gets its own. No error: padding.
    """
    false_negative, false_positive = _error_regions(prediction, target)
    depth_fn, depth_fp = interior_distance(false_negative), interior_distance(false_positive)
    max_fn, max_fp = depth_fn.flatten(1).amax(dim=1), depth_fp.flatten(1).amax(dim=1)
    use_fn = max_fn > max_fp
    view = (-1,) + (1,) * (target.ndim - 1)
    depth = torch.where(use_fn.view(view), depth_fn, depth_fp)
    deepest = torch.maximum(max_fn, max_fp)
    region = (depth > (deepest / 2.0).view(view)) & (deepest > 0).view(view)
    index, found = _sample_uniform(region.flatten(1), 1, generator)
    labels = torch.where(_gather(false_negative, index), FOREGROUND_LABEL, BACKGROUND_LABEL)
    labels = torch.where(found[:, None], labels, PADDING_LABEL)
    return _to_points(index, labels, tuple(target.shape[1:]))


def next_click_error_interior(prediction: Tensor, target: Tensor) -> PointPrompts:
    """Deterministic error click: the deepest element of the error regions (the standard RITM/NoC protocol).

    Depth is the distance transform of the false negatives and of the false positives (array border as
    background); the click goes to the single deepest element, which lies in the error region with the
    largest inscribed ball. Label 1 on a false negative, 0 on a false positive; ties go to the first element
    in raster order. No error: padding.
    """
    false_negative, false_positive = _error_regions(prediction, target)
    depth = torch.maximum(interior_distance(false_negative), interior_distance(false_positive))
    index, found = _argmax_points(depth)
    labels = torch.where(_gather(false_negative, index), FOREGROUND_LABEL, BACKGROUND_LABEL)
    labels = torch.where(found[:, None], labels, PADDING_LABEL)
    return _to_points(index, labels, tuple(target.shape[1:]))


def sam_med2d_points(target: Tensor, num_points: int, generator: torch.Generator | None = None) -> PointPrompts:
    """SAM-Med2D's non-iterative point prompts (``init_point_sampling``).

    ``num_points == 1``: one uniformly random foreground element (label 1), or, for an empty mask, one random
    background element (label 0), as upstream. ``num_points = n > 1``: ``n // 2`` foreground and ``n - n // 2``
    background elements, each drawn uniformly with replacement, in a random order (so "3 points" is 1
    foreground + 2 background). Slots whose class is absent (empty mask, or a mask covering everything)
    become padding, where upstream would crash.
    """
    _check_masks(target)
    if num_points < 1:
        raise ValueError(f"num_points must be >= 1, got {num_points}")
    foreground = target.bool().flatten(1)
    spatial_shape = tuple(target.shape[1:])
    if num_points == 1:
        fg_index, fg_found = _sample_uniform(foreground, 1, generator)
        bg_index, bg_found = _sample_uniform(~foreground, 1, generator)
        index = torch.where(fg_found[:, None], fg_index, bg_index)
        labels = torch.where(fg_found, FOREGROUND_LABEL, torch.where(bg_found, BACKGROUND_LABEL, PADDING_LABEL))
        return _to_points(index, labels[:, None], spatial_shape)
    num_fg = num_points // 2
    fg_index, fg_found = _sample_uniform(foreground, num_fg, generator)
    bg_index, bg_found = _sample_uniform(~foreground, num_points - num_fg, generator)
    index = torch.cat([fg_index, bg_index], dim=1)
    labels = torch.cat(
        [
            torch.where(fg_found, FOREGROUND_LABEL, PADDING_LABEL)[:, None].expand(-1, num_fg),
            torch.where(bg_found, BACKGROUND_LABEL, PADDING_LABEL)[:, None].expand(-1, num_points - num_fg),
        ],
        dim=1,
    )
    order = _uniform((target.shape[0], num_points), generator, target.device).argsort(dim=1)
    return _to_points(torch.gather(index, 1, order), torch.gather(labels, 1, order), spatial_shape)


def boxes_from_masks(
    target: Tensor,
    jitter: Literal["none", "sam_med2d", "litemedsam"] = "none",
    generator: torch.Generator | None = None,
    component: Literal["largest", "all"] = "largest",
) -> BoxPrompts:
    """Box prompts tight around each mask (``hi`` exclusive): around its largest connected component (SAM-Med2D,
    SAM-UNet) or around all of it (``component="all"``, LiteMedSAM).

    ``jitter="none"`` is the evaluation box. ``jitter="sam_med2d"`` is SAM-Med2D's and SAM-UNet's training box: both
    corners shift by the same integer offset per axis, drawn uniformly from ``[-m, m - 1]`` (numpy
    ``randint(-m, m)``) with ``m = min(5, int(0.1 * shorter side * 5))``; ``m = 0`` means no shift; the shifted box
    is not clipped, as upstream. ``jitter="litemedsam"`` is LiteMedSAM's training box (``train_multi_gpus.py``:
    ``bbox_shift=10``): every side moves outwards by its own integer drawn uniformly from ``[0, 10]``, clipped to
    the image. SAM-Med3D has no box prompt. Empty masks give invalid boxes.
    """
    _check_masks(target)
    if jitter not in ("none", "sam_med2d", "litemedsam"):
        raise ValueError(f"unknown box jitter {jitter!r}; expected 'none', 'sam_med2d' or 'litemedsam'")
    if component not in ("largest", "all"):
        raise ValueError(f"component must be 'largest' or 'all', got {component!r}")
    masks = largest_component(target) if component == "largest" else target.bool()
    lo, hi, nonempty = bounding_boxes(masks)
    lo, hi = lo.to(torch.float32), hi.to(torch.float32)
    if jitter == "sam_med2d":
        shorter_side = (hi - lo).amin(dim=1).to(torch.float64)
        noise_std = shorter_side * SAM_MED2D_BOX_NOISE_STD
        max_noise = torch.floor(noise_std * 5).clamp(max=SAM_MED2D_BOX_MAX_PIXEL)[:, None]
        uniforms = _uniform(tuple(lo.shape), generator, target.device)
        offset = (torch.floor(uniforms * 2 * max_noise) - max_noise).to(torch.float32)
        lo, hi = lo + offset, hi + offset
    elif jitter == "litemedsam":
        draws = torch.floor(_uniform((2, *lo.shape), generator, target.device) * (LITEMEDSAM_BOX_SHIFT + 1))
        size = torch.tensor(target.shape[1:], dtype=torch.float32, device=target.device)
        lo = torch.clamp(lo - draws[0].to(torch.float32), min=0.0)
        hi = torch.minimum(hi + draws[1].to(torch.float32), size)
    lo = torch.where(nonempty[:, None], lo, 0.0)
    hi = torch.where(nonempty[:, None], hi, 0.0)
    return BoxPrompts(lo, hi, nonempty, tuple(target.shape[1:]))
