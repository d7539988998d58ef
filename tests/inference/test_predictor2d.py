"""The interactive SAM-Med2D predictor (zoo.inference.SamMed2DPredictor) on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.inference import SamMed2DPredictor

from .conftest import CallCounter

HEIGHT, WIDTH = 100, 200


@pytest.fixture
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)


@pytest.fixture
def predictor(tiny_2d_model, image) -> SamMed2DPredictor:
    predictor = SamMed2DPredictor(tiny_2d_model)
    predictor.set_image(image)
    return predictor


def capture_prompts(model: torch.nn.Module) -> list[dict]:
    seen: list[dict] = []
    model.prompt_encoder.register_forward_hook(lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True)
    return seen


def test_the_image_encoder_runs_once_for_several_clicks(tiny_2d_model, image):
    counter = CallCounter(tiny_2d_model.image_encoder)
    predictor = SamMed2DPredictor(tiny_2d_model)
    predictor.set_image(image)
    first = predictor.predict(point_coords=[[50, 40]], point_labels=[1])
    predictor.predict(point_coords=[[50, 40], [120, 60]], point_labels=[1, 0])
    predictor.predict(box=[10, 10, 150, 90], mask_input=torch.sigmoid(first.low_res_logits))
    assert counter.calls == 1
    predictor.set_image(image)
    assert counter.calls == 2


def test_prompts_are_mapped_per_axis_into_the_model_frame(predictor):
    seen = capture_prompts(predictor.model)
    predictor.predict(point_coords=[[150.0, 25.0]], point_labels=[1], box=[20.0, 10.0, 180.0, 90.0])
    coords, labels = seen[-1]["points"]
    assert coords.tolist() == [[[48.0, 16.0]]] and labels.tolist() == [[1]]  # x * 64/200, y * 64/100
    assert seen[-1]["boxes"].tolist() == [pytest.approx([6.4, 6.4, 57.6, 57.6])]


def test_outputs_are_at_the_original_size_and_masks_threshold_the_logits(predictor):
    result = predictor.predict(point_coords=[[50, 40]], point_labels=[1])
    assert result.logits.shape == result.masks.shape == (1, HEIGHT, WIDTH)
    assert result.masks.dtype == torch.bool
    assert torch.equal(result.masks, torch.sigmoid(result.logits) > 0.5)
    assert result.iou_predictions.shape == (1,) and result.low_res_logits.shape == (1, 32, 32)


def test_multimask_keeps_the_candidate_with_the_highest_predicted_iou(predictor):
    model = predictor.model
    result = predictor.predict(point_coords=[[50, 40]], point_labels=[1], multimask_output=True)
    with torch.inference_mode():
        coords = torch.tensor([[[50 * 64 / WIDTH, 40 * 64 / HEIGHT]]])
        candidates = model.decode(predictor.features, points=(coords, torch.tensor([[1]])), multimask_output=True)
    best = int(candidates.iou_predictions[0].argmax())
    assert result.iou_predictions.item() == pytest.approx(candidates.iou_predictions[0, best].item(), abs=1e-6)
    torch.testing.assert_close(result.low_res_logits[0], candidates.low_res_logits[0, best])


def test_several_boxes_give_one_mask_each_like_separate_calls(predictor):
    boxes = [[10, 10, 90, 60], [100, 20, 190, 95]]
    together = predictor.predict(box=boxes)
    for i, box in enumerate(boxes):
        alone = predictor.predict(box=box)
        torch.testing.assert_close(together.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)
    assert together.masks.shape == (2, HEIGHT, WIDTH)


def test_bgr_images_are_flipped_to_rgb(tiny_2d_model, image):
    rgb, bgr = SamMed2DPredictor(tiny_2d_model), SamMed2DPredictor(tiny_2d_model)
    rgb.set_image(image)
    bgr.set_image(image[..., ::-1].copy(), image_format="BGR")
    assert torch.equal(rgb.features, bgr.features)


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"point_coords": [[250.0, 40.0]], "point_labels": [1]}, r"point \[250.0, 40.0\] lies outside the image"),
        ({"point_coords": [[-1.0, 40.0]], "point_labels": [1]}, "outside the image"),
        ({"box": [10, 10, 150, 120]}, "box corner .* outside the image"),
        ({"box": [150, 10, 10, 90]}, "x0 <= x1"),
        ({"point_coords": [[10, 10]], "point_labels": [1, 0]}, "1 points but 2 labels"),
        ({"point_coords": [[10, 10]], "point_labels": [3]}, "labels must be -1, 0 or 1"),
        ({"point_coords": [[10, 10]]}, "given together"),
        ({"mask_input": torch.zeros(1, 16, 16)}, "mask_input must be 1 x 32 x 32"),
        ({}, "at least one prompt"),
    ],
)
def test_bad_prompts_get_a_clear_error(predictor, prompts, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**prompts)


def test_predicting_before_setting_an_image_is_an_error(tiny_2d_model):
    with pytest.raises(RuntimeError, match="set_image"):
        SamMed2DPredictor(tiny_2d_model).predict(point_coords=[[1, 1]], point_labels=[1])


def test_images_must_be_three_channel_hwc(tiny_2d_model):
    with pytest.raises(ValueError, match="H x W x 3"):
        SamMed2DPredictor(tiny_2d_model).set_image(np.zeros((3, 10, 10), dtype=np.uint8))
