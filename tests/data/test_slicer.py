"""Slicing the bundled CT into 2D samples and putting per-slice masks back on the volume."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from bundled_data import CT, LABELS, class_names

from zoo.data import SlicedVolumeDataset, assemble_volume, collate_2d, load_image, load_label, slice_volume
from zoo.processors import processor_from_spec

KIDNEY_RIGHT = 2


@pytest.fixture(scope="module")
def axial_slices():
    return slice_volume(load_image(CT), load_label(LABELS), class_names(), plane="axial")


def test_every_class_and_slice_holding_it_becomes_one_sample(axial_slices):
    labels = load_label(LABELS).array  # stored in RAS order, so axial slices are the last axis
    classes = [int(c) for c in np.unique(labels) if c]
    expected = sorted((c, z) for c in classes for z in range(30) if (labels[..., z] == c).any())
    assert sorted((s.class_id, s.slice_index) for s in axial_slices) == expected
    assert all(s.image.shape == (101, 122, 3) and s.image.dtype == np.uint8 and s.mask.any() for s in axial_slices)


def test_axial_slices_are_displayed_with_anterior_up_and_patient_right_on_the_left(axial_slices):
    kidney = next(s for s in axial_slices if s.class_id == KIDNEY_RIGHT)
    # File axes: x grows towards the patient's right, y towards anterior.
    labels = load_label(LABELS).array[..., kidney.slice_index] == KIDNEY_RIGHT
    rows, cols = np.nonzero(kidney.mask)
    xs, ys = np.nonzero(labels)
    assert np.array_equal(np.sort(cols), np.sort(121 - xs)) and np.array_equal(np.sort(rows), np.sort(100 - ys))
    assert cols.mean() < 61, "the right kidney appears on the image's left, as radiologists view it"


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_per_slice_masks_assemble_back_onto_the_original_grid(plane):
    label = load_label(LABELS)
    slices = slice_volume(load_image(CT), label, class_names(), plane=plane)
    kidney = {s.slice_index: s.mask for s in slices if s.class_id == KIDNEY_RIGHT}
    assert np.array_equal(assemble_volume(kidney, plane, label), label.array == KIDNEY_RIGHT)


def test_slices_do_not_depend_on_the_voxel_order_of_the_file(axial_slices, slp_pair):
    image_path, label_path = slp_pair
    label = load_label(label_path)
    reordered = slice_volume(load_image(image_path), label, class_names(), plane="axial")
    assert [(s.class_id, s.slice_index) for s in reordered] == [(s.class_id, s.slice_index) for s in axial_slices]
    for moved, original in zip(reordered, axial_slices):
        assert np.array_equal(moved.mask, original.mask) and np.array_equal(moved.image, original.image)
    kidney = {s.slice_index: s.mask for s in reordered if s.class_id == KIDNEY_RIGHT}
    assert np.array_equal(assemble_volume(kidney, "axial", label), label.array == KIDNEY_RIGHT)


def test_ct_window_sets_the_8_bit_range():
    slices = slice_volume(load_image(CT), load_label(LABELS), class_names(), window=(-160.0, 240.0))
    hu = load_image(CT).array[..., slices[0].slice_index]
    expected = np.round((np.clip(hu, -160, 240) + 160) / 400 * 255).astype(np.uint8)
    assert np.array_equal(slices[0].image[..., 0], expected[::-1, ::-1].T)


def test_sliced_samples_batch_like_the_2d_datamodule():
    dataset = SlicedVolumeDataset(CT, LABELS, class_names(), min_pixels=50, processor=processor_from_spec("sam_med2d"))
    batch = collate_2d([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 256, 256) and batch["image"].dtype == torch.float32
    assert batch["masks"].shape == (2, 1, 1, 256, 256) and batch["masks"].dtype == torch.bool
    letterboxes = [frame.meta["letterbox"] for frame in batch["frame"]]
    assert all(box.padded for box in letterboxes), "101 x 122 slices are centred on the 256 canvas"
    assert all(int(m.sum()) >= 50 for m in batch["original_masks"])
    assert batch["class_id"].dtype == torch.int64 and batch["slice_index"].shape == (2,)


def test_label_names_file_errors_name_the_file(tmp_path):
    from zoo.errors import DataError
    from zoo.data.sliced import _read_label_names

    missing = tmp_path / "names.json"
    with pytest.raises(DataError, match=r"names\.json: file not found"):
        _read_label_names(missing, None)
    missing.write_text("{not json")
    with pytest.raises(DataError, match=r"names\.json: cannot parse the label names JSON"):
        _read_label_names(missing, None)
