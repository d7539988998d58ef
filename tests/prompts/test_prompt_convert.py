"""Conversion of the shared containers to what SAM-Med3D and SAM-Med2D take."""

from __future__ import annotations

import pytest
import torch

from zoo.prompts import BoxPrompts, MaskPrompts, PointPrompts, sam_med2d_prompts, sam_med3d_prompts


def test_sam_med3d_takes_tensor_index_order_unchanged():
    points = PointPrompts.from_lists([[[10, 20, 30]]], [[1]], (128, 128, 128))
    inputs = sam_med3d_prompts(points, MaskPrompts.zeros(1, (32, 32, 32)))
    coords, labels = inputs["points"]
    assert coords.tolist() == [[[10.0, 20.0, 30.0]]] and labels.tolist() == [[1]]
    assert inputs["boxes"] is None and inputs["masks"].shape == (1, 1, 32, 32, 32)


def test_sam_med3d_rejects_boxes_points_off_the_crop_grid_and_wrong_mask_sizes():
    box = BoxPrompts(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([True]), (128, 128, 128))
    with pytest.raises(ValueError, match="no box prompt"):
        sam_med3d_prompts(boxes=box)
    with pytest.raises(ValueError, match="crop grid"):
        sam_med3d_prompts(PointPrompts.from_lists([[[1, 2, 3]]], [[1]], (64, 64, 64)))
    with pytest.raises(ValueError, match="quarter"):
        sam_med3d_prompts(masks=MaskPrompts.zeros(1, (16, 16, 16)))


def test_sam_med2d_takes_x_y_points_and_x0_y0_x1_y1_boxes():
    points = PointPrompts.from_lists([[[10, 20], [30, 40]]], [[1, 0]], (256, 256))
    boxes = BoxPrompts(torch.tensor([[5.0, 6.0]]), torch.tensor([[50.0, 60.0]]), torch.tensor([True]), (256, 256))
    inputs = sam_med2d_prompts(points, boxes)
    assert inputs["points"][0].tolist() == [[[20.0, 10.0], [40.0, 30.0]]]
    assert inputs["boxes"].tolist() == [[6.0, 5.0, 60.0, 50.0]]


def test_sam_med2d_mask_prompt_is_probabilities_as_upstream_feeds_it():
    logits = torch.tensor([-2.0, 0.0, 3.0]).reshape(1, 1, 1, 3).expand(1, 1, 64, 3).contiguous()
    logits = torch.nn.functional.pad(logits, (0, 61))
    assert torch.equal(sam_med2d_prompts(masks=MaskPrompts(logits))["masks"], torch.sigmoid(logits))
    assert torch.equal(sam_med2d_prompts(masks=MaskPrompts(logits), mask_as_probabilities=False)["masks"], logits)


def test_sam_med2d_refuses_invalid_boxes():
    boxes = BoxPrompts(torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([True, False]), (256, 256))
    with pytest.raises(ValueError, match=r"no box for samples \[1\]"):
        sam_med2d_prompts(boxes=boxes)
