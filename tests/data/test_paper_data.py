"""The authors' data rules as DataModule options: SAM-Med3D's batch-pooled z-normalisation (torchio as the oracle),
its CT clamp, its small-target redraw inside the crop, the total batch over devices, and SAM-Med2D's BGR images."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torchio as tio
from bundled_data import CT, KIDNEY_RIGHT, LABELS, make_nnunet
from PIL import Image

from zoo.data import NiftiDataModule3D, SAMed2DDataModule
from zoo.data.transforms3d import zscore_positive_pooled
from zoo.processors import SamMed2DProcessor, SamMed2DProcessorConfig

GALLBLADDER = 4
SMALL = dict(spacing=3.0, crop_size=32, flips=False)  # the bundled CT's own 3 mm grid: no resampling, fast


def first_train_batch(root: Path, **options) -> dict:
    classes = [KIDNEY_RIGHT, GALLBLADDER]
    module = NiftiDataModule3D(root, val_fraction=0.0, batch_size=2, classes=classes, **SMALL, **options)
    module.setup("fit")
    return next(iter(module.train_dataloader()))


@pytest.fixture(scope="module")
def ct_root(tmp_path_factory) -> Path:
    """The bundled CT under a folder named like the authors' CT datasets (``.../ct_<dataset>/...``)."""
    return make_nnunet(tmp_path_factory.mktemp("data") / "ct_abdomen", {"one": (CT, LABELS), "two": (CT, LABELS)})


def test_batch_pooled_normalisation_is_torchio_on_the_squeezed_batch(ct_root):
    raw = first_train_batch(ct_root, normalization="none")["image"]
    pooled = first_train_batch(ct_root, normalization_scope="batch")["image"]
    # SAM-Med3D train.py:343: tio.ZNormalization(masking_method=lambda x: x > 0) on image3D.squeeze(dim=1)
    oracle = tio.ZNormalization(masking_method=lambda x: x > 0)(raw.squeeze(dim=1)).unsqueeze(dim=1)
    torch.testing.assert_close(pooled, oracle, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(zscore_positive_pooled(raw), oracle, rtol=1e-6, atol=1e-5)
    per_crop = first_train_batch(ct_root)["image"]
    assert not torch.allclose(per_crop, pooled, atol=1e-3)  # the two crops have different statistics


def test_ct_paths_are_clamped_in_training_only(ct_root, tmp_path):
    options = dict(normalization="none", clip_range=(-1000.0, 1000.0), clip_scope="train_ct_paths")
    clamped = first_train_batch(ct_root, **options)["image"]
    assert clamped.min() >= -1000 and clamped.max() <= 1000
    other = make_nnunet(tmp_path / "mr_abdomen", {"one": (CT, LABELS)})
    assert first_train_batch(other, **options)["image"].min() < -1000  # no "/ct_" in the path: not clamped
    whole = {**SMALL, "crop_size": 128}  # the whole scan fits the evaluation crop
    module = NiftiDataModule3D(ct_root, val_fraction=0.5, classes=[KIDNEY_RIGHT], **whole, **options)
    module.setup("fit")
    assert next(iter(module.val_dataloader()))["image"].min() < -1000  # evaluation: infer_utils.py does not clamp


def test_small_targets_are_redrawn_by_their_voxels_in_the_crop(ct_root):
    # 3947 kidney and 1333 gallbladder voxels, all inside the 32^3 crop at 3 mm.
    redraw = NiftiDataModule3D(ct_root, val_fraction=0.0, classes=[KIDNEY_RIGHT, GALLBLADDER], batch_size=4,
                               min_target_voxels=2000, small_target_rule="crop_redraw", **SMALL)
    redraw.setup("fit")
    assert {t.class_id for t in redraw.train_targets} == {KIDNEY_RIGHT, GALLBLADDER}  # nothing left out up front
    batch = next(iter(redraw.train_dataloader()))
    assert batch["class_id"].tolist() == [KIDNEY_RIGHT] * 4 and all(t.sum() > 2000 for t in batch["target"])
    static = NiftiDataModule3D(ct_root, val_fraction=0.0, classes=[KIDNEY_RIGHT, GALLBLADDER],
                               min_target_voxels=2000, small_target_rule="volume", **SMALL)
    static.setup("fit")
    assert {t.class_id for t in static.train_targets} == {KIDNEY_RIGHT}


def test_the_total_batch_is_shared_out_over_the_devices(ct_root):
    module = NiftiDataModule3D(ct_root, total_batch_size=12, **SMALL)
    module.trainer = SimpleNamespace(world_size=2)
    assert module.per_device_batch_size() == 6
    module.trainer = SimpleNamespace(world_size=5)
    with pytest.raises(ValueError, match="does not divide"):
        module.per_device_batch_size()


def test_bgr_images_reach_the_processor_with_reversed_channels(tmp_path):
    # A colour image (dermoscopy-like): BGR and RGB differ; for grey images they would not.
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), dtype=np.uint8)
    mask[10:30, 10:30] = 255
    Image.fromarray(image).save(tmp_path / "skin.png")
    Image.fromarray(mask).save(tmp_path / "skin_lesion_000.png")
    (tmp_path / "label2image_test.json").write_text(json.dumps({"skin_lesion_000.png": "skin.png"}))
    processor = SamMed2DProcessor(SamMed2DProcessorConfig(image_size=64))
    module = SAMed2DDataModule(tmp_path, processor=processor, channel_order="bgr")
    module.setup("validate")
    sample = module.eval_set[0]
    expected = processor.prepare(np.ascontiguousarray(image[..., ::-1]), geometry="test_script").model_input
    torch.testing.assert_close(sample["image"], expected)
    assert not torch.allclose(sample["image"], processor.prepare(image, geometry="test_script").model_input)
