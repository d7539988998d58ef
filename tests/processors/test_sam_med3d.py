"""SAM-Med3D's processor on a synthetic NIfTI stored at its 1.5 mm spacing in RAS order, where the authors' resampling
is the identity, so the crop, its normalisation and the way back are plain array slices written by hand."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch

from tiny_models import write_volume
from zoo.errors import DataError, PromptError
from zoo.io.nifti import load_stored
from zoo.processors import SamMed3DProcessor, SamMed3DProcessorConfig
from zoo.prompts.types import PointPrompts, Prompts
from zoo.prompts.validate import points_from_user

CROP = 32
SHAPE = (48, 40, 36)


@pytest.fixture(scope="module")
def volume_path(tmp_path_factory) -> Path:
    return write_volume(tmp_path_factory.mktemp("volume") / "ct.nii.gz", SHAPE)


@pytest.fixture(scope="module")
def voxels(volume_path) -> np.ndarray:
    return np.asarray(nib.load(str(volume_path)).dataobj).astype(np.float32)


def processor(**config) -> SamMed3DProcessor:
    return SamMed3DProcessor(SamMed3DProcessorConfig(image_size=CROP, **config))


def clicks(*points: list[float]) -> Prompts:
    return Prompts(points_from_user([list(p) for p in points], None, SHAPE, "index"))


def zscore_positive(crop: np.ndarray) -> np.ndarray:
    values = crop[crop > 0]
    return (crop - values.mean()) / values.std(ddof=1)


def test_a_single_click_lands_at_the_crop_centre_of_a_z_normalised_window(volume_path, voxels):
    proc = processor()
    prompts = clicks([24, 20, 18])
    frame = proc.prepare(volume_path, prompts)
    assert frame.model_input.shape == (1, CROP, CROP, CROP) and frame.original_shape == SHAPE
    window = voxels[8:40, 4:36, 2:34]  # the click minus CROP // 2 on every axis
    np.testing.assert_allclose(frame.model_input[0].numpy(), zscore_positive(window), rtol=1e-5, atol=1e-5)
    on_model = proc.to_model_space(prompts, frame)
    assert on_model.points.coords.tolist() == [[[16.0, 16.0, 16.0]]]
    assert on_model.points.spatial_shape == (CROP, CROP, CROP)


def test_the_crop_is_centred_on_the_points_bounding_box(volume_path):
    proc = processor()
    prompts = clicks([20, 18, 14], [28, 24, 22])
    on_model = proc.to_model_space(prompts, proc.prepare(volume_path, prompts)).points.coords[0]
    midpoint = (on_model.max(dim=0).values + on_model.min(dim=0).values) / 2
    assert torch.all((midpoint - (CROP - 1) / 2).abs() <= 1.0)
    assert torch.equal(on_model[1] - on_model[0], torch.tensor([8.0, 6.0, 8.0]))  # no resampling at 1.5 mm


def test_a_volume_object_gives_the_same_crop_as_its_file(volume_path):
    proc = processor()
    from_file = proc.prepare(volume_path, clicks([24, 20, 18]))
    from_volume = proc.prepare(load_stored(volume_path), clicks([24, 20, 18]))
    assert torch.equal(from_file.model_input, from_volume.model_input)


def test_the_mask_goes_back_onto_the_crop_footprint_of_the_file(volume_path):
    proc = processor()
    frame = proc.prepare(volume_path, clicks([24, 20, 18]))
    result = proc.to_original(torch.full((1, 1, 8, 8, 8), 3.0), frame)
    expected = torch.zeros(SHAPE, dtype=torch.bool)
    expected[8:40, 4:36, 2:34] = True
    assert result.logits is None and torch.equal(result.mask, expected)


def test_low_res_logits_are_upsampled_trilinearly_without_corner_alignment():
    low_res = torch.tensor([0.0, 1.0]).reshape(1, 1, 1, 1, 2)
    upsampled = SamMed3DProcessor(SamMed3DProcessorConfig(image_size=4)).upsample(low_res)
    assert upsampled[0, 0, 0, 0].tolist() == [0.0, 0.25, 0.75, 1.0]


def test_sam_med3d_needs_a_point_to_place_its_crop(volume_path):
    with pytest.raises(PromptError, match="crops around its point prompts"):
        processor().prepare(volume_path, Prompts())


def test_points_that_do_not_fit_one_crop_are_refused(volume_path):
    with pytest.raises(PromptError, match=r"span \[40, 2, 2\] voxels .* more than one \(32, 32, 32\) crop"):
        processor().prepare(volume_path, clicks([2, 20, 18], [41, 21, 19]))


def test_a_later_point_outside_the_crop_is_refused(volume_path):
    proc = processor()
    frame = proc.prepare(volume_path, clicks([24, 20, 18]))
    with pytest.raises(PromptError, match=r"point 1 falls outside the \(32, 32, 32\) crop"):
        proc.to_model_space(clicks([24, 20, 18], [45, 2, 2]), frame)


def test_padding_slots_do_not_move_or_count(volume_path):
    proc = processor()
    points = PointPrompts.from_lists([[[24, 20, 18], [25, 20, 18]], [[24, 20, 18]]], [[1, 0], [1]], SHAPE)
    frame = proc.prepare(volume_path, Prompts(PointPrompts(points.coords[1:], points.labels[1:], SHAPE)))
    mapped = proc.to_model_space(Prompts(points), frame).points
    assert mapped.coords[1].tolist() == [[16.0, 16.0, 16.0], [0.0, 0.0, 0.0]] and mapped.labels[1].tolist() == [1, -1]


@pytest.mark.parametrize(
    ("normalization", "expected"),
    [("none", lambda w: w), ("ct_window", lambda w: (np.clip(w, -1000, 1000) + 1000) / 2000)],
)
def test_other_normalisations(volume_path, voxels, normalization, expected):
    frame = processor(normalization=normalization).prepare(volume_path, clicks([24, 20, 18]))
    window = voxels[8:40, 4:36, 2:34]
    np.testing.assert_allclose(frame.model_input[0].numpy(), expected(window), rtol=1e-6)


def test_a_crop_without_positive_voxels_cannot_be_z_normalised(tmp_path):
    path = tmp_path / "dark.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40, 40), dtype=np.int16), np.diag([1.5, 1.5, 1.5, 1.0])), str(path))
    with pytest.raises(DataError, match="cannot z-normalise the crop: only 0 voxels are > 0"):
        processor().prepare(path, Prompts(points_from_user([[20, 20, 20]], None, (40, 40, 40), "index")))
