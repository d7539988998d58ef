"""The one prompt validator's rules at their edges (zoo.prompts.validate), on a 100 x 200 image (H x W)."""

from __future__ import annotations

import pytest
import torch

from zoo.errors import PromptError
from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts, Prompts
from zoo.prompts.validate import boxes_from_user, check_prompts, points_from_user

SHAPE = (100, 200)
ALL = frozenset({"points", "boxes", "masks"})


def check(prompts: Prompts, supported=ALL) -> None:
    check_prompts(prompts, SHAPE, supported, "Model", None, "slice.png")


@pytest.mark.parametrize("point", [[-0.5, -0.5], [199.5, 99.5], [0, 0], [120.25, 3.75]])
def test_a_point_anywhere_on_a_pixels_footprint_is_inside(point):
    check(Prompts(points_from_user([point], [1], SHAPE)))


@pytest.mark.parametrize(("point", "written"), [([-0.51, 10], "x=-0.51, y=10"), ([10, 99.51], "x=10, y=99.51")])
def test_a_point_off_every_pixel_is_refused_as_the_user_wrote_it(point, written):
    with pytest.raises(PromptError, match=rf"^slice\.png: point 0 at \({written}\) lies outside the 200 x 100"):
        check(Prompts(points_from_user([point], [1], SHAPE)))


def test_padding_slots_are_not_points():
    points = PointPrompts(torch.tensor([[[5.0, 5.0], [-50.0, 900.0]]]), torch.tensor([[1, -1]]), SHAPE)
    check(Prompts(points))


def test_boxes_may_touch_the_image_border_but_not_cross_it():
    check(Prompts(boxes=boxes_from_user([0, 0, 200, 100], SHAPE)))
    check(Prompts(boxes=boxes_from_user([20, 30, 20, 30], SHAPE)))  # a point-like box
    with pytest.raises(PromptError, match=r"box \[0, 0, 200.5, 100\] \(x0, y0, x1, y1\) is not a box inside"):
        check(Prompts(boxes=boxes_from_user([0, 0, 200.5, 100], SHAPE)))
    with pytest.raises(PromptError, match=r"box 1 \[-1, 0, 10, 10\]"):
        check(Prompts(boxes=boxes_from_user([[0, 0, 10, 10], [-1, 0, 10, 10]], SHAPE)))


def test_a_missing_box_is_named_by_its_prompt_set():
    boxes = BoxPrompts(torch.zeros(2, 2), torch.ones(2, 2), torch.tensor([True, False]), SHAPE)
    with pytest.raises(PromptError, match=r"no box for prompt sets \[1\] \(empty masks\)"):
        check(Prompts(boxes=boxes))


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        (Prompts(), "no prompt given"),
        (Prompts(points_from_user([[1, 2, 3]], None, (4, 5, 6), "index")), "got 3-D points for a 2-D image"),
        (Prompts(PointPrompts(torch.tensor([[[1.0, float("inf")]]]), torch.tensor([[1]]), SHAPE)), "NaN or infinite"),
        (Prompts(PointPrompts(torch.tensor([[[1.0, 1.0]]]), torch.tensor([[3]]), SHAPE)), r"got \[3\]$"),
    ],
)
def test_other_bad_prompts_get_one_message_each(prompts, message):
    with pytest.raises(PromptError, match=message):
        check(prompts)


def test_a_kind_the_model_does_not_take_is_named_with_what_it_takes():
    masks = MaskPrompts(torch.zeros(1, 1, 4, 4))
    with pytest.raises(PromptError, match=r"^slice\.png: Model takes points, not boxes, masks$"):
        check(Prompts(boxes=boxes_from_user([0, 0, 1, 1], SHAPE), masks=masks), frozenset({"points"}))


@pytest.mark.parametrize(
    ("coords", "labels", "message"),
    [
        ([[1, 2]], [1, 0], "1 points but 2 labels"),
        ([[1, 2]], [0.5], r"point labels must be 1 \(foreground\) or 0 \(background\), got \[0.5\]"),
        ([], None, r"must be a non-empty list \[\[x, y\], ...\]"),
        ([["a", 2]], None, "points must be numbers"),
    ],
)
def test_user_points_of_the_wrong_shape_or_labels_are_refused(coords, labels, message):
    with pytest.raises(PromptError, match=message):
        points_from_user(coords, labels, SHAPE)


def test_user_points_are_x_y_and_labels_default_to_foreground():
    points = points_from_user([[150, 25], [3, 4]], None, SHAPE)
    assert points.coords.tolist() == [[[25.0, 150.0], [4.0, 3.0]]] and points.labels.tolist() == [[1, 1]]
    boxes = boxes_from_user([20, 10, 180, 90], SHAPE)
    assert boxes.lo.tolist() == [[10.0, 20.0]] and boxes.hi.tolist() == [[90.0, 180.0]]
