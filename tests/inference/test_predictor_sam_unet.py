"""The cached-encoding SAM-UNet predictor (zoo.inference.SamUNetPredictor) on a tiny random model."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.inference import SamUNetPredictor
from zoo.inference import sam_unet_processing as unet

from .conftest import CallCounter

HEIGHT, WIDTH = 48, 80  # not square: the longest side (80) is resized to 64, the rest padded
IMAGE = (np.random.default_rng(0).random((HEIGHT, WIDTH, 3)) * 255).astype(np.uint8)


@pytest.fixture
def predictor(tiny_unet_model) -> SamUNetPredictor:
    predictor = SamUNetPredictor(tiny_unet_model)
    predictor.set_image(IMAGE)
    return predictor


def direct_pipeline(model, box: list[float]) -> torch.Tensor:
    """Upstream's ``SAM_UNET.infer`` steps written out: resize, normalise, pad, encode, decode, back."""
    size = model.config.image_size
    resized = unet.resize_longest_side(IMAGE, size)
    channels_first = torch.from_numpy(resized).permute(2, 0, 1)
    model_input = unet.preprocess(channels_first, size, model.config.pixel_mean, model.config.pixel_std)[None]
    boxes = unet.scale_boxes(torch.tensor([box]), (HEIGHT, WIDTH), size)
    with torch.no_grad():
        low_res = model(model_input, boxes=boxes).low_res_logits
    return unet.postprocess_masks(low_res, resized.shape[:2], (HEIGHT, WIDTH), size)[:, 0]


def test_box_prediction_equals_the_direct_pipeline_at_the_original_size(predictor, tiny_unet_model):
    result = predictor.predict(box=[10, 5, 60, 40])
    expected = direct_pipeline(tiny_unet_model, [10, 5, 60, 40])
    assert result.logits.shape == result.masks.shape == (1, HEIGHT, WIDTH)
    assert result.low_res_logits.shape == (1, 16, 16) and result.iou_predictions is None
    torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-5)
    assert torch.equal(result.masks, result.logits > 0)


def test_the_image_side_runs_once_for_several_prompts(tiny_unet_model):
    counter = CallCounter(tiny_unet_model.resnet)
    predictor = SamUNetPredictor(tiny_unet_model)
    predictor.set_image(IMAGE)
    predictor.predict(box=[10, 5, 60, 40])
    predictor.predict(point_coords=[[30, 20]], point_labels=[1])
    predictor.predict(box=[[10, 5, 60, 40], [0, 0, 20, 20]])
    assert counter.calls == 1


def test_points_are_scaled_by_the_longest_side_factor(predictor):
    seen = []
    hook = predictor.model.prompt_encoder.register_forward_hook(
        lambda module, args, kwargs, output: seen.append(kwargs), with_kwargs=True
    )
    predictor.predict(point_coords=[[40.0, 20.0]], point_labels=[1])
    hook.remove()
    coords, labels = seen[-1]["points"]
    # x by 64/80 (the longest side), y by the rounded resized height over the original one (38/48).
    assert coords[0, 0].tolist() == pytest.approx([40.0 * 64 / 80, 20.0 * 38 / 48], rel=1e-6)
    assert labels.tolist() == [[1]]


def test_multimask_and_non_8_bit_images_are_refused(predictor, tiny_unet_model):
    with pytest.raises(ValueError, match="single mask"):
        predictor.predict(box=[10, 5, 60, 40], multimask_output=True)
    fresh = SamUNetPredictor(tiny_unet_model)
    fresh.set_image(IMAGE)
    with pytest.raises(ValueError, match="uint8"):
        fresh.set_image(IMAGE.astype(np.float32))
    assert not fresh.is_image_set, "a rejected image must not leave the previous image's embedding in place"


def test_a_box_outside_the_image_names_the_problem(predictor):
    with pytest.raises(ValueError, match="outside the image"):
        predictor.predict(box=[10, 5, WIDTH + 1, 40])
