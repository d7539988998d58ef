"""Each family's decode policy and click loop, on a stand-in network whose outputs are chosen by the test.

The stand-in decodes like SAM's mask decoder: four mask tokens, ``multimask_output=True`` returns tokens 1..3 and
``False`` token 0, with one predicted IoU per returned mask. It records what it was given, so the tests see exactly
which prompts, mask prompt and multimask flag each family's processor feeds it.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zoo.errors import PromptError
from zoo.processors import PROCESSOR_TYPES, ClickState, Processor, select_best_mask
from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts, Prompts

FAMILIES = ["sam_med2d", "sam", "sam_unet", "litemedsam", "sam_med3d"]
MULTIMASK = {"sam_med2d": True, "sam": True, "sam_unet": False, "litemedsam": False, "sam_med3d": False}
SIGMOID = {"sam_med2d": True, "sam": False, "sam_unet": False, "litemedsam": True, "sam_med3d": True}


def processor(family: str) -> Processor:
    cls = PROCESSOR_TYPES[family]
    return cls(cls.config_class())


class StandIn(nn.Module):
    """A network whose decoder returns ``tokens`` (``B x 4 x *grid``) and ``iou`` (``B x 4``, or None for a model
    without an IoU head), shifted by ``call * 100`` so every call's output is distinct; records each call."""

    def __init__(self, family: str, batch: int = 2, with_iou: bool = True) -> None:
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.spatial_dims = 3 if family == "sam_med3d" else 2
        self.mask_input_size = (4,) * self.spatial_dims
        self.input_size = processor(family).input_shape
        grid = self.mask_input_size
        self.tokens = torch.arange(batch * 4, dtype=torch.float32).reshape(batch, 4, *([1] * len(grid))) - 3.5
        self.tokens = self.tokens.expand(batch, 4, *grid).contiguous()
        self.iou = torch.tensor([[0.99, 0.2, 0.9, 0.5], [0.99, 0.7, 0.1, 0.3]])[:batch] if with_iou else None
        self.calls: list[dict] = []

    def decode(self, encoding, points=None, boxes=None, masks=None, multimask_output=False):
        shift = 100.0 * len(self.calls)
        self.calls.append(dict(points=points, boxes=boxes, masks=masks, multimask_output=multimask_output))
        chosen = slice(1, 4) if multimask_output else slice(0, 1)
        iou = None if self.iou is None else self.iou[:, chosen]
        return SimpleNamespace(low_res_logits=self.tokens[:, chosen] + shift, iou_predictions=iou)


def points(family: str, coords: list[list[float]], batch: int = 2) -> PointPrompts:
    dims = 3 if family == "sam_med3d" else 2
    shape = processor(family).input_shape
    coords_t = torch.tensor(coords, dtype=torch.float32)[None].expand(batch, -1, -1).contiguous()
    assert coords_t.shape[-1] == dims
    return PointPrompts(coords_t, torch.ones(batch, len(coords), dtype=torch.int64), shape)


def a_point(family: str, value: float = 3.0, batch: int = 2) -> PointPrompts:
    return points(family, [[value] * (3 if family == "sam_med3d" else 2)], batch)


# ------------------------------------------------------------------------------------------------ one mask
@pytest.mark.parametrize("family", ["sam_med2d", "sam"])
def test_sam_med2d_and_sam_keep_the_candidate_with_the_highest_predicted_iou(family):
    net = StandIn(family)
    decoded = processor(family).decode(net, None, Prompts(a_point(family)))
    assert net.calls[0]["multimask_output"] is True
    # Candidates are tokens 1..3. Row 0's IoUs (0.2, 0.9, 0.5) pick token 2, row 1's (0.7, 0.1, 0.3) token 1.
    assert torch.equal(decoded.low_res_logits[0, 0], net.tokens[0, 2])
    assert torch.equal(decoded.low_res_logits[1, 0], net.tokens[1, 1])
    assert decoded.iou_predictions.tolist() == [[pytest.approx(0.9)], [pytest.approx(0.7)]]


@pytest.mark.parametrize("family", ["sam_unet", "litemedsam", "sam_med3d"])
def test_sam_unet_litemedsam_and_sam_med3d_decode_the_single_mask_token(family):
    net = StandIn(family, with_iou=family != "sam_unet")  # SAM-UNet has no IoU head
    decoded = processor(family).decode(net, None, Prompts(a_point(family)))
    assert net.calls[0]["multimask_output"] is False
    assert torch.equal(decoded.low_res_logits, net.tokens[:, :1])
    if family == "sam_unet":
        assert decoded.iou_predictions is None
    else:
        assert decoded.iou_predictions.tolist() == [[pytest.approx(0.99)], [pytest.approx(0.99)]]


def test_select_best_mask_picks_per_prompt_set():
    low_res = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).reshape(2, 3, 2, 2)
    best, iou = select_best_mask(low_res, torch.tensor([[0.1, 0.3, 0.2], [0.9, 0.0, 0.5]]))
    assert torch.equal(best, torch.stack([low_res[0, 1:2], low_res[1, 0:1]]))
    assert iou.tolist() == [[pytest.approx(0.3)], [pytest.approx(0.9)]]


# --------------------------------------------------------------------------------------- threshold and feedback
@pytest.mark.parametrize("family", FAMILIES)
def test_masks_are_sigmoid_above_one_half_or_logits_above_zero(family):
    logits = torch.tensor([-1.0, 0.0, 1e-8, 1e-3])
    assert torch.sigmoid(logits[2]) == 0.5  # in float32 the two rules differ on this logit
    expected = [False, False, False, True] if SIGMOID[family] else [False, False, True, True]
    assert processor(family).binarize(logits).tolist() == expected


@pytest.mark.parametrize("family", FAMILIES)
def test_the_previous_mask_is_fed_back_as_probabilities_for_sam_med2d_and_as_logits_otherwise(family):
    logits = torch.linspace(-4, 4, 16).reshape(1, 1, 4, 4)
    if family == "sam_med3d":
        logits = logits[..., None].expand(1, 1, 4, 4, 4)
    fed = processor(family).feedback(logits).logits
    assert torch.equal(fed, torch.sigmoid(logits) if family == "sam_med2d" else logits)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_sam_med3d_starts_with_an_all_zero_mask_prompt(family):
    net = StandIn(family)
    first = processor(family).first_mask(2, net, "cpu")
    if family == "sam_med3d":
        assert first.logits.shape == (2, 1, 4, 4, 4) and not first.logits.any()
    else:
        assert first is None


@pytest.mark.parametrize("family", FAMILIES)
def test_a_mask_prompt_of_another_grid_is_refused(family):
    net = StandIn(family)
    wrong = MaskPrompts(torch.zeros(2, 1, *((2,) * net.spatial_dims)))
    with pytest.raises(PromptError, match="mask prompt"):
        processor(family).decode(net, None, Prompts(a_point(family), masks=wrong))
    assert not net.calls


# ------------------------------------------------------------------------------------------------ click loop
@pytest.mark.parametrize("family", FAMILIES)
def test_clicks_accumulate_and_each_gets_the_previous_mask_as_the_family_feeds_it(family):
    proc, net = processor(family), StandIn(family)
    first_point, second_point = a_point(family, 3.0), a_point(family, 5.0)
    state, first = proc.click(net, None, ClickState(), first_point)
    state, second = proc.click(net, None, state, second_point)

    first_call, second_call = net.calls
    first_coords = first_call["points"][0]
    second_coords = second_call["points"][0]
    assert first_coords.shape[1] == 1 and second_coords.shape[1] == 2  # all clicks so far
    if family == "sam_med3d":
        assert first_call["masks"].shape == (2, 1, 4, 4, 4) and not first_call["masks"].any()
    else:
        assert first_call["masks"] is None
    fed = torch.sigmoid(first.low_res_logits) if family == "sam_med2d" else first.low_res_logits
    assert torch.equal(second_call["masks"], fed)
    assert torch.equal(state.low_res_logits, second.low_res_logits)
    assert state.points.coords.shape[1] == 2


@pytest.mark.parametrize("family", ["sam_med2d", "sam", "sam_unet", "litemedsam"])
def test_a_box_stays_for_later_clicks_until_another_box_replaces_it(family):
    proc, net = processor(family), StandIn(family)
    shape = proc.input_shape
    valid = torch.ones(2, dtype=torch.bool)
    box = BoxPrompts(torch.tensor([[1.0, 2.0]] * 2), torch.tensor([[9.0, 12.0]] * 2), valid, shape)
    other = BoxPrompts(torch.tensor([[0.0, 0.0]] * 2), torch.tensor([[5.0, 6.0]] * 2), valid, shape)
    state, _ = proc.click(net, None, ClickState(), boxes=box)
    state, _ = proc.click(net, None, state, a_point(family))
    state, _ = proc.click(net, None, state, boxes=other)
    boxes_fed = [call["boxes"] for call in net.calls]
    assert boxes_fed[0].tolist() == boxes_fed[1].tolist() == [[2.0, 1.0, 12.0, 9.0]] * 2  # (x0, y0, x1, y1)
    assert boxes_fed[2].tolist() == [[0.0, 0.0, 6.0, 5.0]] * 2
    assert net.calls[0]["points"] is None and net.calls[2]["points"][0].shape[1] == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_without_mask_feedback_no_click_gets_a_mask_prompt(family):
    proc, net = processor(family), StandIn(family)
    state, _ = proc.click(net, None, ClickState(), a_point(family), use_mask_feedback=False)
    proc.click(net, None, state, a_point(family, 5.0), use_mask_feedback=False)
    assert [call["masks"] for call in net.calls] == [None, None]


def test_sam_med3d_replays_several_points_as_clicks_in_order():
    proc, net = processor("sam_med3d"), StandIn("sam_med3d")
    given = points("sam_med3d", [[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    decoded = proc.segment(net, None, Prompts(given))

    assert [call["points"][0].shape[1] for call in net.calls] == [1, 2, 3]
    assert torch.equal(net.calls[2]["points"][0], given.coords)
    assert not net.calls[0]["masks"].any()
    # Each later click gets the previous click's logits (call k returns tokens[:, :1] + 100 k).
    for k in (1, 2):
        assert torch.equal(net.calls[k]["masks"], net.tokens[:, :1] + 100.0 * (k - 1))
    assert torch.equal(decoded.low_res_logits, net.tokens[:, :1] + 200.0)

    stepwise, state = StandIn("sam_med3d"), ClickState()
    for k in range(3):
        one = PointPrompts(given.coords[:, k : k + 1], given.labels[:, k : k + 1], given.spatial_shape)
        state, step = proc.click(stepwise, None, state, one)
    assert torch.equal(step.low_res_logits, decoded.low_res_logits)


@pytest.mark.parametrize("family", ["sam_med2d", "sam", "sam_unet", "litemedsam"])
def test_the_2d_families_decode_a_whole_prompt_set_once(family):
    net = StandIn(family)
    processor(family).segment(net, None, Prompts(points(family, [[1.0, 2.0], [3.0, 4.0]])))
    assert len(net.calls) == 1 and net.calls[0]["points"][0].shape[1] == 2


# --------------------------------------------------------------------------------------------- model inputs
@pytest.mark.parametrize("family", ["sam_med2d", "sam", "sam_unet", "litemedsam"])
def test_2d_families_give_the_decoder_x_y_points_and_x0_y0_x1_y1_boxes(family):
    shape = processor(family).input_shape
    pts = PointPrompts.from_lists([[[10, 20], [30, 40]]], [[1, 0]], shape)
    boxes = BoxPrompts(torch.tensor([[5.0, 6.0]]), torch.tensor([[50.0, 60.0]]), torch.tensor([True]), shape)
    kwargs = processor(family).model_kwargs(Prompts(pts, boxes))
    assert kwargs["points"][0].tolist() == [[[20.0, 10.0], [40.0, 30.0]]]
    assert kwargs["points"][1].tolist() == [[1, 0]]
    assert kwargs["boxes"].tolist() == [[6.0, 5.0, 60.0, 50.0]]


def test_sam_med3d_takes_points_in_tensor_index_order_unchanged_and_no_box():
    proc = processor("sam_med3d")
    pts = PointPrompts.from_lists([[[10, 20, 30]]], [[1]], proc.input_shape)
    kwargs = proc.model_kwargs(Prompts(pts, masks=MaskPrompts.zeros(1, (32, 32, 32))))
    assert kwargs["points"][0].tolist() == [[[10.0, 20.0, 30.0]]] and kwargs["points"][1].tolist() == [[1]]
    assert kwargs["boxes"] is None and kwargs["masks"].shape == (1, 1, 32, 32, 32)
    box = BoxPrompts(torch.zeros(1, 3), torch.ones(1, 3), torch.tensor([True]), proc.input_shape)
    with pytest.raises(PromptError, match="SAM-Med3D"):
        proc.model_kwargs(Prompts(boxes=box))
