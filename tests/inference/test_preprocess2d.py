"""SAM-Med2D image and prompt geometry (zoo.inference.preprocess2d)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from zoo.inference.preprocess2d import (
    letterbox_for,
    nearest_source_indices,
    normalize,
    postprocess_for_evaluation,
    postprocess_for_predictor,
    preprocess_for_evaluation,
    preprocess_for_predictor,
    resize_nearest,
    scale_boxes,
    scale_coords,
    to_evaluation_frame,
    upsample_bilinear,
)

MEAN, STD = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)


@pytest.mark.parametrize(
    ("src", "dst", "expected"),
    [
        (5, 3, [0, 1, 3]),  # floor(i * 5/3)
        (2, 5, [0, 0, 0, 1, 1]),  # upsampling repeats, floor(i * 0.4)
        (4, 4, [0, 1, 2, 3]),
        (225, 4, [0, 56, 112, 168]),
    ],
)
def test_nearest_resize_reads_floor_of_index_times_inverse_scale(src, dst, expected):
    assert nearest_source_indices(src, dst).tolist() == expected


def test_nearest_resize_keeps_opencvs_double_rounding():
    # 32 * (1 / (64 / 186)) evaluates to 92.99999999999999 in double precision, so OpenCV reads row 92, not 93.
    assert nearest_source_indices(186, 64)[32] == 92


def test_nearest_resize_of_an_image_picks_rows_and_columns():
    image = torch.arange(4 * 6).reshape(4, 6, 1)
    resized = resize_nearest(image, (2, 3))
    assert resized[..., 0].tolist() == [[0, 2, 4], [12, 14, 16]]


def test_normalize_subtracts_mean_and_divides_by_std_per_channel():
    image = np.full((2, 2, 3), 50, dtype=np.uint8)
    assert normalize(image, MEAN, STD)[0, 0].tolist() == [20.0, 7.5, 4.0]


def test_predictor_preprocessing_stretches_without_keeping_aspect():
    image = np.zeros((10, 40, 3), dtype=np.uint8)
    image[:, 20:] = 255  # right half white
    model_input = preprocess_for_predictor(image, 8, MEAN, STD)
    assert model_input.shape == (1, 3, 8, 8) and model_input.dtype == torch.float32
    assert torch.equal(model_input[0, 0, :, 4:], torch.full((8, 4), (255 - 10) / 2.0))
    assert torch.equal(model_input[0, 0, :, :4], torch.full((8, 4), -5.0))


def test_evaluation_preprocessing_pads_small_images_at_the_centre_with_zero_after_normalising():
    image = np.full((3, 5, 3), 50, dtype=np.uint8)
    model_input, box = preprocess_for_evaluation(image, 8, MEAN, STD)
    assert (box.padded, box.top, box.left) == (True, 2, 1)
    assert torch.equal(model_input[0, 0, 2:5, 1:6], torch.full((3, 5), 20.0))
    assert model_input[0, 0].sum() == 20.0 * 15  # everything else is 0


def test_evaluation_preprocessing_stretches_when_one_side_reaches_the_model_size():
    assert not letterbox_for((3, 8), 8).padded
    model_input, box = preprocess_for_evaluation(np.zeros((3, 8, 3), dtype=np.uint8), 8, MEAN, STD)
    assert not box.padded and model_input.shape == (1, 3, 8, 8)


def test_masks_follow_the_image_into_the_evaluation_frame():
    mask = np.zeros((3, 5), dtype=np.uint8)
    mask[0, 0] = 1
    padded = to_evaluation_frame(mask, letterbox_for((3, 5), 8))
    assert padded.shape == (8, 8) and padded.nonzero().tolist() == [[2, 1]]
    stretched = to_evaluation_frame(np.eye(10, dtype=np.uint8), letterbox_for((10, 10), 5))
    assert torch.equal(stretched, torch.eye(5, dtype=torch.uint8))  # rows and columns 0, 2, 4, 6, 8


def test_coordinates_scale_independently_per_axis_on_a_non_square_image():
    # W = 200, H = 100, S = 64: x * 64/200, y * 64/100
    assert scale_coords([[150.0, 25.0]], (100, 200), 64).tolist() == [[48.0, 16.0]]
    assert scale_boxes([20.0, 10.0, 180.0, 90.0], (100, 200), 64).tolist() == pytest.approx([6.4, 6.4, 57.6, 57.6])


def test_predictor_postprocess_goes_through_the_model_size_then_the_original_size():
    low_res = torch.randn(1, 1, 4, 4)
    expected = upsample_bilinear(upsample_bilinear(low_res, (16, 16)), (10, 30))
    assert torch.equal(postprocess_for_predictor(low_res, 16, (10, 30)), expected)


def test_evaluation_postprocess_crops_the_padded_region_or_resizes():
    low_res = torch.randn(1, 1, 4, 4)
    full = upsample_bilinear(low_res, (16, 16))
    padded = letterbox_for((5, 9), 16)
    assert torch.equal(postprocess_for_evaluation(low_res, padded), full[..., 5:10, 3:12])
    stretched = letterbox_for((20, 9), 16)
    assert torch.equal(postprocess_for_evaluation(low_res, stretched), upsample_bilinear(full, (20, 9)))
