"""Prompt containers: shapes, padding, per-sample counts and validation."""

from __future__ import annotations

import pytest
import torch

from zoo.prompts import BoxPrompts, MaskPrompts, PointPrompts


def test_ragged_points_are_padded_and_counted_per_sample():
    points = PointPrompts.from_lists([[[1, 2, 3], [4, 5, 6]], [[7, 8, 9]], []], [[1, 0], [1], []], (16, 16, 16))
    assert points.coords.shape == (3, 2, 3) and points.coords.dtype == torch.float32
    assert points.labels.tolist() == [[1, 0], [1, -1], [-1, -1]]
    assert points.counts.tolist() == [2, 1, 0]


def test_accumulating_clicks_appends_along_the_point_axis():
    first = PointPrompts.from_lists([[[1, 1]], [[2, 2]]], [[1], [1]], (8, 8))
    second = PointPrompts.from_lists([[[3, 3]], [[4, 4]]], [[0], [-1]], (8, 8))
    both = PointPrompts.empty(2, (8, 8)).cat(first).cat(second)
    assert both.coords[:, :, 0].tolist() == [[1, 3], [2, 4]]
    assert both.counts.tolist() == [2, 1]


def test_points_on_different_grids_do_not_concatenate():
    with pytest.raises(ValueError, match="grid"):
        PointPrompts.empty(1, (8, 8)).cat(PointPrompts.empty(1, (16, 16)))


@pytest.mark.parametrize(
    ("coords", "labels", "message"),
    [
        (torch.zeros(2, 3), torch.zeros(2, 3, dtype=torch.int64), "B x N x D"),
        (torch.zeros(2, 3, 3), torch.zeros(2, 2, dtype=torch.int64), "labels must be B x N"),
        (torch.zeros(2, 3, 3, dtype=torch.float64), torch.zeros(2, 3, dtype=torch.int64), "float32"),
        (torch.zeros(2, 3, 3), torch.zeros(2, 3, dtype=torch.int32), "int64"),
    ],
)
def test_malformed_points_are_rejected(coords, labels, message):
    with pytest.raises(ValueError, match=message):
        PointPrompts(coords, labels, (8, 8, 8))


def test_a_box_contains_a_mask_when_it_covers_every_foreground_element():
    mask = torch.zeros(3, 8, 8, dtype=torch.bool)
    mask[:, 2:5, 3:6] = True
    lo = torch.tensor([[2.0, 3.0], [2.0, 3.0], [2.0, 3.0]])
    hi = torch.tensor([[5.0, 6.0], [5.0, 5.0], [5.0, 6.0]])
    boxes = BoxPrompts(lo, hi, torch.tensor([True, True, False]), (8, 8))
    assert boxes.contains(mask).tolist() == [True, False, False]


def test_zero_mask_prompt_has_the_low_res_shape():
    masks = MaskPrompts.zeros(2, (32, 32, 32))
    assert masks.logits.shape == (2, 1, 32, 32, 32) and masks.spatial_shape == (32, 32, 32)
    assert not masks.logits.any()
