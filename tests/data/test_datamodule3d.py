"""The 3D DataModule yields what SAM-Med3D takes, on the bundled CT in the nnU-Net layout (full 128^3 path)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bundled_data import CT, KIDNEY_RIGHT, LABELS, make_nnunet

import zoo
from zoo.data import NiftiDataModule3D, load_label, restore_to_original
from zoo.processors import ClickState, SamMed3DProcessor, SamMed3DProcessorConfig, processor_for
from zoo.prompts import first_click_random_foreground

TINY_SAM_MED3D = dict(
    patch_size=16, embed_dim=24, depth=2, num_heads=2, window_size=3, global_attn_indexes=(1,),
    prompt_embed_dim=24, decoder_num_heads=2, decoder_mlp_dim=32, iou_head_hidden_dim=16,
)


@pytest.fixture(scope="module")
def kidney_batch(tmp_path_factory):
    """An evaluation batch of two targets (right kidney and gallbladder) at the released 128^3 size."""
    cases = {"first": (CT, LABELS), "second": (CT, LABELS)}
    root = make_nnunet(tmp_path_factory.mktemp("nnunet") / "Dataset001", cases)
    module = NiftiDataModule3D(root, val_fraction=0.5, classes=[KIDNEY_RIGHT, 4], batch_size=2)
    module.setup("fit")
    return next(iter(module.val_dataloader()))


def test_batches_have_the_shapes_and_dtypes_sam_med3d_takes(kidney_batch):
    assert kidney_batch["image"].shape == (2, 1, 128, 128, 128) and kidney_batch["image"].dtype == torch.float32
    assert kidney_batch["target"].shape == (2, 1, 128, 128, 128) and kidney_batch["target"].dtype == torch.bool
    assert kidney_batch["class_id"].tolist() == [KIDNEY_RIGHT, 4]
    assert kidney_batch["class_name"] == ["kidney_right", "gallbladder"]
    assert kidney_batch["crop_affine"].shape == (2, 4, 4) and kidney_batch["crop_affine"].dtype == torch.float64
    assert kidney_batch["original_shape"].tolist() == [[122, 101, 30]] * 2


def test_a_batch_feeds_the_simulators_and_a_sam_med3d_model(kidney_batch):
    torch.manual_seed(0)
    model = zoo.create_model("sam_med3d_turbo", **TINY_SAM_MED3D).eval()
    processor = processor_for(model)
    assert processor.input_shape == tuple(kidney_batch["image"].shape[2:])
    clicks = first_click_random_foreground(kidney_batch["target"][:, 0], torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = model.encode_image(kidney_batch["image"])
        _, decoded = processor.click(model, features, ClickState(), clicks)
    assert decoded.low_res_logits.shape == (2, 1, 32, 32, 32)


def test_batch_targets_map_back_to_the_label_file_exactly(kidney_batch):
    labels = load_label(LABELS).array
    for b in range(2):
        restored = restore_to_original(
            kidney_batch["target"][b], kidney_batch["crop_affine"][b], kidney_batch["original_affine"][b],
            kidney_batch["original_shape"][b].tolist(),
        )
        assert np.array_equal(restored[0].numpy(), labels == int(kidney_batch["class_id"][b]))


def test_training_targets_are_skipped_below_the_voxel_threshold_and_validation_splits_by_case(tmp_path):
    root = make_nnunet(tmp_path / "Dataset002", {"first": (CT, LABELS), "second": (CT, LABELS)})
    module = NiftiDataModule3D(root, val_fraction=0.5)
    module.setup("fit")
    train_cases = {t.case_id for t in module.train_targets}
    val_cases = {t.case_id for t in module.val_targets}
    assert len(train_cases) == len(val_cases) == 1 and train_cases != val_cases
    assert len(module.skipped_targets) == 5 and all(t.num_voxels * 8 <= 1000 for t in module.skipped_targets)
    assert len(module.val_targets) == 41, "evaluation keeps every target present"


def test_training_batch_crops_around_a_random_target_voxel(tmp_path):
    root = make_nnunet(tmp_path / "Dataset003", {"abdomen": (CT, LABELS)})
    module = NiftiDataModule3D(root, val_fraction=0.0, classes=[KIDNEY_RIGHT], crop_size=32, flips=False)
    module.setup("fit")
    torch.manual_seed(0)
    batch = next(iter(module.train_dataloader()))
    assert batch["image"].shape == (1, 1, 32, 32, 32) and batch["target"][0, 0, 16, 16, 16]


def test_spacing_crop_and_normalisation_come_from_the_processor_unless_given(nnunet_root):
    released = NiftiDataModule3D(nnunet_root)
    assert (released.spacing, released.crop_size, released.normalization) == ((1.5, 1.5, 1.5), 128, "zscore_positive")
    processor = SamMed3DProcessor(SamMed3DProcessorConfig(image_size=64, target_spacing_mm=(2.0, 2.0, 3.0)))
    module = NiftiDataModule3D(nnunet_root, processor=processor)
    assert (module.spacing, module.crop_size) == ((2.0, 2.0, 3.0), 64)
    overridden = NiftiDataModule3D(nnunet_root, processor=processor.to_dict(), crop_size=32, normalization="ct_window")
    assert (overridden.spacing, overridden.crop_size, overridden.normalization) == ((2.0, 2.0, 3.0), 32, "ct_window")


def test_a_2d_processor_is_refused(nnunet_root):
    with pytest.raises(ValueError, match="NiftiDataModule3D needs a 3D processor, got SamMed2DProcessor"):
        NiftiDataModule3D(nnunet_root, processor="sam_med2d")
