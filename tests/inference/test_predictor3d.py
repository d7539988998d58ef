"""The interactive SAM-Med3D predictor (zoo.inference.SamMed3DPredictor) on a tiny random model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from zoo.inference import SamMed3DPredictor
from zoo.inference.predictor3d import upsample_logits

from .conftest import CallCounter

CROP = 32


@pytest.fixture
def crop() -> torch.Tensor:
    return torch.randn(CROP, CROP, CROP, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def predictor(tiny_3d_model, crop) -> SamMed3DPredictor:
    predictor = SamMed3DPredictor(tiny_3d_model)
    predictor.set_image(crop)
    return predictor


def test_the_image_encoder_runs_once_for_several_clicks(tiny_3d_model, crop):
    counter = CallCounter(tiny_3d_model.image_encoder)
    predictor = SamMed3DPredictor(tiny_3d_model)
    predictor.set_image(crop)
    first = predictor.predict([[10, 12, 20]], [1], mask_input=predictor.empty_mask_input())
    second = predictor.predict([[10, 12, 20], [3, 4, 5]], [1, 0], mask_input=first.low_res_logits)
    predictor.predict(mask_input=second.low_res_logits)
    assert counter.calls == 1


def test_outputs_are_at_the_crop_size_by_trilinear_upsampling(predictor):
    result = predictor.predict([[10, 12, 20]], [1])
    assert result.logits.shape == result.masks.shape == (1, CROP, CROP, CROP)
    assert result.low_res_logits.shape == (1, 8, 8, 8) and result.iou_predictions.shape == (1,)
    expected = F.interpolate(result.low_res_logits[None], size=(CROP,) * 3, mode="trilinear", align_corners=False)
    assert torch.equal(result.logits, expected[0])
    assert torch.equal(result.masks, torch.sigmoid(result.logits) > 0.5)


def test_points_are_passed_in_tensor_index_order(predictor):
    seen = []
    predictor.model.prompt_encoder.register_forward_hook(lambda m, a, kw, out: seen.append(kw), with_kwargs=True)
    predictor.predict([[1.0, 2.0, 3.0]], [1])
    coords, labels = seen[-1]["points"]
    assert coords.tolist() == [[[1.0, 2.0, 3.0]]] and labels.tolist() == [[1]]


def test_first_click_zero_mask_matches_upstream_shape(predictor):
    assert predictor.empty_mask_input().shape == (1, 8, 8, 8)
    assert not predictor.empty_mask_input().any()


def test_upsample_logits_is_trilinear_without_corner_alignment():
    low_res = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 1, 2)
    assert upsample_logits(low_res, (1, 1, 4))[0, 0, 0, 0].tolist() == [0.0, 0.25, 0.75, 1.0]


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"point_coords": [[10, 40, 3]], "point_labels": [1]}, "lies outside the image"),
        ({"point_coords": [[10, 4]], "point_labels": [1]}, "size 3"),
        ({"point_coords": [[1, 2, 3]], "point_labels": [1], "mask_input": torch.zeros(1, 4, 4, 4)}, r"\(1, 8, 8, 8\)"),
        ({}, "give point_coords"),
    ],
)
def test_bad_prompts_get_a_clear_error(predictor, prompts, message):
    with pytest.raises(ValueError, match=message):
        predictor.predict(**prompts)


def test_a_volume_of_the_wrong_size_is_refused(tiny_3d_model):
    with pytest.raises(ValueError, match=r"crop or pad the volume first.*\(20, 32, 32\)"):
        SamMed3DPredictor(tiny_3d_model).set_image(torch.zeros(20, 32, 32))


def test_predicting_before_setting_an_image_is_an_error(tiny_3d_model):
    with pytest.raises(RuntimeError, match="set_image"):
        SamMed3DPredictor(tiny_3d_model).predict([[1, 1, 1]], [1])
