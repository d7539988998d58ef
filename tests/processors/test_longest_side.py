"""SAM's and SAM-UNet's processors: ``ResizeLongestSide`` (PIL bilinear), ImageNet normalisation, bottom/right zero
padding; prompts scaled by each axis's resize factor; logits back through the padding crop (``postprocess_masks``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import resize, to_pil_image

from zoo.geometry.image2d import longest_side_shape, resize_longest_side_bilinear
from zoo.processors import SamProcessor, SamProcessorConfig, SamUNetProcessor, SamUNetProcessorConfig
from zoo.prompts.types import Prompts
from zoo.prompts.validate import boxes_from_user, points_from_user

MEAN, STD = (10.0, 20.0, 30.0), (2.0, 4.0, 5.0)
KINDS = {"sam": (SamProcessor, SamProcessorConfig), "sam_unet": (SamUNetProcessor, SamUNetProcessorConfig)}


def longest_side(kind: str, size: int, **config):
    cls, config_cls = KINDS[kind]
    return cls(config_cls(image_size=size, **config))


def test_released_sizes_are_1024_for_sam_and_256_for_sam_unet():
    assert SamProcessor(SamProcessorConfig()).input_shape == (1024, 1024)
    assert SamUNetProcessor(SamUNetProcessorConfig()).input_shape == (256, 256)


@pytest.mark.parametrize(
    ("size", "target", "expected"),
    [
        ((120, 160), 64, (48, 64)),
        ((300, 200), 256, (256, 171)),
        ((256, 256), 256, (256, 256)),
        ((50, 101), 256, (127, 256)),
        ((48, 80), 64, (38, 64)),  # 48 * 0.8 = 38.4
    ],
)
def test_longest_side_becomes_the_target_and_the_other_rounds_half_up(size, target, expected):
    assert longest_side_shape(*size, target) == expected


def test_image_resize_is_upstreams_pil_bilinear():
    """Upstream: np.array(torchvision resize(to_pil_image(image), (h', w')))."""
    image = np.random.default_rng(0).integers(0, 256, size=(90, 60, 3), dtype=np.uint8)
    expected = np.array(resize(to_pil_image(image), [256, 171]))
    np.testing.assert_array_equal(resize_longest_side_bilinear(image, 256), expected)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_the_model_input_is_the_normalised_resize_padded_bottom_right_with_zeros(kind):
    image = np.random.default_rng(1).integers(0, 256, size=(90, 60, 3), dtype=np.uint8)
    frame = longest_side(kind, 64, pixel_mean=MEAN, pixel_std=STD).prepare(image)
    resized = np.array(resize(to_pil_image(image), [64, 43])).astype(np.float32)
    expected = (resized - np.float32(MEAN)) / np.float32(STD)
    assert frame.model_input.shape == (3, 64, 64) and frame.model_input.dtype == torch.float32
    assert torch.equal(frame.model_input[:, :, :43], torch.from_numpy(expected).permute(2, 0, 1))
    assert not frame.model_input[:, :, 43:].any()


def test_an_image_already_at_the_size_is_only_normalised_and_padded():
    image = (torch.tensor(MEAN) + torch.tensor(STD) * 2).to(torch.uint8).expand(2, 4, 3).numpy()  # value 2 after
    frame = longest_side("sam_unet", 4, pixel_mean=MEAN, pixel_std=STD).prepare(image)
    assert torch.equal(frame.model_input[:, :2], torch.full((3, 2, 4), 2.0))
    assert torch.equal(frame.model_input[:, 2:], torch.zeros(3, 2, 4))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_points_are_scaled_by_each_axis_resize_factor(kind):
    # 48 x 80 -> 38 x 64: x by 64/80, y by the rounded resized height over the original one (38/48).
    processor = longest_side(kind, 64)
    frame = processor.prepare(np.zeros((48, 80, 3), dtype=np.uint8))
    on_model = processor.to_model_space(Prompts(points_from_user([[40.0, 20.0]], [1], (48, 80))), frame)
    coords = processor.model_kwargs(on_model)["points"][0]
    assert coords[0, 0].tolist() == pytest.approx([40.0 * 64 / 80, 20.0 * 38 / 48], rel=1e-6)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_boxes_scale_with_the_image_through_their_corners(kind):
    processor = longest_side(kind, 64)
    frame = processor.prepare(np.zeros((120, 160, 3), dtype=np.uint8))  # resized to 48 x 64: factor 0.4
    on_model = processor.to_model_space(Prompts(boxes=boxes_from_user([10.0, 20.0, 100.0, 110.0], (120, 160))), frame)
    assert processor.model_kwargs(on_model)["boxes"].tolist() == [pytest.approx([4.0, 8.0, 40.0, 44.0])]


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_logits_at_the_original_size_drop_the_padding(kind):
    # A 120 x 160 image resized to 48 x 64 fills the top 48 rows (12 low-res rows) of the 64 x 64 input.
    processor = longest_side(kind, 64)
    frame = processor.prepare(np.zeros((120, 160, 3), dtype=np.uint8))
    low_res = torch.full((1, 1, 16, 16), 5.0)
    low_res[..., 13:, :] = -100.0  # padding, far enough below the image not to bleed into it when upsampled
    result = processor.to_original(low_res, frame)
    assert result.logits.shape == (1, 1, 120, 160)
    torch.testing.assert_close(result.logits, torch.full_like(result.logits, 5.0))
    assert result.mask.all()


def test_logits_go_back_as_sams_postprocess_masks():
    processor = longest_side("sam", 64)
    frame = processor.prepare(np.zeros((90, 60, 3), dtype=np.uint8))  # resized to 64 x 43
    low_res = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    full = F.interpolate(low_res, (64, 64), mode="bilinear", align_corners=False)
    expected = F.interpolate(full[..., :64, :43], (90, 60), mode="bilinear", align_corners=False)
    result = processor.to_original(low_res, frame)
    assert torch.equal(result.logits, expected) and torch.equal(result.mask, expected > 0)


def test_training_logits_are_the_low_res_logits_upsampled_to_the_input_size():
    low_res = torch.full((2, 1, 16, 16), 3.0)
    torch.testing.assert_close(longest_side("sam_unet", 64).upsample(low_res), torch.full((2, 1, 64, 64), 3.0))


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_training_masks_are_resized_like_the_image_and_padded(kind):
    processor = longest_side(kind, 64)
    frame, masks = processor.prepare_with_masks(
        np.zeros((120, 160, 3), dtype=np.uint8), [np.ones((120, 160), dtype=bool), np.zeros((120, 160), dtype=bool)]
    )
    assert masks.shape == (2, 1, 64, 64) and masks.dtype == torch.bool
    assert masks[0, 0, :48].all() and not masks[0, 0, 48:].any() and not masks[1].any()
    assert frame.meta["input_size"] == (48, 64)
