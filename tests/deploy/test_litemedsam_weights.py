"""LiteMedSAM with its released weights, exported to ONNX: the authors' own outputs on the parity case (a real CT
slice; ``ZOO_PARITY_PENDING_DIR``/``ZOO_PARITY_DIR``, a missing case fails under ``CI=true``) within the case's
tolerance, and the PyTorch Predictor's masks on every bundled PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import zoo
from zoo.inference import Predictor
from zoo.io.png import read_image

from .support import PNGS, in_ci


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    """The released LiteMedSAM (from its package) and the folder it was exported to."""
    from zoo.deploy.onnx_export import export_onnx

    model = zoo.from_pretrained("litemedsam")
    folder = tmp_path_factory.mktemp("onnx_litemedsam_released")
    export_onnx(model, folder)
    return model, folder


@pytest.fixture(scope="module")
def predictors(released):
    """An ``OnnxPredictor`` on the exported graphs and the PyTorch ``Predictor`` on the same weights."""
    from zoo.deploy import OnnxPredictor

    model, folder = released
    return OnnxPredictor(folder, threads=2), Predictor(model)


def litemedsam_case():
    from parity.harness import all_cases

    cases = [case for case in all_cases() if case.family == "litemedsam"]
    if not cases:
        message = "no litemedsam parity case (set ZOO_PARITY_PENDING_DIR or ZOO_PARITY_DIR to the fixture folder)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return cases[0]


def test_the_exported_released_model_reproduces_the_authors_outputs_on_the_parity_case(released, predictors) -> None:
    from parity.runners.litemedsam import build_model, mask_feedback_source

    case = litemedsam_case()
    model, _ = released
    authors = build_model(case)  # the case's weights, loaded the harness's way
    for key, value in authors.state_dict().items():
        assert torch.equal(value, model.state_dict()[key]), f"{key}: the case's weights are not the released ones"
    values = case.tensors
    tolerance = case.spec["tolerance"]
    atol, rtol = float(tolerance["float_atol"]), float(tolerance["float_rtol"])
    predictor = predictors[0]
    predictor.set_image(values["raw_image_rgb"].numpy())
    points = dict(point_coords=values["point_coords_orig"][0].numpy(), point_labels=values["point_labels"][0].numpy())
    modes = {
        "box": dict(box=values["box_orig"].numpy()),
        "points": points,
        "box_mask": dict(box=values["box_orig"].numpy(), mask_input=values[mask_feedback_source(case)].numpy()),
    }
    for mode, prompts in modes.items():
        result = predictor.predict(**prompts)
        np.testing.assert_allclose(result.logits[:, None], values[f"pred_{mode}_logits"].numpy(), rtol=rtol, atol=atol)
        pairs = ((result.low_res_logits, f"lowres_{mode}_single"), (result.iou_predictions, f"iou_{mode}_single"))
        for got, name in pairs:
            np.testing.assert_allclose(got[:, None], values[name].numpy(), rtol=rtol, atol=atol)
        binary = values[f"pred_{mode}_binary"].numpy().astype(bool)
        assert binary.any() or mode == "points"  # the authors' single click gives an empty mask here
        assert (result.masks[0] != binary).mean() <= 0.001


@pytest.mark.parametrize("path", PNGS, ids=[p.stem for p in PNGS])
def test_the_exported_released_model_gives_the_pytorch_masks_on_the_bundled_pngs(predictors, path) -> None:
    image = read_image(path)
    height, width = image.shape[:2]
    onnx_predictor, torch_predictor = predictors
    onnx_predictor.set_image(image)
    torch_predictor.set_image(image)
    box = [0.3 * width, 0.35 * height, 0.6 * width, 0.65 * height]
    for prompts in (dict(box=box), dict(box=box, point_coords=[[0.45 * width, 0.5 * height]], point_labels=[0])):
        got, expected = onnx_predictor.predict(**prompts), torch_predictor.predict(**prompts)
        assert expected.masks.any()
        assert (got.masks == expected.masks.numpy()).mean() >= 0.999
        np.testing.assert_allclose(got.logits, expected.logits.numpy(), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(got.low_res_logits, expected.low_res_logits.numpy(), rtol=1e-4, atol=1e-4)
