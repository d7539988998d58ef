"""SAM-UNet image, prompt and mask geometry (zoo.inference.sam_unet_processing)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms.functional import resize, to_pil_image

from zoo.inference.sam_unet_processing import (
    binarize,
    longest_side_shape,
    postprocess_masks,
    postprocess_training,
    preprocess,
    preprocess_batch,
    resize_longest_side,
    scale_boxes,
)

MEAN, STD = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((120, 160), 64, (48, 64)),
        ((300, 200), 256, (256, 171)),
        ((256, 256), 256, (256, 256)),
        ((50, 101), 256, (127, 256)),
    ],
)
def test_longest_side_becomes_the_target_and_the_other_rounds_half_up(size, target, expected):
    assert longest_side_shape(*size, target) == expected


def test_image_resize_is_upstreams_pil_bilinear():
    """Upstream: np.array(torchvision resize(to_pil_image(image), (h', w')))."""
    image = np.random.default_rng(0).integers(0, 256, size=(90, 60, 3), dtype=np.uint8)
    expected = np.array(resize(to_pil_image(image), [256, 171]))
    np.testing.assert_array_equal(resize_longest_side(image, 256), expected)


def test_boxes_scale_with_the_image():
    boxes = torch.tensor([[10.0, 20.0, 100.0, 110.0]])
    torch.testing.assert_close(scale_boxes(boxes, (120, 160), 64), torch.tensor([[4.0, 8.0, 40.0, 44.0]]))


def test_preprocess_normalises_then_pads_bottom_and_right_with_zeros():
    image = torch.tensor(MEAN).view(3, 1, 1) + torch.tensor(STD).view(3, 1, 1) * torch.ones(3, 2, 3)
    out = preprocess(image, 4, MEAN, STD)
    assert out.shape == (3, 4, 4) and out.dtype == torch.float32
    assert torch.equal(out[:, :2, :3], torch.ones(3, 2, 3))
    assert torch.equal(out[:, 2:, :], torch.zeros(3, 2, 4)) and torch.equal(out[:, :, 3:], torch.zeros(3, 4, 1))


def test_images_of_different_sizes_stack_into_one_batch():
    batch = preprocess_batch([torch.zeros(3, 4, 2), torch.zeros(3, 3, 4)], 4, MEAN, STD)
    assert batch.shape == (2, 3, 4, 4)


@pytest.mark.parametrize(("shape", "message"), [((3, 5, 4), "does not fit"), ((1, 4, 4), "channels first")])
def test_preprocess_refuses_images_it_cannot_take(shape, message):
    with pytest.raises(ValueError, match=message):
        preprocess(torch.zeros(shape), 4, MEAN, STD)


def test_training_logits_are_the_low_res_logits_upsampled_to_the_input_size():
    low_res = torch.full((2, 1, 16, 16), 3.0)
    torch.testing.assert_close(postprocess_training(low_res, 64), torch.full((2, 1, 64, 64), 3.0))


def test_masks_at_the_original_size_drop_the_padding():
    # A 120 x 160 image resized to 48 x 64 fills the top 48 rows (12 low-res rows) of the 64 x 64 input.
    low_res = torch.full((1, 1, 16, 16), 5.0)
    low_res[..., 13:, :] = -100.0  # padding, far enough below the image not to bleed into it when upsampled
    logits = postprocess_masks(low_res, (48, 64), (120, 160), 64)
    assert logits.shape == (1, 1, 120, 160)
    torch.testing.assert_close(logits, torch.full_like(logits, 5.0))


def test_masks_are_logits_strictly_above_zero():
    assert binarize(torch.tensor([-1.0, 0.0, 1e-6])).tolist() == [False, False, True]
