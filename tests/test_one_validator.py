"""One validator: the same bad prompt gets the same message from every entry point.

The entry points are the interactive ``Predictor``, the ``zoo predict`` DataModule (checked in ``setup``, before
any model runs), the training module's prediction path (a Lightning ``Trainer.predict`` with that DataModule
linked to the module's processor, as ``zoo predict`` runs it) and the processor itself. They all check prompts
with :mod:`zoo.prompts.validate`; the expected messages below are written out by hand from its rules.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from tiny_models import TINY_2D, TINY_3D, tiny_model, write_volume
from zoo.data.predict import PromptedImagesDataModule
from zoo.errors import PromptError
from zoo.inference.predictor import Predictor
from zoo.io.nifti import load_stored
from zoo.processors import processor_for
from zoo.prompts.types import BoxPrompts, PointPrompts, Prompts
from zoo.training.module import PromptableSegmentationModule
from zoo.training.schedules import EvaluationProtocol

HEIGHT, WIDTH = 100, 200
SHAPE_3D = (48, 40, 36)

# case -> (model, prompts as a user writes them, the message's problem text)
CASES = {
    "2d point outside the image": (
        "sam_med2d_b",
        dict(points=[[250.0, 40.0]], labels=[1]),
        "point 0 at (x=250, y=40) lies outside the 200 x 100 (width x height) image (x in [-0.5, 199.5], "
        "y in [-0.5, 99.5])",
    ),
    "3d point outside the image": (
        "sam_med3d_turbo",
        dict(points=[[10.0, 40.0, 3.0]], labels=[1]),
        "point 0 at (i=10, j=40, k=3) lies outside the 48 x 40 x 36 image (i in [-0.5, 47.5], j in [-0.5, 39.5], "
        "k in [-0.5, 35.5])",
    ),
    "box with x0 > x1": (
        "sam_med2d_b",
        dict(box=[150.0, 10.0, 10.0, 90.0]),
        "box [150, 10, 10, 90] (x0, y0, x1, y1) is not a box inside the 200 x 100 (width x height) image "
        "(0 <= x0 <= x1 <= 200, 0 <= y0 <= y1 <= 100)",
    ),
    "box given to sam-med3d": (
        "sam_med3d_turbo",
        dict(points=[[24.0, 20.0, 18.0]], labels=[1], box=[0.0, 0.0, 10.0, 10.0]),
        "SAM-Med3D takes points, masks, not boxes",
    ),
    "label of 2": (
        "sam_med2d_b",
        dict(points=[[10.0, 20.0]], labels=[2]),
        "point labels must be 1 (foreground) or 0 (background), got [2]",
    ),
}
OVERRIDES = {"sam_med2d_b": TINY_2D, "sam_med3d_turbo": TINY_3D}


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("images")
    pixels = np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(folder / "slice.png")
    return {"sam_med2d_b": folder / "slice.png", "sam_med3d_turbo": write_volume(folder / "ct.nii.gz", SHAPE_3D)}


def through_the_predictor(name: str, image: Path, prompts: dict) -> None:
    predictor = Predictor(tiny_model(name))
    predictor.set_image(np.asarray(Image.open(image)) if name == "sam_med2d_b" else image)
    predictor.predict(point_coords=prompts.get("points"), point_labels=prompts.get("labels"), box=prompts.get("box"))


def prediction_data(image: Path, prompts: dict, processor) -> PromptedImagesDataModule:
    return PromptedImagesDataModule(
        images=str(image), points=prompts.get("points"), point_labels=prompts.get("labels"), box=prompts.get("box"),
        processor=processor,
    )


def through_zoo_predict_data(name: str, image: Path, prompts: dict) -> None:
    prediction_data(image, prompts, processor_for(tiny_model(name))).setup("predict")


def through_the_training_module(name: str, image: Path, prompts: dict) -> None:
    module = PromptableSegmentationModule(model=name, model_overrides=OVERRIDES[name])
    trainer = L.Trainer(
        accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, default_root_dir=str(image.parent),
    )
    trainer.predict(module, datamodule=prediction_data(image, prompts, module.processor))


def through_the_processor(name: str, image: Path, prompts: dict) -> None:
    """The containers built directly (no user-input parsing), then the processor's own check."""
    processor = processor_for(tiny_model(name))
    shape = (HEIGHT, WIDTH) if name == "sam_med2d_b" else SHAPE_3D
    points = boxes = None
    if "points" in prompts:
        coords = torch.tensor(prompts["points"], dtype=torch.float32)
        coords = coords.flip(-1) if len(shape) == 2 else coords  # (x, y) -> index order
        points = PointPrompts(coords[None], torch.tensor([prompts["labels"]]), shape)
    if "box" in prompts:
        x0, y0, x1, y1 = prompts["box"]
        lo, hi = ([y0, x0], [y1, x1]) if len(shape) == 2 else ([x0, y0, 0.0], [x1, y1, 1.0])
        boxes = BoxPrompts(torch.tensor([lo]), torch.tensor([hi]), torch.tensor([True]), shape)
    given = Prompts(points, boxes)
    if len(shape) == 2:
        processor.to_model_space(given, processor.prepare(np.asarray(Image.open(image))))
    else:
        processor.prepare(load_stored(image), given)


ENTRY_POINTS = {
    "predictor": through_the_predictor,
    "zoo predict data": through_zoo_predict_data,
    "training module": through_the_training_module,
    "processor": through_the_processor,
}


@pytest.mark.parametrize("entry", sorted(ENTRY_POINTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_the_same_bad_prompt_gets_the_same_message_from_every_entry_point(case, entry, images):
    name, prompts, problem = CASES[case]
    with pytest.raises(ValueError) as error:
        ENTRY_POINTS[entry](name, images[name], prompts)
    message = str(error.value)
    assert message.endswith(problem), f"{entry}: {message!r} does not end with {problem!r}"
    if entry in ("zoo predict data", "training module"):  # prompts from files name the image they belong to
        assert message.startswith(str(images[name]))


def test_the_evaluation_loop_refuses_a_box_protocol_for_sam_med3d_with_the_same_message():
    module = PromptableSegmentationModule(
        model="sam_med3d_turbo", model_overrides=TINY_3D, eval_prompts=EvaluationProtocol(clicks=[], box=True),
        class_names=["liver"],
    )
    # up front, before any batch is read ...
    with pytest.raises(PromptError) as error:
        module.setup("validate")
    assert str(error.value) == CASES["box given to sam-med3d"][2]
    # ... and by the step itself, whatever the batch holds
    target = torch.zeros(1, 1, 32, 32, 32, dtype=torch.bool)
    target[:, :, 8:20, 10:22, 6:18] = True
    batch = {"image": torch.randn(1, 1, 32, 32, 32), "target": target, "class_name": ["liver"]}
    with pytest.raises(PromptError) as error:
        module.validation_step(batch, 0)
    assert str(error.value) == CASES["box given to sam-med3d"][2]
