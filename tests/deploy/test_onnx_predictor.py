"""``OnnxPredictor`` against the PyTorch ``Predictor`` (the reference) on the bundled images: the same masks on >= 99.9%
of pixels/voxels, logits, IoU and low-res logits within 1e-4, for every family and prompt kind; its errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from zoo.errors import PromptError
from zoo.inference import Predictor
from zoo.io.png import read_image
from zoo.processors import processor_from_dict

from .support import CT, FAMILIES, PNGS

ATOL = 1e-4
FAMILIES_2D = [name for name in FAMILIES if name != "sam_med3d_turbo"]


def compare(onnx_result, torch_result) -> float:
    """Assert the two predictions agree; returns the share of pixels/voxels whose masks agree."""
    masks = torch_result.masks.numpy()
    assert onnx_result.masks.shape == masks.shape and onnx_result.masks.dtype == bool
    agree = float((onnx_result.masks == masks).mean())
    assert agree >= 0.999
    np.testing.assert_allclose(onnx_result.low_res_logits, torch_result.low_res_logits.numpy(), rtol=0, atol=ATOL)
    if torch_result.logits is None:
        assert onnx_result.logits is None
    else:
        np.testing.assert_allclose(onnx_result.logits, torch_result.logits.numpy(), rtol=0, atol=ATOL)
    if torch_result.iou_predictions is None:
        assert onnx_result.iou_predictions is None
    else:
        np.testing.assert_allclose(onnx_result.iou_predictions, torch_result.iou_predictions.numpy(), rtol=0, atol=ATOL)
    return agree


def both(exported, name: str, folder: Path | None = None):
    from zoo.deploy import OnnxPredictor

    model, exported_folder = exported(name)
    folder = folder or exported_folder
    processor = processor_from_dict(json.loads((folder / "processor_config.json").read_text(encoding="utf-8")))
    return OnnxPredictor(folder, threads=2), Predictor(model, processor=processor)


def prompts_2d(height: int, width: int) -> list[dict]:
    """A box, two points, two boxes, a box with a point, in pixels of an ``height x width`` image."""
    box = [0.3 * width, 0.45 * height, 0.45 * width, 0.6 * height]
    return [
        dict(box=box),
        dict(point_coords=[[0.37 * width, 0.52 * height], [0.2 * width, 0.2 * height]], point_labels=[1, 0]),
        dict(box=[box, [0.02 * width, 0.04 * height, 0.6 * width, 0.8 * height]]),
        dict(box=box, point_coords=[[0.37 * width, 0.52 * height]], point_labels=[0]),
    ]


@pytest.mark.parametrize("name", FAMILIES_2D)
def test_2d_masks_and_logits_match_the_pytorch_predictor_on_a_bundled_png(name, exported) -> None:
    onnx_predictor, torch_predictor = both(exported, name)
    image = read_image(PNGS[FAMILIES_2D.index(name) % len(PNGS)])  # a different bundled slice per family
    onnx_predictor.set_image(image)
    torch_predictor.set_image(image)
    for prompts in prompts_2d(*image.shape[:2]):
        expected = torch_predictor.predict(**prompts)
        compare(onnx_predictor.predict(**prompts), expected)
    refined = dict(point_coords=prompts["point_coords"], mask_input=expected.low_res_logits[:1].numpy())
    compare(onnx_predictor.predict(**refined), torch_predictor.predict(**refined))


@pytest.mark.parametrize("name", ["litemedsam", "sam_unet_r34"])
def test_a_non_square_image_is_padded_and_cropped_back_like_the_processor(name, exported, png) -> None:
    onnx_predictor, torch_predictor = both(exported, name)
    image = png[40:337, :]  # 297 x 512: the longest side's resize leaves padding at the bottom
    onnx_predictor.set_image(image)
    torch_predictor.set_image(image)
    assert onnx_predictor.frame.window[2] < onnx_predictor.image_size  # there is padding to crop
    for prompts in prompts_2d(*image.shape[:2])[:2]:
        compare(onnx_predictor.predict(**prompts), torch_predictor.predict(**prompts))


def test_sam_med2d_test_script_geometry_pads_a_small_image_at_the_centre(exported, png, tmp_path) -> None:
    _, folder = exported("sam_med2d_b")
    for file in folder.iterdir():
        shutil.copy(file, tmp_path / file.name)
    config = json.loads((tmp_path / "processor_config.json").read_text(encoding="utf-8"))
    (tmp_path / "processor_config.json").write_text(json.dumps({**config, "geometry": "test_script"}), encoding="utf-8")
    onnx_predictor, torch_predictor = both(exported, "sam_med2d_b", tmp_path)
    image = png[200:240, 150:200]  # 40 x 50, both sides below the 64 input: centred padding
    onnx_predictor.set_image(image)
    torch_predictor.set_image(image)
    assert onnx_predictor.frame.window == (12, 7, 40, 50)
    prompts = dict(box=[5, 5, 40, 30], point_coords=[[20, 20]], point_labels=[1])
    compare(onnx_predictor.predict(**prompts), torch_predictor.predict(**prompts))


def test_sam_med3d_masks_match_the_pytorch_predictor_on_the_bundled_ct(exported) -> None:
    onnx_predictor, torch_predictor = both(exported, "sam_med3d_turbo")
    onnx_predictor.set_image(CT)
    torch_predictor.set_image(CT)
    first = dict(point_coords=[[60, 48, 15]], point_labels=[1])
    expected = torch_predictor.predict(**first)
    assert expected.masks.any()  # a mask to agree on
    compare(onnx_predictor.predict(**first), expected)
    crop = onnx_predictor.crop
    feedback = expected.low_res_logits.numpy()
    clicks = dict(point_coords=[[60, 48, 15], [66, 50, 15]], point_labels=[1, 0], mask_input=feedback)
    compare(onnx_predictor.predict(**clicks), torch_predictor.predict(**clicks))
    assert onnx_predictor.crop is crop  # both points lie in the first crop: its embedding is reused
    far = dict(point_coords=[[95, 48, 15]], point_labels=[1])
    compare(onnx_predictor.predict(**far), torch_predictor.predict(**far))
    assert onnx_predictor.crop is not crop


@pytest.mark.parametrize(
    ("name", "prompts", "message"),
    [
        ("sam_med3d_turbo", dict(point_coords=[[60, 48, 15]], box=[0, 0, 5, 5]), "SAM-Med3D takes points, masks"),
        ("sam_med3d_turbo", dict(point_coords=[[200, 48, 15]]), "point 0 at .* lies outside the"),
        ("litemedsam", dict(box=[100, 10, 50, 40]), r"box \[100, 10, 50, 40\] .* is not a box inside the"),
        ("litemedsam", dict(box=[[1, 2, 3]]), r"a box is \[x0, y0, x1, y1\]"),
        ("litemedsam", dict(point_coords=[[10, 10]], point_labels=[2]), "point labels must be 1 .* or 0"),
        ("litemedsam", dict(point_coords=[[10, float("nan")]]), "points contain NaN"),
    ],
)
def test_bad_prompts_get_the_pytorch_predictors_message(name, prompts, message, exported, png) -> None:
    """One validator: the torch-free runtime checks prompts with zoo.prompts.rules, the rules and words of the
    PyTorch Predictor's check."""
    onnx_predictor, torch_predictor = both(exported, name)
    image = CT if name == "sam_med3d_turbo" else png
    onnx_predictor.set_image(image)
    torch_predictor.set_image(image)
    with pytest.raises(PromptError, match=message) as onnx_error:
        onnx_predictor.predict(**prompts)
    with pytest.raises(PromptError) as torch_error:
        torch_predictor.predict(**prompts)
    assert str(onnx_error.value) == str(torch_error.value)


def test_no_prompt_is_refused(exported, png) -> None:
    from zoo.deploy import OnnxPredictor

    predictor = OnnxPredictor(exported("litemedsam")[1])
    predictor.set_image(png)
    with pytest.raises(PromptError, match="give at least one prompt"):
        predictor.predict()


def test_a_folder_without_graphs_is_named(tmp_path) -> None:
    from zoo.deploy import OnnxPredictor

    with pytest.raises(FileNotFoundError, match=f"{tmp_path}: no processor_config.json"):
        OnnxPredictor(tmp_path)
