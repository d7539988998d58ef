"""Slice propagation (zoo.inference.propagation) on tiny random models: the authors' slice order, the middle box, the
box from the previous mask (LiteMedSAM's rule and the default rule), the fallback to the middle box, and each slice
segmented exactly as the Predictor segments one image. Agreement with the authors' own run is the parity suite's
(``litemedsam`` case, ``infer3d_segs``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tiny_models import mark_whole_input, tiny_model
from zoo.errors import PromptError
from zoo.inference.predictor import Predictor
from zoo.inference.propagation import propagate_box, slice_order
from zoo.processors import processor_for
from zoo.prompts.types import Prompts
from zoo.prompts.validate import boxes_from_user

# Tiny random models: the Predictor's warning about random weights is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::zoo.inference.predictor.RandomWeightsWarning")

DEPTH, HEIGHT, WIDTH = 9, 40, 50
SLICES = np.random.default_rng(3).integers(0, 256, size=(DEPTH, HEIGHT, WIDTH), dtype=np.uint8)
BOX3D = (10, 8, 2, 35, 30, 7)  # x_min, y_min, z_min, x_max, y_max, z_max (inclusive)


@pytest.fixture(scope="module")
def litemedsam():
    return tiny_model("litemedsam")


def test_slice_order_is_the_authors_loops():
    # CVPR24_LiteMedSAM_infer.py since 2a5a055: z_middle .. z_max, then z_middle - 1 .. z_min (ends included).
    assert slice_order(2, 7) == (4, [4, 5, 6, 7], [3, 2])
    assert slice_order(0, 18) == (9, list(range(9, 19)), list(range(8, -1, -1)))
    # Up to 0c044e9: range(z_middle, z_max), then range(z_middle - 1, z_min, -1).
    assert slice_order(2, 7, include_ends=False) == (4, [4, 5, 6], [3])
    assert slice_order(2, 3, include_ends=False) == (2, [2], [])


def test_the_box_slices_are_segmented_and_the_ends_can_be_left_out(litemedsam):
    net = mark_whole_input(tiny_model("litemedsam"), +1.0)  # every mask is the whole image
    processor = processor_for(net)
    result = propagate_box(net, processor, SLICES, BOX3D)
    assert result.slices == [4, 5, 6, 7, 3, 2]
    assert result.masks.shape == (DEPTH, HEIGHT, WIDTH)
    assert [z for z in range(DEPTH) if result.masks[z].any()] == [2, 3, 4, 5, 6, 7]
    assert bool(result.masks[2:8].all())
    earlier = propagate_box(net, processor, SLICES, BOX3D, include_ends=False)
    assert earlier.slices == [4, 5, 6, 3]
    assert [z for z in range(DEPTH) if earlier.masks[z].any()] == [3, 4, 5, 6]


def test_litemedsam_boxes_come_from_the_previous_mask_on_the_256_grid():
    net = mark_whole_input(tiny_model("litemedsam"), +1.0)
    processor = processor_for(net)
    result = propagate_box(net, processor, SLICES, BOX3D)
    # Middle slice: the 2D box scaled by int(c * 64 / max(H, W)) (the authors' resize_box_to_256, here 64).
    scale = 64 / max(HEIGHT, WIDTH)
    expected_middle = [int(c * scale) for c in (10, 8, 35, 30)]
    assert result.boxes[4].tolist() == expected_middle and not result.from_previous[4]
    # Every other slice: the whole previous mask resized to 51 x 64, tight box grown by 3, clipped to [0, 64]:
    # x_max = min(64, 63 + 3) = 64 (the side, not side - 1), y_max = min(64, 50 + 3) = 53.
    for z in (5, 6, 7, 3, 2):
        assert result.from_previous[z]
        assert result.boxes[z].tolist() == [0.0, 0.0, 64.0, 53.0]


def test_an_empty_previous_mask_falls_back_to_the_middle_box():
    net = mark_whole_input(tiny_model("litemedsam"), -1.0)  # every mask is empty
    result = propagate_box(net, processor_for(net), SLICES, BOX3D)
    assert not result.masks.any()
    assert not any(result.from_previous.values())
    assert all(torch.equal(box, result.boxes[4]) for box in result.boxes.values())


def test_each_slice_is_segmented_as_the_predictor_segments_that_image(litemedsam):
    processor = processor_for(litemedsam)
    result = propagate_box(litemedsam, processor, torch.from_numpy(SLICES), BOX3D)
    predictor = Predictor(litemedsam)
    for z in result.slices:
        predictor.set_image(SLICES[z])
        frame = predictor.frame
        prompts = Prompts(boxes=_model_box_to_user(result.boxes[z]))
        decoded = processor.decode(litemedsam, predictor.features, prompts)
        expected = processor.to_original(decoded.low_res_logits, frame).mask[0, 0]
        assert torch.equal(result.masks[z], expected), z
    predictor.set_image(SLICES[4])
    middle = predictor.predict(box=[10, 8, 35, 30])
    assert torch.equal(result.masks[4], middle.masks[0])


def _model_box_to_user(box):
    """A model-grid (x0, y0, x1, y1) box as the processor's container on the model grid."""
    from zoo.prompts.types import BoxPrompts

    x0, y0, x1, y1 = (float(v) for v in box)
    return BoxPrompts(torch.tensor([[y0, x0]]), torch.tensor([[y1, x1]]), torch.ones(1, dtype=torch.bool), (64, 64))


def test_litemedsam_rule_matches_opencv_inter_area_on_the_mask():
    cv2 = pytest.importorskip("cv2")
    processor = processor_for(tiny_model("litemedsam"))
    frame = processor.prepare(SLICES[0])
    mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
    mask[11:14, 20:23] = 1  # small: INTER_AREA enlarging rounds its border either way
    resized = cv2.resize(mask, (64, 51), interpolation=cv2.INTER_AREA)
    rows, cols = np.nonzero(resized)
    expected = [max(0, cols.min() - 3), max(0, rows.min() - 3), min(64, cols.max() + 3), min(64, rows.max() + 3)]
    box = processor.box_from_previous_mask(torch.from_numpy(mask).bool(), frame)
    assert processor.model_kwargs(Prompts(boxes=box))["boxes"][0].tolist() == [float(v) for v in expected]
    assert processor.box_from_previous_mask(torch.zeros(HEIGHT, WIDTH, dtype=torch.bool), frame) is None


def test_default_rule_grows_the_tight_box_in_original_pixels_and_maps_it_like_a_user_box():
    processor = processor_for(tiny_model("sam_med2d_b"))
    frame = processor.prepare(SLICES[0])
    mask = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    mask[10:20, 30:48] = True  # rows 10..19, columns 30..47: box [30, 10, 48, 20], grown by 3, x clipped to 50
    box = processor.box_from_previous_mask(mask, frame, margin=3)
    user = processor.to_model_space(Prompts(boxes=boxes_from_user([27, 7, 50, 23], (HEIGHT, WIDTH))), frame).boxes
    assert torch.equal(box.lo, user.lo) and torch.equal(box.hi, user.hi)
    assert processor.box_from_previous_mask(torch.zeros_like(mask), frame) is None


def test_other_2d_families_propagate_with_the_default_rule():
    net = mark_whole_input(tiny_model("sam_med2d_b"), +1.0)
    result = propagate_box(net, processor_for(net), SLICES, BOX3D)
    assert result.slices == [4, 5, 6, 7, 3, 2] and all(result.from_previous[z] for z in (5, 6, 7, 3, 2))
    assert bool(result.masks[2:8].all()) and not result.masks[[0, 1, 8]].any()


def test_bad_boxes_and_models_are_refused(litemedsam):
    processor = processor_for(litemedsam)
    with pytest.raises(PromptError, match="z_min"):
        propagate_box(litemedsam, processor, SLICES, (10, 8, 5, 35, 30, DEPTH))
    with pytest.raises(PromptError, match="include_ends"):
        propagate_box(litemedsam, processor, SLICES, (10, 8, 4, 35, 30, 4), include_ends=False)
    assert propagate_box(litemedsam, processor, SLICES, (10, 8, 4, 35, 30, 4)).slices == [4]
    with pytest.raises(PromptError):
        propagate_box(litemedsam, processor, SLICES, (10, 8, 2, WIDTH + 5, 30, 7))
    net3d = tiny_model("sam_med3d_turbo")
    with pytest.raises(ValueError, match="2D model that takes boxes"):
        propagate_box(net3d, processor_for(net3d), SLICES, BOX3D)


def test_the_model_mode_is_restored(litemedsam):
    litemedsam.train()
    try:
        propagate_box(litemedsam, processor_for(litemedsam), SLICES, BOX3D)
        assert litemedsam.training
    finally:
        litemedsam.eval()
