"""The 3D pipeline on the bundled CT: exact inverse, prompts that follow the image, crops and normalisation."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from bundled_data import CT, KIDNEY_RIGHT, LABELS, names
from monai.data import MetaTensor

from zoo.data import (
    DataError,
    TargetDataset,
    TargetRecord,
    build_transforms_3d,
    crop_to_original_map,
    load_image,
    load_label,
    restore_to_original,
)
from zoo.prompts import PointPrompts

# Larger than the resampled CT (244 x 202 x 60 at 1.5 mm on the authors' grid): centred on the labels' box, it keeps every labelled voxel.
WHOLE_VOLUME_CROP = (248, 208, 64)


def run_pipeline(image_path: Path, label_path: Path, seed: int = 0, keep_class: int | None = None, **options):
    """Run build_transforms_3d(**options) on an image and its label map (or one class of it)."""
    image, label = load_image(image_path), load_label(label_path)
    values = label.array if keep_class is None else (label.array == keep_class)
    affine = torch.from_numpy(image.affine)
    data = {
        "image": MetaTensor(torch.from_numpy(image.array)[None], affine=affine),
        "label": MetaTensor(torch.from_numpy(values.astype(np.int64))[None], affine=affine.clone()),
        "image_path": str(image_path),
    }
    transform = build_transforms_3d(**options)
    transform.set_random_state(seed)
    return transform(data), image, label


_CACHE: dict[tuple, tuple] = {}


@pytest.fixture
def whole_volume(request, slp_pair):
    """Pipeline output for the whole label map: (orientation, mode) -> (out, image, label), computed once each."""

    def get(orientation: str, mode: str, seed: int = 0):
        key = (orientation, mode, seed)
        if key not in _CACHE:
            paths = (CT, LABELS) if orientation == "ras" else slp_pair
            options = {"train": mode == "train_flips", "crop_size": WHOLE_VOLUME_CROP, "crop_center": "label_bbox"}
            _CACHE[key] = run_pipeline(*paths, seed=seed, **options)
        return _CACHE[key]

    return get


@pytest.mark.parametrize("mode", ["eval", "train_flips"])
@pytest.mark.parametrize("orientation", ["ras", "slp"])
def test_label_map_round_trips_voxel_exactly_on_the_original_grid(whole_volume, orientation, mode):
    out, image, label = whole_volume(orientation, mode)
    restored = restore_to_original(out["label"].as_tensor(), out["label"].affine, label.affine, label.shape)
    assert restored.shape == (1, *label.shape)
    assert np.array_equal(restored[0].numpy(), label.array)


def test_random_flips_change_the_crop_but_not_the_round_trip(whole_volume):
    flipped_axes = set()
    for seed in range(4):
        out, _, label = whole_volume("ras", "train_flips", seed)
        flipped_axes |= {axis for axis in range(3) if out["label"].affine[axis, axis] < 0}
        restored = restore_to_original(out["label"].as_tensor(), out["label"].affine, label.affine, label.shape)
        assert np.array_equal(restored[0].numpy(), label.array)
    assert flipped_axes == {0, 1, 2}, "the seeds above flip every axis at least once"


@pytest.mark.parametrize(("orientation", "mode"), [("ras", "eval"), ("slp", "eval"), ("ras", "train_flips")])
def test_points_follow_the_image_from_the_original_grid_into_the_crop(whole_volume, orientation, mode):
    out, _, label = whole_volume(orientation, mode)
    crop = out["label"].as_tensor()[0]
    foreground = np.argwhere(label.array > 0)
    chosen = foreground[np.random.default_rng(0).choice(len(foreground), 500, replace=False)]
    anywhere = np.random.default_rng(1).integers(0, label.shape, size=(500, 3))
    voxels = np.concatenate([chosen, anywhere])
    labels = torch.ones(1, len(voxels), dtype=torch.int64)
    points = PointPrompts(torch.from_numpy(voxels).float()[None], labels, label.shape)
    to_crop = crop_to_original_map(out["label"].affine, label.affine, crop.shape, label.shape).inverse()
    in_crop = points.mapped(to_crop)
    index = in_crop.voxel_indices()[0]
    inside = ((index >= 0) & (index < torch.tensor(crop.shape))).all(dim=1)
    assert inside[:500].all() and inside.sum() > 900, "every labelled voxel and most others lie in the crop"
    crop_values = crop[tuple(index[inside].T)]
    original_values = torch.from_numpy(label.array[tuple(voxels[inside.numpy()].T)]).to(crop_values.dtype)
    assert torch.equal(crop_values, original_values)
    back = in_crop.mapped(crop_to_original_map(out["label"].affine, label.affine, crop.shape, label.shape))
    assert torch.allclose(back.coords, points.coords, atol=1e-4)


def test_one_target_round_trips_through_the_full_size_128_crop():
    out, image, label = run_pipeline(CT, LABELS, keep_class=KIDNEY_RIGHT, train=False)
    assert out["image"].shape == out["label"].shape == (1, 128, 128, 128)
    restored = restore_to_original(out["label"].as_tensor(), out["label"].affine, label.affine, label.shape)
    assert np.array_equal(restored[0].numpy(), label.array == KIDNEY_RIGHT)


@pytest.fixture(scope="module")
def kidney_crops():
    """64^3 evaluation crops of the right kidney: raw intensities and each normalisation."""
    return {
        mode: run_pipeline(CT, LABELS, keep_class=KIDNEY_RIGHT, train=False, crop_size=64, normalization=mode)[0]
        for mode in ("none", "zscore_positive", "ct_window")
    }


def test_evaluation_crop_is_centred_on_the_target_bounding_box(kidney_crops):
    voxels = torch.nonzero(kidney_crops["none"]["label"][0])
    centre = (voxels.amin(dim=0) + voxels.amax(dim=0)).float() / 2
    assert ((centre >= 31.5) & (centre < 32.5)).all(), centre


def test_padding_beyond_the_volume_is_raw_zero(kidney_crops):
    raw = kidney_crops["none"]["image"][0]
    assert raw.shape[2] == 64 and out_of_volume_slices(kidney_crops["none"]).numel() > 0
    assert (raw[:, :, out_of_volume_slices(kidney_crops["none"])] == 0).all()


def out_of_volume_slices(out) -> torch.Tensor:
    """Crop z indices outside the resampled volume (the authors' torchio grid: 60 voxels at 1.5 mm, the first centre
    half a new voxel before the CT's first centre)."""
    from zoo.geometry.grid3d import torchio_resample_grid

    z_world = out["image"].affine[2, 2] * torch.arange(64.0, dtype=torch.float64) + out["image"].affine[2, 3]
    ct = nib.load(CT)
    grid = torchio_resample_grid(ct.shape, ct.affine, 1.5)
    first = grid.affine[2, 3]
    last = first + grid.affine[2, 2] * (grid.shape[2] - 1)
    return torch.nonzero((z_world < first - 1e-6) | (z_world > last + 1e-6)).flatten()


def test_random_foreground_crop_puts_a_target_voxel_at_the_centre():
    affines = []
    for seed in range(3):
        out, _, _ = run_pipeline(CT, LABELS, seed=seed, keep_class=KIDNEY_RIGHT, train=True, crop_size=64, flips=False)
        assert out["label"][0, 32, 32, 32] == 1
        affines.append(out["label"].affine)
    assert not torch.equal(affines[0], affines[1]) or not torch.equal(affines[1], affines[2])


def test_zscore_statistics_come_from_the_positive_voxels_of_the_crop_only(kidney_crops):
    raw = kidney_crops["none"]["image"].as_tensor().double()
    positive = raw[raw > 0].numpy()
    expected = (raw - positive.mean()) / positive.std(ddof=1)  # torchio ZNormalization: unbiased std
    assert torch.allclose(kidney_crops["zscore_positive"]["image"].as_tensor().double(), expected, atol=1e-4)


def test_ct_window_maps_minus_1000_to_1000_hu_onto_zero_to_one(kidney_crops):
    raw = kidney_crops["none"]["image"].as_tensor()
    expected = ((raw.clamp(-1000, 1000) + 1000) / 2000).float()
    assert torch.allclose(kidney_crops["ct_window"]["image"].as_tensor(), expected, atol=1e-6)


def test_a_crop_without_positive_intensities_is_named_not_crashed(tmp_path):
    reference = nib.load(CT)
    flat = tmp_path / "all_air.nii.gz"
    nib.save(nib.Nifti1Image(np.full(reference.shape, -1000, dtype=np.int16), reference.affine), flat)
    record = TargetRecord("air", flat, LABELS, KIDNEY_RIGHT, "kidney_right", 1, 8.0)
    dataset = TargetDataset([record], build_transforms_3d(train=False, crop_size=32))
    with pytest.raises(DataError, match=names(flat, problem=r"cannot z-normalise the crop: only 0 voxels are > 0")):
        dataset[0]
