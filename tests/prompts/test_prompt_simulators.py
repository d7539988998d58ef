"""The click and box simulators keep their protocols on real masks (bundled TotalSegmentator and SAM-Med2D data).

Reference values come from scipy directly (distance transforms, component labelling, bounding boxes), never
from the code under test.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage

from zoo.prompts import (
    FOREGROUND_LABEL,
    PADDING_LABEL,
    boxes_from_masks,
    first_click_interior,
    first_click_random_foreground,
    next_click_error_interior,
    next_click_random_error,
    next_click_ritm,
    sam_med2d_points,
)

ONE_VOXEL_CLASS = 13  # lung_middle_lobe_right is a single voxel in the bundled labels


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def values_at(masks: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """masks[b, *coords[b, n]] for every point (coords must be integral)."""
    index = coords.round().long()
    batch = torch.arange(masks.shape[0])[:, None].expand(index.shape[:2])
    return masks[(batch, *index.unbind(-1))]


def largest_component_np(mask: np.ndarray) -> np.ndarray:
    labelled, count = ndimage.label(mask, structure=np.ones((3,) * mask.ndim))
    sizes = np.bincount(labelled.ravel())[1:]
    return labelled == (int(np.argmax(sizes)) + 1)


def depth_np(mask: np.ndarray) -> np.ndarray:
    """Distance to background with the array border as background (scipy on a zero-padded copy)."""
    return ndimage.distance_transform_edt(np.pad(mask, 1))[(slice(1, -1),) * mask.ndim]


def shifted(masks: torch.Tensor, shift: int) -> torch.Tensor:
    return torch.roll(masks, shifts=shift, dims=1)


# First clicks -------------------------------------------------------------------------------------------


def test_random_foreground_first_click_always_lands_in_the_foreground(targets_3d):
    many = targets_3d.repeat(8, 1, 1, 1)
    points = first_click_random_foreground(many, seeded(0))
    assert (points.labels == FOREGROUND_LABEL).all()
    assert values_at(many, points.coords).all()
    assert len(torch.unique(points.coords[:, 0], dim=0)) == len(many), "each sample draws its own click"


def test_random_foreground_first_click_is_reproducible_from_the_seed(targets_3d):
    first = first_click_random_foreground(targets_3d, seeded(7))
    again = first_click_random_foreground(targets_3d, seeded(7))
    other = first_click_random_foreground(targets_3d, seeded(8))
    assert torch.equal(first.coords, again.coords)
    assert not torch.equal(first.coords, other.coords)


def test_random_foreground_first_click_is_uniform_over_the_mask():
    mask = torch.zeros(4000, 8, 8, dtype=torch.bool)
    mask[:, [1, 2, 5, 6], [1, 6, 2, 7]] = True
    hits = first_click_random_foreground(mask, seeded(0)).coords[:, 0]
    _, counts = torch.unique(hits, dim=0, return_counts=True)
    assert len(counts) == 4 and counts.min() > 850 and counts.max() < 1150


def test_interior_first_click_is_the_deepest_point_of_the_largest_component(targets_3d):
    points = first_click_interior(targets_3d)
    for sample, point in zip(targets_3d.numpy(), points.coords[:, 0].long().tolist()):
        component = largest_component_np(sample)
        depth = depth_np(component)
        assert component[tuple(point)]
        assert depth[tuple(point)] == depth.max()


def test_interior_first_click_ignores_smaller_components(masks_2d):
    aorta_and_vena_cava = masks_2d[4:5]
    point = first_click_interior(aorta_and_vena_cava).coords[0, 0].long().tolist()
    assert masks_2d[0][tuple(point)], "the click must be in the aorta, the larger of the two components"


# Error-region clicks ------------------------------------------------------------------------------------


@pytest.mark.parametrize("shift", [3, -5])
def test_random_error_clicks_land_in_the_error_region_with_the_right_label(targets_3d, shift):
    prediction = shifted(targets_3d, shift)
    points = next_click_random_error(prediction, targets_3d, num_points=64, generator=seeded(shift))
    false_negative = targets_3d & ~prediction
    false_positive = prediction & ~targets_3d
    on_fn, on_fp = values_at(false_negative, points.coords), values_at(false_positive, points.coords)
    assert (on_fn | on_fp).all()
    assert torch.equal(points.labels == FOREGROUND_LABEL, on_fn)


def test_first_error_click_against_an_empty_prediction_is_a_foreground_click(masks_2d):
    points = next_click_random_error(torch.zeros_like(masks_2d), masks_2d, generator=seeded(1))
    assert (points.labels == FOREGROUND_LABEL).all() and values_at(masks_2d, points.coords).all()


def test_error_clicks_are_padding_when_the_prediction_is_perfect(masks_2d):
    for simulate in (
        lambda p, t: next_click_random_error(p, t, generator=seeded(0)),
        lambda p, t: next_click_ritm(p, t, generator=seeded(0)),
        next_click_error_interior,
    ):
        assert (simulate(masks_2d, masks_2d).labels == PADDING_LABEL).all()


def test_ritm_click_is_deep_inside_the_deeper_error_type(targets_3d):
    prediction = shifted(targets_3d, 4)
    prediction[1] = False  # sample 1: only false negatives
    points = next_click_ritm(prediction, targets_3d, generator=seeded(3))
    for b, point in enumerate(points.coords[:, 0].long().tolist()):
        fn = (targets_3d[b] & ~prediction[b]).numpy()
        fp = (prediction[b] & ~targets_3d[b]).numpy()
        depth_fn, depth_fp = depth_np(fn), depth_np(fp)
        use_fn = depth_fn.max() > depth_fp.max()
        depth = depth_fn if use_fn else depth_fp
        assert points.labels[b, 0] == int(use_fn)
        assert depth[tuple(point)] > max(depth_fn.max(), depth_fp.max()) / 2


def test_error_interior_click_is_the_deepest_error_element(targets_3d):
    prediction = shifted(targets_3d, -4)
    points = next_click_error_interior(prediction, targets_3d)
    for b, point in enumerate(points.coords[:, 0].long().tolist()):
        fn = (targets_3d[b] & ~prediction[b]).numpy()
        fp = (prediction[b] & ~targets_3d[b]).numpy()
        depth = np.maximum(depth_np(fn), depth_np(fp))
        assert depth[tuple(point)] == depth.max()
        assert points.labels[b, 0] == int(fn[tuple(point)])


# SAM-Med2D fixed modes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("num_points", "num_foreground"), [(3, 1), (5, 2), (9, 4)])
def test_sam_med2d_n_points_are_n_half_foreground_and_the_rest_background(masks_2d, num_points, num_foreground):
    points = sam_med2d_points(masks_2d, num_points, seeded(num_points))
    assert ((points.labels == 1).sum(dim=1) == num_foreground).all()
    assert ((points.labels == 0).sum(dim=1) == num_points - num_foreground).all()
    assert torch.equal(values_at(masks_2d, points.coords), points.labels == 1)


def test_sam_med2d_points_come_in_random_order(masks_2d):
    points = sam_med2d_points(masks_2d[:1].expand(30, -1, -1), 3, seeded(0))
    assert len({tuple(labels) for labels in points.labels.tolist()}) == 3


def test_sam_med2d_single_point_is_foreground_or_background_for_an_empty_mask(masks_2d):
    masks = torch.cat([masks_2d[:1], torch.zeros_like(masks_2d[:1])])
    points = sam_med2d_points(masks, 1, seeded(0))
    assert points.labels[:, 0].tolist() == [1, 0]
    assert values_at(masks, points.coords).tolist() == [[True], [False]]


# Boxes --------------------------------------------------------------------------------------------------


def tight_box_np(mask: np.ndarray) -> tuple[list[int], list[int]]:
    box = ndimage.find_objects(largest_component_np(mask).astype(np.int32))[0]
    return [s.start for s in box], [s.stop for s in box]


@pytest.mark.parametrize("fixture", ["targets_3d", "masks_2d"])
def test_tight_box_is_exactly_the_box_of_the_largest_component(request, fixture):
    masks = request.getfixturevalue(fixture)
    boxes = boxes_from_masks(masks)
    assert boxes.valid.all()
    for b, mask in enumerate(masks.numpy()):
        lo, hi = tight_box_np(mask)
        assert boxes.lo[b].tolist() == lo and boxes.hi[b].tolist() == hi
    largest = torch.stack([torch.from_numpy(largest_component_np(m)) for m in masks.numpy()])
    assert boxes.contains(largest).all()


def test_sam_med2d_jitter_moves_both_corners_by_one_offset_within_upstream_range(masks_2d):
    repeats = 100
    tight = boxes_from_masks(masks_2d)
    shorter_side = (tight.hi - tight.lo).amin(dim=1)
    max_noise = torch.clamp((shorter_side * 0.1 * 5).floor(), max=5)[:, None].repeat(repeats, 1)
    jittered = boxes_from_masks(masks_2d.repeat(repeats, 1, 1), jitter="sam_med2d", generator=seeded(0))
    offset = jittered.lo - tight.lo.repeat(repeats, 1)
    assert torch.equal(jittered.hi - tight.hi.repeat(repeats, 1), offset)
    assert ((offset >= -max_noise) & (offset <= max_noise - 1)).all()
    per_mask = offset.reshape(repeats, len(masks_2d), 2)
    assert torch.equal(per_mask.amin(dim=0), -max_noise[: len(masks_2d)].expand(-1, 2))
    assert torch.equal(per_mask.amax(dim=0), (max_noise[: len(masks_2d)] - 1).expand(-1, 2))


# Empty and one-voxel masks ------------------------------------------------------------------------------


def test_every_simulator_has_a_defined_result_for_an_empty_mask():
    empty = torch.zeros(2, 16, 16, 16, dtype=torch.bool)
    for points in (
        first_click_random_foreground(empty, seeded(0)),
        first_click_interior(empty),
        next_click_random_error(empty, empty, generator=seeded(0)),
        next_click_ritm(empty, empty, generator=seeded(0)),
        next_click_error_interior(empty, empty),
    ):
        assert (points.labels == PADDING_LABEL).all() and (points.coords == 0).all()
    points = sam_med2d_points(empty, 3, seeded(0))
    assert ((points.labels == PADDING_LABEL).sum(dim=1) == 1).all(), "the foreground slot is padding"
    boxes = boxes_from_masks(empty, jitter="sam_med2d", generator=seeded(0))
    assert not boxes.valid.any() and (boxes.lo == 0).all() and (boxes.hi == 0).all()


def test_one_voxel_mask_is_clicked_and_boxed_on_that_voxel(label_map_3d):
    one_voxel = (label_map_3d == ONE_VOXEL_CLASS)[None]
    (voxel,) = torch.nonzero(one_voxel[0]).float()
    for points in (
        first_click_random_foreground(one_voxel, seeded(0)),
        first_click_interior(one_voxel),
        next_click_random_error(torch.zeros_like(one_voxel), one_voxel, generator=seeded(0)),
        next_click_ritm(torch.zeros_like(one_voxel), one_voxel, generator=seeded(0)),
        next_click_error_interior(torch.zeros_like(one_voxel), one_voxel),
    ):
        assert points.labels.tolist() == [[1]] and torch.equal(points.coords[0, 0], voxel)
    for jitter in ("none", "sam_med2d"):  # SAM-Med2D's jitter range is 0 for a 1-voxel box
        boxes = boxes_from_masks(one_voxel, jitter=jitter, generator=seeded(0))
        assert torch.equal(boxes.lo[0], voxel) and torch.equal(boxes.hi[0], voxel + 1)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_simulators_give_the_same_clicks_on_gpu_as_on_cpu(targets_3d):
    gpu = targets_3d.cuda()
    prediction = shifted(targets_3d, 3)
    for simulate in (
        lambda t, p: first_click_random_foreground(t, seeded(5)),
        lambda t, p: next_click_random_error(p, t, num_points=8, generator=seeded(5)),
        lambda t, p: boxes_from_masks(t, jitter="sam_med2d", generator=seeded(5)),
    ):
        on_cpu, on_gpu = simulate(targets_3d, prediction), simulate(gpu, prediction.cuda())
        for name in ("coords", "labels", "lo", "hi"):
            if hasattr(on_cpu, name):
                assert torch.equal(getattr(on_cpu, name), getattr(on_gpu, name).cpu())
