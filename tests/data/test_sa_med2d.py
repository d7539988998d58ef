"""The SA-Med2D-layout DataModule on the bundled SAM-Med2D demo: shapes, geometry, prompts, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from bundled_data import SAM_MED2D_DEMO, digests, names
from PIL import Image
from scipy import ndimage

import zoo
from zoo.data import DataError, MaskImageDataset, SAMed2DDataModule
from zoo.data.sa_med2d import make_sample_2d
from zoo.geometry.image2d import Letterbox
from zoo.processors import SamMed2DProcessor, SamMed2DProcessorConfig, processor_for
from zoo.prompts import PointPrompts, Prompts, boxes_from_masks

TINY_SAM_MED2D = dict(
    patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=(1,),
    prompt_embed_dim=32, decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32,
)
PADDED_MASK = "masks/s0619_32_hip_left_000.png"  # 155 x 225: both sides < 256, so centred padding
STRETCHED_MASK = "masks/s0114_111_aorta_000.png"  # 181 x 258: stretched to 256 x 256
# SAM's ImageNet statistics on the 0..255 scale, as SAM-Med2D's test.py normalises (written out, not imported).
SAM_PIXEL_MEAN, SAM_PIXEL_STD = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
PROCESSOR = SamMed2DProcessor(SamMed2DProcessorConfig())  # the released 256 x 256, test-script training geometry


def png(relative: str) -> np.ndarray:
    return np.asarray(Image.open(SAM_MED2D_DEMO / relative))


def eval_sample(mask_relative: str) -> dict:
    """The evaluation sample of one demo mask (its image is named by the mask's prefix)."""
    image = SAM_MED2D_DEMO / "images" / ("_".join(Path(mask_relative).name.split("_")[:2]) + ".png")
    return make_sample_2d(image, [SAM_MED2D_DEMO / mask_relative], PROCESSOR, keep_original_masks=True)


def opencv_nearest_rows(source: int, destination: int = 256) -> np.ndarray:
    """cv2.INTER_NEAREST source index per destination index: floor(j * (1 / (dst / src))), clipped."""
    return np.minimum(np.floor(np.arange(destination) * (1.0 / (destination / source))).astype(int), source - 1)


def letterbox(sample: dict) -> Letterbox:
    return sample["frame"].meta["letterbox"]


def test_training_batches_have_the_shapes_sam_med2d_takes():
    module = SAMed2DDataModule(SAM_MED2D_DEMO, masks_per_image=5, batch_size=2)
    module.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (2, 3, 256, 256) and batch["image"].dtype == torch.float32
    original_sizes = [tuple(size) for size in batch["original_size"].tolist()]
    assert [frame.original_shape for frame in batch["frame"]] == original_sizes
    assert batch["masks"].shape == (2, 5, 1, 256, 256) and batch["masks"].dtype == torch.bool
    assert batch["masks"].flatten(2).any(dim=2).all(), "every drawn mask has foreground"
    assert [len(paths) for paths in batch["mask_paths"]] == [5, 5]


def test_evaluation_batches_keep_one_mask_and_its_original_size():
    module = SAMed2DDataModule(SAM_MED2D_DEMO)
    module.setup("test")
    batches = list(module.test_dataloader())
    assert len(batches) == 11
    for batch in batches:
        assert batch["masks"].shape == (1, 1, 1, 256, 256)
        original = batch["original_masks"][0]
        assert torch.equal(original[0], torch.from_numpy(np.asarray(Image.open(batch["mask_paths"][0][0])) > 0))


def test_small_images_are_centred_on_a_zero_canvas_after_normalisation():
    sample = eval_sample(PADDED_MASK)
    top, left = (256 - 155) // 2, (256 - 225) // 2
    box = letterbox(sample)
    assert box.padded and (box.top, box.left) == (top, left)
    mask = torch.from_numpy(png(PADDED_MASK) > 0)
    canvas = sample["masks"][0, 0]
    assert torch.equal(canvas[top : top + 155, left : left + 225], mask) and canvas.sum() == mask.sum()
    rgb = png("images/s0619_32.png").astype(np.float64)
    expected = (rgb - np.array(SAM_PIXEL_MEAN)) / np.array(SAM_PIXEL_STD)
    image = sample["image"].permute(1, 2, 0).double()
    assert torch.allclose(image[top : top + 155, left : left + 225], torch.from_numpy(expected), atol=1e-5)
    assert (image[:top] == 0).all() and (image[:, :left] == 0).all()


def test_other_images_are_stretched_with_opencv_nearest_neighbour():
    sample = eval_sample(STRETCHED_MASK)
    assert not letterbox(sample).padded
    mask = png(STRETCHED_MASK) > 0
    expected = mask[opencv_nearest_rows(181)][:, opencv_nearest_rows(258)]
    assert np.array_equal(sample["masks"][0, 0].numpy(), expected)


@pytest.mark.parametrize("mask_relative", [PADDED_MASK, STRETCHED_MASK])
def test_prompts_follow_the_image_onto_the_model_grid_and_back(mask_relative):
    sample = eval_sample(mask_relative)
    original = png(mask_relative) > 0
    interior = ndimage.binary_erosion(original, iterations=2)  # away from edges, where stretching drops pixels
    voxels = np.argwhere(interior)
    assert len(voxels) > 20
    points = PointPrompts(
        torch.from_numpy(voxels).float()[None], torch.ones(1, len(voxels), dtype=torch.int64), original.shape
    )
    index_map = sample["frame"].to_model
    on_grid = points.mapped(index_map)
    prepared = sample["masks"][0, 0]
    assert prepared[tuple(on_grid.voxel_indices()[0].T)].all()
    assert torch.allclose(on_grid.mapped(index_map.inverse()).coords, points.coords, atol=1e-4)


def test_an_evaluation_batch_feeds_box_prompts_to_a_sam_med2d_model():
    module = SAMed2DDataModule(SAM_MED2D_DEMO)
    module.setup("test")
    batch = next(iter(module.test_dataloader()))
    torch.manual_seed(0)
    model = zoo.create_model("sam_med2d_b", **TINY_SAM_MED2D).eval()
    processor = processor_for(model)
    with torch.no_grad():
        features = model.encode_image(batch["image"])
        decoded = processor.decode(model, features, Prompts(boxes=boxes_from_masks(batch["masks"][:, 0, 0])))
    assert decoded.low_res_logits.shape == (1, 1, 64, 64)
    back = processor.to_original(decoded.low_res_logits, batch["frame"][0])
    assert back.mask.shape[-2:] == batch["original_masks"][0].shape[-2:]


def test_the_processor_decides_the_geometry_of_images_and_masks():
    module = SAMed2DDataModule(SAM_MED2D_DEMO, processor="sam_unet", image_size=64)
    module.setup("test")
    sample = module.eval_set[5]  # s0619_32_hip_left_000: 155 x 225
    assert sample["frame"].original_shape == (155, 225)
    resized = sample["frame"].meta["input_size"]
    assert resized == (44, 64)  # int(155 * 64 / 225 + 0.5) = int(44.59) rows
    assert sample["image"].shape == (3, 64, 64) and sample["masks"][0, 0, :44].any()
    # Longest side then bottom/right zero padding, for the image and its mask alike.
    assert not sample["image"][:, resized[0] :, :].any() and not sample["image"][:, :, resized[1] :].any()
    assert not sample["masks"][..., resized[0] :, :].any() and not sample["masks"][..., resized[1] :].any()


# Bad input ----------------------------------------------------------------------------------------------


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    shutil.copytree(SAM_MED2D_DEMO, tmp_path / "demo")
    return tmp_path / "demo"


def write_label2image(root: Path, mapping: dict[str, str]) -> Path:
    path = root / "label2image_test.json"
    path.write_text(json.dumps(mapping))
    return path


def test_a_missing_referenced_file_is_named(demo_copy):
    json_path = write_label2image(demo_copy, {"masks/gone.png": "images/s0619_32.png"})
    with pytest.raises(DataError, match=names(json_path, problem=r"references a missing file: .*masks/gone\.png")):
        MaskImageDataset(json_path, PROCESSOR)


def test_an_unparsable_json_file_is_named(demo_copy):
    json_path = demo_copy / "label2image_test.json"
    json_path.write_text("{not json")
    with pytest.raises(DataError, match=names(json_path, problem="cannot parse JSON")):
        MaskImageDataset(json_path, PROCESSOR)


def test_a_mask_of_another_size_than_its_image_is_named(demo_copy):
    json_path = write_label2image(demo_copy, {"masks/amos_0004_75_aorta_000.png": "images/s0619_32.png"})
    image, mask = demo_copy / "images/s0619_32.png", demo_copy / "masks/amos_0004_75_aorta_000.png"
    problem = r"image size \(155, 225\) and mask size \(512, 512\) differ"
    with pytest.raises(DataError, match=names(image, mask, problem=problem)):
        MaskImageDataset(json_path, PROCESSOR)[0]


@pytest.mark.parametrize(
    ("pixels", "problem"),
    [(np.full((155, 225), 7, dtype=np.uint8), r"mask values must be 0/255 or 0/1, found \[7\]"),
     (np.zeros((155, 225), dtype=np.uint8), "mask is empty")],
)
def test_non_binary_and_empty_masks_are_named(demo_copy, pixels, problem):
    bad = demo_copy / "masks" / "bad.png"
    Image.fromarray(pixels).save(bad)
    json_path = write_label2image(demo_copy, {"masks/bad.png": "images/s0619_32.png"})
    with pytest.raises(DataError, match=names(bad, problem=problem)):
        MaskImageDataset(json_path, PROCESSOR)[0]


def test_truncated_and_16_bit_images_are_named(demo_copy):
    image = demo_copy / "images" / "s0619_32.png"
    data = image.read_bytes()
    image.write_bytes(data[: len(data) // 2])
    json_path = write_label2image(demo_copy, {"masks/s0619_32_colon_000.png": "images/s0619_32.png"})
    with pytest.raises(DataError, match=names(image, problem="cannot read the image; it is truncated")):
        MaskImageDataset(json_path, PROCESSOR)[0]
    Image.fromarray(np.zeros((155, 225), dtype=np.uint16) + 300).save(image)
    with pytest.raises(DataError, match=names(image, problem="expected an 8-bit grey or RGB image")):
        MaskImageDataset(json_path, PROCESSOR)[0]


def test_loading_the_demo_modifies_nothing(demo_copy):
    before = digests(demo_copy)
    module = SAMed2DDataModule(demo_copy)
    module.setup()
    next(iter(module.train_dataloader()))
    list(module.test_dataloader())
    assert digests(demo_copy) == before
