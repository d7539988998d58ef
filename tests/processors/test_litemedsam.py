"""LiteMedSAM's processor against its authors' ``CVPR24_LiteMedSAM_infer.py`` steps written out with OpenCV and
numpy: INTER_AREA longest-side resize to 256, min-max to [0, 1], bottom/right padding; boxes ``int(c * 256 / max)``;
logits cropped to the resized image and resized bilinearly; ``sigmoid > 0.5``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from zoo.processors import LiteMedSAMProcessor, LiteMedSAMProcessorConfig
from zoo.prompts.types import Prompts
from zoo.prompts.validate import boxes_from_user, points_from_user

HEIGHT, WIDTH = 100, 173  # resized to 148 x 256: int(100 * 256 / 173 + 0.5) = 148


@pytest.fixture
def processor() -> LiteMedSAMProcessor:
    return LiteMedSAMProcessor(LiteMedSAMProcessorConfig())


def authors_input(image: np.ndarray) -> np.ndarray:
    """``resize_longest_side`` + min-max normalisation + ``pad_image``, as the authors' inference script."""
    cv2 = pytest.importorskip("cv2")
    scale = 256 * 1.0 / max(image.shape[:2])
    new_h, new_w = int(image.shape[0] * scale + 0.5), int(image.shape[1] * scale + 0.5)
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA)
    resized = (resized - resized.min()) / np.clip(resized.max() - resized.min(), a_min=1e-8, a_max=None)
    padded = np.pad(resized, ((0, 256 - new_h), (0, 256 - new_w), (0, 0)))
    return torch.tensor(padded).float().permute(2, 0, 1).numpy()


def test_the_model_input_is_the_authors_area_resize_min_max_and_padding(processor):
    image = np.random.default_rng(0).integers(20, 200, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    frame = processor.prepare(image)
    assert frame.meta["input_size"] == (148, 256)
    np.testing.assert_array_equal(frame.model_input.numpy(), authors_input(image))


def test_a_flat_image_does_not_divide_by_zero(processor):
    frame = processor.prepare(np.full((HEIGHT, WIDTH, 3), 7, dtype=np.uint8))
    assert not frame.model_input.any()


def test_boxes_are_scaled_by_truncation_and_points_like_sams_apply_coords(processor):
    frame = processor.prepare(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8))
    shape = (HEIGHT, WIDTH)
    prompts = Prompts(points_from_user([[50.0, 40.0]], [1], shape), boxes_from_user([10.7, 20.2, 99.9, 60.5], shape))
    kwargs = processor.model_kwargs(processor.to_model_space(prompts, frame))
    # int(c * 256 / 173): 15.83 -> 15, 29.89 -> 29, 147.83 -> 147, 89.53 -> 89.
    assert kwargs["boxes"].tolist() == [[15.0, 29.0, 147.0, 89.0]]
    # x * 256 / 173, y * 148 / 100.
    assert kwargs["points"][0][0, 0].tolist() == pytest.approx([50.0 * 256 / WIDTH, 40.0 * 148 / HEIGHT], rel=1e-6)


def test_mask_prompts_and_logits_are_at_the_input_size(processor):
    assert processor.default_mask_prompt_shape() == (256, 256)


def test_logits_are_cropped_to_the_resized_image_and_resized_bilinearly(processor):
    frame = processor.prepare(np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8))
    low_res = torch.randn(1, 1, 256, 256, generator=torch.Generator().manual_seed(0))
    expected = F.interpolate(low_res[..., :148, :256], (HEIGHT, WIDTH), mode="bilinear", align_corners=False)
    result = processor.to_original(low_res, frame)
    assert torch.equal(result.logits, expected)
    assert torch.equal(result.mask, torch.sigmoid(expected) > 0.5)


def test_training_masks_land_on_the_resized_part_of_the_input(processor):
    frame, masks = processor.prepare_with_masks(
        np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8), [np.ones((HEIGHT, WIDTH), dtype=bool)]
    )
    assert masks.shape == (1, 1, 256, 256)
    assert masks[0, 0, :148].all() and not masks[0, 0, 148:].any()
