"""The one interactive Predictor on tiny random models of every family: the image is embedded once, prompts are
given in original coordinates, outputs come back on the original grid; SAM-Med3D reads a NIfTI, crops around its
points and replays them as clicks."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torchvision.transforms.functional import resize, to_pil_image

from tiny_models import mark_whole_input, tiny_model, write_volume
from zoo.errors import DataError, PromptError
from zoo.inference.predictor import Predictor
from zoo.io.nifti import load_stored
from zoo.processors import ClickState, processor_for
from zoo.prompts.types import PointPrompts, Prompts
from zoo.prompts.validate import points_from_user

from .conftest import CallCounter

HEIGHT, WIDTH = 100, 200
IMAGE = np.random.default_rng(0).integers(0, 256, size=(HEIGHT, WIDTH, 3), dtype=np.uint8)
FAMILIES_2D = ["sam_med2d_b", "sam_vit_b", "sam_unet_r34", "litemedsam"]
SIGMOID = {"sam_med2d_b": True, "sam_vit_b": False, "sam_unet_r34": False, "litemedsam": True}
SAM_PIXEL_MEAN, SAM_PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)


@pytest.fixture
def predictor(tiny_2d_model) -> Predictor:
    predictor = Predictor(tiny_2d_model)
    predictor.set_image(IMAGE)
    return predictor


def capture_prompts(model: torch.nn.Module) -> tuple[list[dict], torch.utils.hooks.RemovableHandle]:
    seen: list[dict] = []
    handle = model.prompt_encoder.register_forward_hook(
        lambda m, args, kwargs, out: seen.append(kwargs), with_kwargs=True
    )
    return seen, handle


# -------------------------------------------------------------------------------------------------------- 2D
def test_the_image_encoder_runs_once_for_several_clicks(tiny_2d_model):
    counter = CallCounter(tiny_2d_model.image_encoder)
    predictor = Predictor(tiny_2d_model)
    predictor.set_image(IMAGE)
    first = predictor.predict(point_coords=[[50, 40]], point_labels=[1])
    predictor.predict(point_coords=[[50, 40], [120, 60]], point_labels=[1, 0])
    predictor.predict(box=[10, 10, 150, 90], mask_input=first.low_res_logits)
    assert counter.calls == 1
    predictor.set_image(IMAGE)
    assert counter.calls == 2
    counter.handle.remove()


def test_prompts_reach_the_decoder_mapped_per_axis_into_the_model_frame(predictor):
    seen, handle = capture_prompts(predictor.model)
    predictor.predict(point_coords=[[150.0, 25.0]], point_labels=[1], box=[20.0, 10.0, 180.0, 90.0])
    handle.remove()
    coords, labels = seen[-1]["points"]
    assert coords.tolist() == [[[48.0, 16.0]]] and labels.tolist() == [[1]]  # x * 64/200, y * 64/100
    assert seen[-1]["boxes"].tolist() == [pytest.approx([6.4, 6.4, 57.6, 57.6])]


def test_point_labels_default_to_foreground(predictor):
    seen, handle = capture_prompts(predictor.model)
    predictor.predict(point_coords=[[150.0, 25.0], [10.0, 10.0]])
    handle.remove()
    assert seen[-1]["points"][1].tolist() == [[1, 1]]


@pytest.mark.parametrize("name", FAMILIES_2D)
def test_outputs_are_at_the_original_size_and_masks_follow_the_familys_threshold(name):
    model = tiny_model(name)
    predictor = Predictor(model)
    predictor.set_image(IMAGE)
    result = predictor.predict(point_coords=[[50, 40]], point_labels=[1])
    assert result.logits.shape == result.masks.shape == (1, HEIGHT, WIDTH) and result.masks.dtype == torch.bool
    expected = torch.sigmoid(result.logits) > 0.5 if SIGMOID[name] else result.logits > 0
    assert torch.equal(result.masks, expected)
    assert result.low_res_logits.shape == (1, *model.mask_input_size)
    if name == "sam_unet_r34":
        assert result.iou_predictions is None
    else:
        assert result.iou_predictions.shape == (1,)


@pytest.mark.parametrize("name", ["sam_med2d_b", "sam_vit_b"])
def test_sam_med2d_and_sam_keep_the_candidate_with_the_highest_predicted_iou(name):
    model = tiny_model(name)
    predictor = Predictor(model)
    predictor.set_image(IMAGE)
    result = predictor.predict(point_coords=[[50, 40]], point_labels=[1])
    with torch.inference_mode():
        # SAM-Med2D stretches 100 x 200 to 64 x 64; SAM resizes the longest side: 32 x 64, padded.
        scale = torch.tensor([64 / WIDTH, 64 / HEIGHT if name == "sam_med2d_b" else 32 / HEIGHT])
        coords = (torch.tensor([[[50.0, 40.0]]]) * scale).float()
        candidates = model.decode(predictor.features, points=(coords, torch.tensor([[1]])), multimask_output=True)
    best = int(candidates.iou_predictions[0].argmax())
    assert result.iou_predictions.item() == pytest.approx(candidates.iou_predictions[0, best].item(), abs=1e-6)
    torch.testing.assert_close(result.low_res_logits[0], candidates.low_res_logits[0, best])


@pytest.mark.parametrize("name", FAMILIES_2D)
def test_several_boxes_give_one_mask_each_like_separate_calls(name):
    predictor = Predictor(tiny_model(name))
    predictor.set_image(IMAGE)
    boxes = [[10, 10, 90, 60], [100, 20, 190, 95]]
    together = predictor.predict(box=boxes)
    assert together.masks.shape == (2, HEIGHT, WIDTH) and together.low_res_logits.shape[0] == 2
    for i, box in enumerate(boxes):
        alone = predictor.predict(box=box)
        torch.testing.assert_close(together.logits[i], alone.logits[0], atol=1e-5, rtol=1e-5)
        # Batched and single products round differently (1e-8 here): only a pixel on the decision boundary flips.
        differ = together.masks[i] != alone.masks[0]
        assert int(differ.sum()) <= 2 and bool((together.logits[i][differ].abs() < 1e-5).all())


@pytest.mark.parametrize("name", FAMILIES_2D)
def test_a_previous_prediction_is_fed_back_as_its_family_feeds_it(name):
    predictor = Predictor(tiny_model(name))
    predictor.set_image(IMAGE)
    first = predictor.predict(box=[10, 10, 150, 90])
    seen, handle = capture_prompts(predictor.model)
    predictor.predict(box=[10, 10, 150, 90], mask_input=first.low_res_logits)
    handle.remove()
    fed = seen[-1]["masks"]
    expected = torch.sigmoid(first.low_res_logits) if name == "sam_med2d_b" else first.low_res_logits
    assert torch.equal(fed, expected[:, None])


def test_sam_unet_box_prediction_equals_upstreams_infer_steps_written_out(tiny_unet_model):
    """SAM_UNET.infer: PIL resize of the longest side, (x - mean) / std, pad bottom/right, encode, decode with the
    box scaled by the resize factors, bilinear to 64 x 64, crop the padding, bilinear to the original size."""
    image = IMAGE[:48, :80]
    predictor = Predictor(tiny_unet_model)
    predictor.set_image(image)
    result = predictor.predict(box=[10, 5, 60, 40])

    resized = np.array(resize(to_pil_image(image), [38, 64]))  # 48 x 80 -> 38 x 64
    normalised = (torch.from_numpy(resized).permute(2, 0, 1).float() - torch.tensor(SAM_PIXEL_MEAN).view(3, 1, 1)) / (
        torch.tensor(SAM_PIXEL_STD).view(3, 1, 1)
    )
    model_input = F.pad(normalised, (0, 0, 0, 64 - 38))[None]
    box = torch.tensor([[10 * 64 / 80, 5 * 38 / 48, 60 * 64 / 80, 40 * 38 / 48]])
    with torch.no_grad():
        low_res = tiny_unet_model(model_input, boxes=box).low_res_logits
    full = F.interpolate(low_res, (64, 64), mode="bilinear", align_corners=False)[..., :38, :64]
    expected = F.interpolate(full, (48, 80), mode="bilinear", align_corners=False)[:, 0]
    assert result.logits.shape == result.masks.shape == (1, 48, 80)
    torch.testing.assert_close(result.logits, expected, rtol=0, atol=1e-5)
    assert torch.equal(result.masks, result.logits > 0)


def test_sam_unet_runs_its_image_side_once_for_several_prompts():
    model = tiny_model("sam_unet_r34")
    counter = CallCounter(model.resnet)
    predictor = Predictor(model)
    predictor.set_image(IMAGE)
    predictor.predict(box=[10, 5, 60, 40])
    predictor.predict(point_coords=[[30, 20]], point_labels=[1])
    predictor.predict(box=[[10, 5, 60, 40], [0, 0, 20, 20]])
    assert counter.calls == 1


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"point_coords": [[10, 10]], "point_labels": [1, 0]}, "1 points but 2 labels"),
        ({"point_labels": [1], "box": [10, 10, 150, 90]}, "point_labels given without point_coords"),
        ({"point_coords": [[10, 10, 10]]}, r"points of a 2D image must be a non-empty list \[\[x, y\], ...\]"),
        ({"box": [10, 10, 150]}, r"a box is \[x0, y0, x1, y1\]"),
        ({"point_coords": [[10, float("nan")]]}, "NaN or infinite"),
        ({"mask_input": torch.zeros(1, 16, 16)}, r"mask prompt for SAM-Med2D is .*32.*32.*16.*16"),
        ({}, "at least one prompt"),
    ],
)
def test_bad_prompts_get_a_clear_error(predictor, prompts, message):
    with pytest.raises(PromptError, match=message):
        predictor.predict(**prompts)


def test_predicting_before_setting_an_image_is_an_error(tiny_2d_model):
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(tiny_2d_model).predict(point_coords=[[1, 1]], point_labels=[1])


def test_a_refused_image_leaves_no_image_set(tiny_2d_model):
    predictor = Predictor(tiny_2d_model)
    predictor.set_image(IMAGE)
    with pytest.raises(DataError, match="uint8"):
        predictor.set_image(IMAGE.astype(np.float32))
    assert not predictor.is_image_set and predictor.features is None, "the previous image's embedding must go"
    with pytest.raises(DataError, match="H x W x 3"):
        predictor.set_image(np.zeros((3, 10, 10), dtype=np.uint8))


# -------------------------------------------------------------------------------------------------------- 3D
SHAPE = (48, 40, 36)  # at 1.5 mm, SAM-Med3D's spacing: the 32^3 crop is a window of the file's voxels
CROP = 32


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    return write_volume(tmp_path_factory.mktemp("volume") / "ct.nii.gz", SHAPE)


def test_a_nifti_is_read_and_outputs_are_on_its_grid(tiny_3d_model, volume_path):
    predictor = Predictor(tiny_3d_model)
    predictor.set_image(volume_path)
    assert predictor.original_shape == SHAPE
    result = predictor.predict(point_coords=[[24, 20, 18]], point_labels=[1])
    assert result.masks.shape == (1, *SHAPE) and result.masks.dtype == torch.bool and result.logits is None
    assert result.low_res_logits.shape == (1, 8, 8, 8) and result.iou_predictions.shape == (1,)


def test_the_mask_lands_on_the_crop_window_of_the_file(volume_path):
    predictor = Predictor(mark_whole_input(tiny_model("sam_med3d_turbo")))
    predictor.set_image(volume_path)
    mask = predictor.predict(point_coords=[[24, 20, 18]]).masks[0]
    expected = torch.zeros(SHAPE, dtype=torch.bool)
    expected[8:40, 4:36, 2:34] = True  # the click minus CROP // 2 on every axis
    assert torch.equal(mask, expected)


def test_the_crop_embedding_is_reused_while_points_stay_inside_and_recomputed_when_one_leaves(volume_path):
    model = tiny_model("sam_med3d_turbo")
    counter = CallCounter(model.image_encoder)
    predictor = Predictor(model)
    predictor.set_image(volume_path)
    assert counter.calls == 0  # the crop depends on the points: nothing to embed yet
    predictor.predict(point_coords=[[24, 20, 18]], point_labels=[1])
    first_frame = predictor.frame
    predictor.predict(point_coords=[[24, 20, 18], [30, 30, 30]], point_labels=[1, 0])  # inside [8:40, 4:36, 2:34]
    assert counter.calls == 1 and predictor.frame is first_frame
    predictor.predict(point_coords=[[24, 20, 18], [40, 20, 18]], point_labels=[1, 0])  # 40 is past the crop
    assert counter.calls == 2 and predictor.frame is not first_frame
    both = Prompts(points_from_user([[24, 20, 18], [40, 20, 18]], None, SHAPE, "index"))
    moved = predictor.processor.to_model_space(both, predictor.frame)
    # Re-centred on both points: their midpoint (32, 20, 18) lands at CROP // 2.
    assert moved.points.coords[0].tolist() == [[8.0, 16.0, 16.0], [24.0, 16.0, 16.0]]


def test_several_points_are_replayed_as_clicks(tiny_3d_model, volume_path):
    given = [[24, 20, 18], [28, 22, 18], [20, 16, 20]]
    labels = [1, 0, 1]
    predictor = Predictor(tiny_3d_model)
    predictor.set_image(volume_path)
    result = predictor.predict(point_coords=given, point_labels=labels)

    processor = processor_for(tiny_3d_model)
    prompts = Prompts(points_from_user(given, labels, SHAPE, "index"))
    frame = processor.prepare(load_stored(volume_path), prompts)
    on_model = processor.to_model_space(prompts, frame).points
    with torch.inference_mode():
        features = tiny_3d_model.encode_image(frame.model_input[None])
        # The authors' loop: each click decodes all clicks so far, the previous low-res logits (zeros first) as mask.
        previous = torch.zeros(1, 1, 8, 8, 8)
        for k in range(1, 4):
            clicks_so_far = (on_model.coords[:, :k], on_model.labels[:, :k])
            out = tiny_3d_model.decode(features, points=clicks_so_far, masks=previous, multimask_output=False)
            previous = out.low_res_logits
        state = ClickState()
        for k in range(3):
            click = PointPrompts(on_model.coords[:, k : k + 1], on_model.labels[:, k : k + 1], on_model.spatial_shape)
            state, step = processor.click(tiny_3d_model, features, state, click)
    torch.testing.assert_close(result.low_res_logits, previous[:, 0], rtol=0, atol=1e-6)
    torch.testing.assert_close(result.low_res_logits, step.low_res_logits[:, 0], rtol=0, atol=0)


def test_a_previous_3d_prediction_is_fed_back_as_logits_instead_of_zeros(tiny_3d_model, volume_path):
    predictor = Predictor(tiny_3d_model)
    predictor.set_image(volume_path)
    first = predictor.predict(point_coords=[[24, 20, 18]])
    seen, handle = capture_prompts(tiny_3d_model)
    predictor.predict(point_coords=[[24, 20, 18]])
    predictor.predict(point_coords=[[24, 20, 18]], mask_input=first.low_res_logits)
    handle.remove()
    assert not seen[0]["masks"].any()
    assert torch.equal(seen[1]["masks"], first.low_res_logits[:, None])


@pytest.mark.parametrize(
    ("prompts", "message"),
    [
        ({"point_coords": [[10, 40, 3]]}, r"point 0 at \(i=10, j=40, k=3\) lies outside the 48 x 40 x 36 image"),
        ({"point_coords": [[10, 4]]}, r"points of a 3D image must be a non-empty list \[\[i, j, k\], ...\]"),
        ({"mask_input": torch.zeros(1, 8, 8, 8)}, "needs a point for its first prediction"),
    ],
)
def test_bad_3d_prompts_get_a_clear_error(tiny_3d_model, volume_path, prompts, message):
    predictor = Predictor(tiny_3d_model)
    predictor.set_image(volume_path)
    with pytest.raises(PromptError, match=message):
        predictor.predict(**prompts)


def test_predicting_before_setting_a_volume_is_an_error(tiny_3d_model):
    with pytest.raises(RuntimeError, match="set_image"):
        Predictor(tiny_3d_model).predict([[1, 1, 1]], [1])
