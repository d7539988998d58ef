"""``zoo predict`` and its Python API on the bundled real data: masks land on the input's exact grid.

Models are tiny and random, or tiny with a decoder set to mark its whole input ("whole-input" models): the
latter make the written mask the footprint of the model's input on the original grid, which pins the geometry
down without depending on what a random network happens to predict.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import lightning as L
import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.cli.main import main as zoo_main
from zoo.errors import DataError, PromptError
from zoo.data.predict import PromptedImagesDataModule, collate_prompted
from zoo.inference.predictor import Predictor
from zoo.processors import SamMed2DProcessor, SamMed2DProcessorConfig, SamMed3DProcessor, SamMed3DProcessorConfig
from zoo.processors import processor_for
from zoo.training.module import PromptableSegmentationModule
from zoo.training.prediction import predict_batch, predict_masks
from run_helpers import TINY_3D

DATA = Path(__file__).resolve().parents[2] / "data"
CT = DATA / "totalseg_example" / "ct.nii.gz"  # 122 x 101 x 30 voxels of 3 mm, RAS+
SLICES = DATA / "sam_med2d_demo" / "images"
PADDED_SLICE = SLICES / "s0619_32.png"  # 155 x 225: both sides < 256, so SAM-Med2D pads it
STRETCHED_SLICE = SLICES / "s0114_111.png"  # 181 x 258: stretched

TINY_2D = dict(
    image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=[1],
    prompt_embed_dim=32, decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32,
)
TINY_SAM_UNET = dict(image_size=64, embed_dim=48, num_heads=2, window_size=3, resnet_layers=(1, 1, 1, 1),
                     decoder_mlp_dim=64)
CROP = TINY_3D["image_size"]
# A 32^3 crop at 1.5 mm covers 48 mm: 16 voxels of the 3 mm CT per axis.
CROP_FOOTPRINT = CROP * 1.5 / 3.0
PROMPT = [60, 50, 15]


def mark_whole_input(net: torch.nn.Module, sign: float = 1.0) -> torch.nn.Module:
    """Make every decoded mask logit ``sign * const``: the last upscaling layer outputs GELU(1) everywhere and each
    hypernetwork outputs ones, so the mask is the whole model input (sign +1) or empty (sign -1)."""
    decoder = net.mask_decoder
    with torch.no_grad():
        last_upscaling = decoder.output_upscaling[3]
        last_upscaling.weight.zero_()
        last_upscaling.bias.fill_(1.0)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.fill_(sign)
    return net.eval()


@pytest.fixture(scope="module")
def random_3d() -> torch.nn.Module:
    torch.manual_seed(3)  # a seed whose tiny model marks part of the crop around PROMPT (not none, not all)
    return zoo.create_model("sam_med3d_turbo", **TINY_3D).eval()


@pytest.fixture(scope="module")
def whole_input_3d() -> torch.nn.Module:
    torch.manual_seed(0)
    return mark_whole_input(zoo.create_model("sam_med3d_turbo", **TINY_3D))


PROCESSOR_3D = SamMed3DProcessor(SamMed3DProcessorConfig(image_size=CROP))  # what the tiny models' weights choose


def data_3d(**kwargs) -> PromptedImagesDataModule:
    return PromptedImagesDataModule(processor=PROCESSOR_3D, **kwargs)


def voxels(path: Path) -> np.ndarray:
    return np.asarray(nib.load(str(path)).dataobj)


def reoriented(source: Path, destination: Path, axcodes: tuple[str, str, str]) -> tuple[Path, np.ndarray]:
    """The same volume stored in another voxel order; returns the copy and the orientation transform used."""
    image = nib.load(str(source))
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(axcodes)
    )
    moved = image.as_reoriented(transform)
    nib.save(nib.Nifti1Image(np.asarray(moved.dataobj), moved.affine), str(destination))
    return destination, transform


def world_of(path: Path, voxel: list[float]) -> list[float]:
    return nib.affines.apply_affine(nib.load(str(path)).affine, voxel).tolist()


def first_item(data: PromptedImagesDataModule) -> dict:
    data.setup("predict")
    return data.predict_dataset()[0]


# ------------------------------------------------------------------------------------------------- 3D geometry
def test_3d_mask_has_the_input_shape_affine_and_header(tmp_path: Path, random_3d) -> None:
    (written,) = predict_masks(random_3d, data_3d(images=str(CT), points=[PROMPT]), tmp_path)
    mask, source = nib.load(str(written)), nib.load(str(CT))
    assert written == tmp_path / "ct_mask.nii.gz"
    assert mask.shape == source.shape
    assert np.array_equal(mask.affine, source.affine)
    assert mask.header.get_data_dtype() == np.uint8
    assert set(np.unique(voxels(written)).tolist()) <= {0, 1}
    assert mask.header.get_zooms() == source.header.get_zooms()
    assert int(mask.header["sform_code"]) == int(source.header["sform_code"])
    assert int(mask.header["qform_code"]) == int(source.header["qform_code"])


def test_3d_mask_is_the_crop_footprint_around_the_prompt(tmp_path: Path, whole_input_3d) -> None:
    (written,) = predict_masks(whole_input_3d, data_3d(images=str(CT), points=[PROMPT]), tmp_path)
    mask = voxels(written).astype(bool)
    assert mask[tuple(PROMPT)]
    occupied = np.argwhere(mask)
    extent = occupied.max(axis=0) - occupied.min(axis=0) + 1
    assert extent.tolist() == [CROP_FOOTPRINT] * 3
    assert mask.sum() == CROP_FOOTPRINT**3  # a solid box
    centre = (occupied.max(axis=0) + occupied.min(axis=0)) / 2
    assert np.abs(centre - PROMPT).max() <= 0.5


def test_3d_mask_follows_the_voxel_order_on_disk(tmp_path: Path, whole_input_3d) -> None:
    slp, transform = reoriented(CT, tmp_path / "ct_slp.nii.gz", ("S", "L", "P"))
    world = world_of(CT, PROMPT)
    (ras_mask,) = predict_masks(whole_input_3d, data_3d(images=str(CT), points=[PROMPT]), tmp_path / "ras")
    data = data_3d(images=str(slp), points=[world], coordinate_space="world")
    (slp_mask,) = predict_masks(whole_input_3d, data, tmp_path / "slp")
    assert nib.load(str(slp_mask)).shape == nib.load(str(slp)).shape
    assert np.array_equal(nib.load(str(slp_mask)).affine, nib.load(str(slp)).affine)
    assert np.array_equal(voxels(slp_mask), nib.orientations.apply_orientation(voxels(ras_mask), transform))


def test_world_and_voxel_prompts_give_identical_masks(random_3d) -> None:
    world = world_of(CT, PROMPT)
    lps = [-world[0], -world[1], world[2]]
    predictions = {}
    for space, point in (("voxel", PROMPT), ("world", world), ("world_lps", lps)):
        batch = collate_prompted([first_item(data_3d(images=str(CT), points=[point], coordinate_space=space))])
        (predictions[space],) = predict_batch(random_3d, processor_for(random_3d), batch)
        predictions[space]["points"] = batch["objects"][0][0]["prompts"].points.coords
    for space in ("world", "world_lps"):
        torch.testing.assert_close(predictions[space]["points"], predictions["voxel"]["points"], rtol=0, atol=1e-4)
        assert np.array_equal(predictions[space]["mask"], predictions["voxel"]["mask"])
    assert 0 < int(predictions["voxel"]["mask"].sum()) < CROP**3  # the comparison is not between empty masks


@pytest.mark.parametrize("axcodes", [("R", "A", "S"), ("S", "L", "P")])
def test_prompt_voxel_maps_onto_its_crop_voxel(tmp_path: Path, axcodes) -> None:
    """A bright cube painted around the prompted voxel is where the prompt lands in the model input."""
    image, _ = reoriented(CT, tmp_path / "ct.nii.gz", axcodes)
    source = nib.load(str(image))
    painted = np.asarray(source.dataobj).astype(np.int16)
    world = world_of(CT, PROMPT)
    voxel = np.round(nib.affines.apply_affine(np.linalg.inv(source.affine), world)).astype(int)
    painted[tuple(slice(v - 1, v + 2) for v in voxel)] = 3000  # the CT's own maximum is 1207 HU
    nib.save(nib.Nifti1Image(painted, source.affine), str(image))
    item = first_item(data_3d(images=str(image), points=[voxel.tolist()]))
    crop = item["image"][0]
    in_crop = item["objects"][0]["prompts"].points.coords[0, 0]
    at_prompt = crop[tuple(torch.round(in_crop).long().tolist())]
    assert torch.isclose(at_prompt, crop.max(), rtol=1e-5)  # the cube's inside, up to interpolation rounding


def test_crop_is_centred_on_the_prompts(tmp_path: Path) -> None:
    points = [[55, 45, 12], [63, 52, 16]]
    item = first_item(data_3d(images=str(CT), points=points))
    in_crop = item["objects"][0]["prompts"].points.coords[0]
    midpoint = (in_crop.max(dim=0).values + in_crop.min(dim=0).values) / 2
    assert torch.all((midpoint - (CROP - 1) / 2).abs() <= 1.0)


def test_point_outside_the_image_is_an_error_naming_file_and_point() -> None:
    data = data_3d(images=str(CT), points=[[60, 50, 15], [122, 50, 15]])
    with pytest.raises(PromptError, match=rf"^{CT}: point 1 at \(i=122, j=50, k=15\) lies outside the 122 x 101 x 30"):
        first_item(data)


def test_world_point_outside_the_image_names_its_voxel() -> None:
    data = data_3d(images=str(CT), points=[[0.0, 0.0, -500.0]], coordinate_space="world")
    i, j, k = np.linalg.solve(nib.load(str(CT)).affine, [0.0, 0.0, -500.0, 1.0])[:3]
    assert k < -0.5  # far below the first slice
    written = rf"\(i={float(np.float32(i)):g}, j={float(np.float32(j)):g}, k={float(np.float32(k)):g}\)"
    with pytest.raises(PromptError, match=rf"^{CT}: point 0 at {written} lies outside the 122 x 101 x 30 image"):
        first_item(data)


def test_points_that_do_not_fit_one_crop_are_an_error(tmp_path: Path, random_3d) -> None:
    data = data_3d(images=str(CT), points=[[10, 10, 5], [110, 90, 25]])
    with pytest.raises(PromptError, match=rf"^{CT}: the points span .* more than one \(32, 32, 32\) crop"):
        predict_masks(random_3d, data, tmp_path)
    assert not any(tmp_path.iterdir())


def test_3d_images_take_no_box() -> None:
    data = data_3d(images=str(CT), box=[0, 0, 10, 10])
    with pytest.raises(PromptError, match=rf"^{CT}: SAM-Med3D takes points, masks, not boxes$"):
        first_item(data)


def test_existing_mask_is_not_overwritten(tmp_path: Path, random_3d) -> None:
    existing = tmp_path / "ct_mask.nii.gz"
    existing.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError, match=str(existing)):
        predict_masks(random_3d, data_3d(images=str(CT), points=[PROMPT]), tmp_path)
    assert existing.read_bytes() == b"the user's own file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_mask.nii.gz"]  # no temporary files left


def test_overwrite_replaces_an_existing_mask(tmp_path: Path, random_3d) -> None:
    existing = tmp_path / "ct_mask.nii.gz"
    existing.write_bytes(b"old")
    predict_masks(random_3d, data_3d(images=str(CT), points=[PROMPT]), tmp_path, overwrite=True)
    assert nib.load(str(existing)).shape == nib.load(str(CT)).shape
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct_mask.nii.gz"]


# ------------------------------------------------------------------------------------------ prompts JSON file
def test_prompts_file_names_images_and_objects(tmp_path: Path, whole_input_3d) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({
        str(CT): [
            {"name": "liver", "points": [PROMPT], "labels": [1]},
            {"name": "spleen", "points": [world_of(CT, [90, 40, 15])], "space": "world"},
        ]
    }))
    written = predict_masks(whole_input_3d, PromptedImagesDataModule(prompts=str(prompts)), tmp_path / "out")
    assert [p.name for p in written] == ["ct_liver_mask.nii.gz", "ct_spleen_mask.nii.gz"]
    assert voxels(written[0])[tuple(PROMPT)] == 1 and voxels(written[1])[90, 40, 15] == 1


def test_a_bad_prompt_anywhere_fails_before_any_mask_is_written(tmp_path: Path, random_3d) -> None:
    mr = DATA / "totalseg_example" / "mr.nii.gz"  # 117 x 91 x 20
    prompts = {str(CT): {"points": [PROMPT]}, str(mr): {"points": [[10, 10, 20]]}}
    problem = r"point 0 at \(i=10, j=10, k=20\) lies outside the 117 x 91 x 20 image"
    with pytest.raises(PromptError, match=rf"^prompts: '{mr}', object 0: {problem}"):
        predict_masks(random_3d, PromptedImagesDataModule(prompts=prompts), tmp_path)
    assert not any(tmp_path.iterdir())


def test_prompts_file_keys_match_images_by_file_name(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"ct.nii.gz": {"points": [PROMPT]}}))
    data = PromptedImagesDataModule(images=[str(CT)], prompts=str(prompts), processor=PROCESSOR_3D)
    data.setup("predict")
    assert data.planned_outputs == ["ct_mask.nii.gz"]


def test_image_without_prompts_is_an_error(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({"ct.nii.gz": {"points": [PROMPT]}}))
    mr = DATA / "totalseg_example" / "mr.nii.gz"
    data = PromptedImagesDataModule(images=[str(CT), str(mr)], prompts=str(prompts), processor=PROCESSOR_3D)
    with pytest.raises(DataError, match=rf"^{prompts}: no prompts for image\(s\) \['{mr}'\]"):
        data.setup("predict")


def test_unknown_prompt_field_is_an_error(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({str(CT): {"point": [PROMPT]}}))
    with pytest.raises(DataError, match=r"unknown fields \['point'\]"):
        PromptedImagesDataModule(prompts=str(prompts), processor=PROCESSOR_3D).setup("predict")


# ------------------------------------------------------------------------------------------------------- 2D
@pytest.fixture(scope="module")
def random_2d() -> torch.nn.Module:
    torch.manual_seed(0)
    return zoo.create_model("sam_med2d_b", **TINY_2D).eval()


def test_2d_box_and_points_give_one_png_per_object_at_the_original_size(tmp_path: Path, random_2d) -> None:
    prompts = {
        str(STRETCHED_SLICE): [
            {"name": "kidney", "box": [40, 30, 120, 90]},
            {"name": "liver", "points": [[100, 60], [20, 20]], "labels": [1, 0]},
            {"points": [[50, 70]], "box": [30, 50, 90, 100]},
        ]
    }
    data = PromptedImagesDataModule(prompts=prompts)  # predict_masks gives it the model's processor
    written = predict_masks(random_2d, data, tmp_path)
    assert [p.name for p in written] == ["s0114_111_kidney_mask.png", "s0114_111_liver_mask.png",
                                         "s0114_111_2_mask.png"]
    for path in written:
        mask = Image.open(path)
        assert mask.size == Image.open(STRETCHED_SLICE).size and mask.mode == "L"
        assert set(np.unique(np.asarray(mask)).tolist()) <= {0, 255}


def test_2d_whole_input_mask_covers_exactly_the_padded_image(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = mark_whole_input(zoo.create_model("sam_med2d_b", **TINY_2D))
    data = PromptedImagesDataModule(images=str(PADDED_SLICE), box=[10, 10, 50, 60])
    (written,) = predict_masks(net, data, tmp_path)
    mask = np.asarray(Image.open(written))
    assert mask.shape == np.asarray(Image.open(PADDED_SLICE)).shape[:2]
    assert (mask == 255).all()


def test_2d_box_moves_with_the_padding() -> None:
    """SAM-Med2D's test script pads a 155 x 225 slice centred in 256 x 256: the box shifts by the padding, unscaled."""
    height, width = np.asarray(Image.open(PADDED_SLICE)).shape[:2]
    top, left = (256 - height) // 2, (256 - width) // 2
    processor = SamMed2DProcessor(SamMed2DProcessorConfig(geometry="test_script"))
    item = first_item(PromptedImagesDataModule(images=str(PADDED_SLICE), box=[10, 20, 50, 60], processor=processor))
    boxes = item["objects"][0]["prompts"].boxes
    assert boxes.lo.tolist() == [[20 + top, 10 + left]] and boxes.hi.tolist() == [[60 + top, 50 + left]]


def test_2d_box_is_stretched_with_the_image_in_the_predictor_geometry() -> None:
    """SAM-Med2D's predictor stretches the 155 x 225 slice to 256 x 256: box corners scale per axis."""
    item = first_item(PromptedImagesDataModule(images=str(PADDED_SLICE), box=[10, 20, 50, 60], processor="sam_med2d"))
    boxes = item["objects"][0]["prompts"].boxes
    torch.testing.assert_close(boxes.lo, torch.tensor([[20 * 256 / 155, 10 * 256 / 225]]))
    torch.testing.assert_close(boxes.hi, torch.tensor([[60 * 256 / 155, 50 * 256 / 225]]))


def test_2d_point_outside_the_image_is_an_error() -> None:
    data = PromptedImagesDataModule(images=str(PADDED_SLICE), points=[[225, 10]], processor="sam_med2d")
    problem = r"point 0 at \(x=225, y=10\) lies outside the 225 x 155 \(width x height\) image"
    with pytest.raises(PromptError, match=rf"^{PADDED_SLICE}: {problem}"):
        first_item(data)


def test_sam_unet_predicts_a_png_at_the_original_size_with_its_own_preprocessing(tmp_path: Path) -> None:
    torch.manual_seed(0)
    net = zoo.create_model("sam_unet_r34", **TINY_SAM_UNET).eval()
    data = PromptedImagesDataModule(images=str(STRETCHED_SLICE), box=[40, 30, 120, 90])
    (written,) = predict_masks(net, data, tmp_path)
    assert type(data.processor).__name__ == "SamUNetProcessor"  # the weights chose it
    assert Image.open(written).size == Image.open(STRETCHED_SLICE).size


# ------------------------------------------------------------------------------- same masks as the Predictor
def test_zoo_predict_writes_the_mask_the_predictor_gives_2d(tmp_path: Path, random_2d) -> None:
    box, points = [40, 30, 120, 90], [[100, 60], [20, 20]]
    data = PromptedImagesDataModule(images=str(STRETCHED_SLICE), box=box, points=points, point_labels=[1, 0])
    (written,) = predict_masks(random_2d, data, tmp_path)
    predictor = Predictor(random_2d)
    predictor.set_image(np.asarray(Image.open(STRETCHED_SLICE).convert("RGB")))
    expected = predictor.predict(point_coords=points, point_labels=[1, 0], box=box).masks[0].numpy()
    assert 0 < expected.sum() < expected.size
    assert np.array_equal(np.asarray(Image.open(written)) == 255, expected)


def test_zoo_predict_writes_the_mask_the_predictor_gives_3d(tmp_path: Path, random_3d) -> None:
    points = [PROMPT, [62, 52, 15]]
    (written,) = predict_masks(random_3d, data_3d(images=str(CT), points=points, point_labels=[1, 0]), tmp_path)
    predictor = Predictor(random_3d)
    predictor.set_image(CT)
    expected = predictor.predict(point_coords=points, point_labels=[1, 0]).masks[0].numpy()
    assert 0 < expected.sum() < CROP_FOOTPRINT**3
    assert np.array_equal(voxels(written).astype(bool), expected)


def test_a_processor_that_does_not_fit_the_model_is_refused(random_2d) -> None:
    data = PromptedImagesDataModule(images=str(STRETCHED_SLICE), box=[40, 30, 120, 90], processor="sam_med2d")
    batch = collate_prompted([first_item(data)])  # prepared at 256 x 256 for a 64 x 64 model
    with pytest.raises(ValueError, match=r"the processor prepares \(256, 256\) inputs but SamMed2D takes \(64, 64\)"):
        predict_batch(random_2d, data.processor, batch)


# ------------------------------------------------------------------------------------------------------ CLI
def zoo_predict_on_a_copy_of_the_ct(folder: Path) -> int:
    """``zoo predict`` with a tiny whole-input SAM-Med3D checkpoint and a world-space prompts file, in ``folder``."""
    module = PromptableSegmentationModule(model="sam_med3d_turbo", model_overrides=TINY_3D)
    mark_whole_input(module.net)
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": L.__version__}, folder / "tiny.ckpt")
    shutil.copy(CT, folder / "case.nii.gz")
    prompts = {"case.nii.gz": {"points": [world_of(CT, PROMPT)], "space": "world"}}
    (folder / "prompts.json").write_text(json.dumps(prompts))
    return zoo_main([
        "predict",
        "--model.model", "sam_med3d_turbo",
        "--model.model_overrides", json.dumps(TINY_3D),
        "--data", "zoo.data.predict.PromptedImagesDataModule",
        "--data.prompts", "prompts.json",
        "--trainer.accelerator", "cpu",
        "--trainer.logger", "false",
        "--trainer.enable_progress_bar", "false",
        "--trainer.callbacks+=zoo.training.prediction.MaskWriter",
        "--trainer.callbacks.output_dir", "masks",
        "--ckpt_path", "tiny.ckpt",
    ])


def test_zoo_predict_writes_the_mask_with_the_checkpoint_weights(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert zoo_predict_on_a_copy_of_the_ct(tmp_path) == 0
    image = tmp_path / "case.nii.gz"
    written = tmp_path / "masks" / "case_mask.nii.gz"
    assert nib.load(str(written)).shape == nib.load(str(image)).shape
    assert np.array_equal(nib.load(str(written)).affine, nib.load(str(image)).affine)
    mask = voxels(written).astype(bool)
    assert mask[tuple(PROMPT)] and mask.sum() == CROP_FOOTPRINT**3  # the checkpoint's whole-input decoder


def test_zoo_predict_refuses_to_overwrite_a_mask(tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    existing = tmp_path / "masks" / "case_mask.nii.gz"
    existing.parent.mkdir()
    existing.write_bytes(b"the user's own file")
    assert zoo_predict_on_a_copy_of_the_ct(tmp_path) == 1
    error = capsys.readouterr().err
    assert "zoo predict: error: 1 mask file(s) already exist" in error and str(existing) in error
    assert existing.read_bytes() == b"the user's own file"
