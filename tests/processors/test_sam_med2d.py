"""SAM-Med2D's processor: the predictor geometry (normalise, OpenCV nearest stretch, prompts scaled per axis, two
bilinear resizes back) and the test-script geometry (centred zero padding of small images, crop back)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.geometry.image2d import nearest_source_indices, resize_nearest
from zoo.processors import SamMed2DProcessor, SamMed2DProcessorConfig
from zoo.processors.images import normalize
from zoo.prompts.types import Prompts
from zoo.prompts.validate import boxes_from_user, points_from_user

MEAN, STD = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)


def med2d(size: int = 8, **config) -> SamMed2DProcessor:
    return SamMed2DProcessor(SamMed2DProcessorConfig(image_size=size, pixel_mean=MEAN, pixel_std=STD, **config))


def bilinear(logits: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(logits, size=size, mode="bilinear", align_corners=False)


# ------------------------------------------------------------------------------------- OpenCV nearest neighbour
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


@pytest.mark.parametrize(("src", "dst"), [(186, 64), (181, 256), (258, 256), (3, 256), (1000, 256), (97, 13)])
def test_nearest_indices_are_the_rows_opencv_reads(src, dst):
    cv2 = pytest.importorskip("cv2")
    rows = np.arange(src, dtype=np.float32)[:, None].repeat(2, axis=1)
    read = cv2.resize(rows, (2, dst), interpolation=cv2.INTER_NEAREST)[:, 0]
    assert nearest_source_indices(src, dst).tolist() == read.astype(int).tolist()


def test_nearest_resize_of_an_image_picks_rows_and_columns():
    image = torch.arange(4 * 6).reshape(4, 6, 1)
    assert resize_nearest(image, (2, 3))[..., 0].tolist() == [[0, 2, 4], [12, 14, 16]]


def test_normalize_subtracts_mean_and_divides_by_std_per_channel():
    image = np.full((2, 2, 3), 50, dtype=np.uint8)
    assert normalize(image, MEAN, STD, torch.float32)[0, 0].tolist() == [20.0, 7.5, 4.0]


# ------------------------------------------------------------------------------------------ predictor geometry
def test_predictor_geometry_stretches_without_keeping_aspect():
    image = np.zeros((10, 40, 3), dtype=np.uint8)
    image[:, 20:] = 255  # right half white
    frame = med2d().prepare(image)
    assert frame.model_input.shape == (3, 8, 8) and frame.model_input.dtype == torch.float32
    assert torch.equal(frame.model_input[0, :, 4:], torch.full((8, 4), (255 - 10) / 2.0))
    assert torch.equal(frame.model_input[0, :, :4], torch.full((8, 4), -5.0))
    assert frame.original_shape == (10, 40)


def test_predictor_geometry_is_opencvs_nearest_resize_of_the_normalised_image():
    cv2 = pytest.importorskip("cv2")
    image = np.random.default_rng(0).integers(0, 256, size=(181, 258, 3), dtype=np.uint8)
    normalised = ((image.astype(np.float32) - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)
    expected = cv2.resize(normalised, (64, 64), interpolation=cv2.INTER_NEAREST)
    frame = med2d(64).prepare(image)
    assert torch.equal(frame.model_input, torch.from_numpy(expected).permute(2, 0, 1))


def test_predictor_geometry_scales_prompts_per_axis():
    # W = 200, H = 100, S = 64: x * 64/200, y * 64/100; a box's corners move like points (SAM's apply_boxes).
    processor = med2d(64)
    frame = processor.prepare(np.zeros((100, 200, 3), dtype=np.uint8))
    shape = (100, 200)
    prompts = Prompts(points_from_user([[150.0, 25.0]], [1], shape), boxes_from_user([20, 10, 180, 90], shape))
    kwargs = processor.model_kwargs(processor.to_model_space(prompts, frame))
    assert kwargs["points"][0].tolist() == [[[48.0, 16.0]]] and kwargs["points"][1].tolist() == [[1]]
    # Through the edges instead, x0 would be (20 - 0.5) * 0.32 + 0.5 = 6.74.
    assert kwargs["boxes"].tolist() == [pytest.approx([6.4, 6.4, 57.6, 57.6])]


def test_predictor_geometry_brings_logits_back_by_two_bilinear_resizes():
    processor = med2d(16)
    frame = processor.prepare(np.zeros((10, 30, 3), dtype=np.uint8))
    low_res = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    result = processor.to_original(low_res, frame)
    assert torch.equal(result.logits, bilinear(bilinear(low_res, (16, 16)), (10, 30)))
    assert torch.equal(result.mask, torch.sigmoid(result.logits) > 0.5)


# ---------------------------------------------------------------------------------------- test-script geometry
def test_test_script_geometry_pads_small_images_at_the_centre_with_zero_after_normalising():
    frame = med2d(geometry="test_script").prepare(np.full((3, 5, 3), 50, dtype=np.uint8))
    letterbox = frame.meta["letterbox"]
    assert (letterbox.padded, letterbox.top, letterbox.left) == (True, 2, 1)
    assert torch.equal(frame.model_input[0, 2:5, 1:6], torch.full((3, 5), 20.0))
    assert frame.model_input[0].sum() == 20.0 * 15  # everything else is 0


def test_test_script_geometry_normalises_in_float64():
    image = np.random.default_rng(1).integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
    frame = SamMed2DProcessor(SamMed2DProcessorConfig(image_size=8, geometry="test_script")).prepare(image)
    mean, std = SamMed2DProcessorConfig().pixel_mean, SamMed2DProcessorConfig().pixel_std
    expected = ((image.astype(np.float64) - np.array(mean)) / np.array(std)).astype(np.float32)
    assert torch.equal(frame.model_input[:, 2:5, 1:6], torch.from_numpy(expected).permute(2, 0, 1))


def test_test_script_geometry_stretches_when_one_side_reaches_the_model_size():
    frame = med2d(geometry="test_script").prepare(np.zeros((3, 8, 3), dtype=np.uint8))
    assert not frame.meta["letterbox"].padded and frame.model_input.shape == (3, 8, 8)


def test_training_masks_follow_the_image_onto_the_model_grid():
    mask = np.zeros((3, 5), dtype=bool)
    mask[0, 0] = True
    processor = med2d()  # the training geometry is the test script's
    _, padded = processor.prepare_with_masks(np.zeros((3, 5, 3), dtype=np.uint8), [mask])
    assert padded.shape == (1, 1, 8, 8) and padded[0, 0].nonzero().tolist() == [[2, 1]]
    _, stretched = med2d(5).prepare_with_masks(np.zeros((10, 10, 3), dtype=np.uint8), [np.eye(10, dtype=bool)])
    assert torch.equal(stretched[0, 0], torch.eye(5, dtype=torch.bool))  # rows and columns 0, 2, 4, 6, 8


def test_test_script_geometry_moves_prompts_by_the_padding_unscaled():
    processor = SamMed2DProcessor(SamMed2DProcessorConfig(geometry="test_script"))
    frame = processor.prepare(np.zeros((155, 225, 3), dtype=np.uint8))  # both sides < 256: centred
    top, left = (256 - 155) // 2, (256 - 225) // 2
    prompts = Prompts(points_from_user([[10, 20]], [1], (155, 225)), boxes_from_user([10, 20, 50, 60], (155, 225)))
    kwargs = processor.model_kwargs(processor.to_model_space(prompts, frame))
    assert kwargs["points"][0].tolist() == [[[10.0 + left, 20.0 + top]]]
    assert kwargs["boxes"].tolist() == [[10.0 + left, 20.0 + top, 50.0 + left, 60.0 + top]]


def test_test_script_geometry_crops_the_padded_region_or_resizes():
    low_res = torch.randn(1, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    full = bilinear(low_res, (16, 16))
    padded = med2d(16, geometry="test_script")
    frame = padded.prepare(np.zeros((5, 9, 3), dtype=np.uint8))
    assert torch.equal(padded.to_original(low_res, frame).logits, full[..., 5:10, 3:12])
    frame = padded.prepare(np.zeros((20, 9, 3), dtype=np.uint8))
    assert torch.equal(padded.to_original(low_res, frame).logits, bilinear(full, (20, 9)))
