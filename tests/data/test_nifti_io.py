"""Bad NIfTI input gets a clear DataError naming the file; good input loads; nothing on disk changes."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from bundled_data import CT, LABELS, digests, names

from zoo.data import DataError, check_same_grid, load_image, load_label


def save(path: Path, array: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), path)
    return path


def test_bundled_ct_and_labels_load_on_the_same_grid():
    image, label = load_image(CT), load_label(LABELS)
    assert image.shape == label.shape == (122, 101, 30)
    assert image.array.dtype == np.float32 and np.issubdtype(label.array.dtype, np.integer)
    check_same_grid(image, label)


def test_missing_file_is_named(tmp_path):
    missing = tmp_path / "nowhere.nii.gz"
    with pytest.raises(DataError, match=names(missing, problem=r"file not found")):
        load_image(missing)


def test_unreadable_file_is_named(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"this is not a nifti file" * 20)
    with pytest.raises(DataError, match=names(garbage, problem=r"cannot read as NIfTI")):
        load_image(garbage)


def test_truncated_file_is_named(tmp_path):
    truncated = tmp_path / "truncated.nii.gz"
    raw = gzip.decompress(CT.read_bytes())
    truncated.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    problem = "cannot read voxel data; the file is truncated or corrupt"
    with pytest.raises(DataError, match=names(truncated, problem=problem)):
        load_image(truncated)


def test_multi_channel_volume_is_refused(tmp_path):
    four_d = save(tmp_path / "two_channels.nii.gz", np.zeros((8, 8, 8, 2), dtype=np.float32))
    problem = "expected a single-channel 3D volume.*4D or multi-channel"
    with pytest.raises(DataError, match=names(four_d, problem=problem)):
        load_image(four_d)


def test_trailing_singleton_channel_is_accepted(tmp_path):
    single = save(tmp_path / "one_channel.nii.gz", np.ones((8, 8, 8, 1), dtype=np.float32))
    assert load_image(single).shape == (8, 8, 8)


@pytest.mark.parametrize("bad_value", [np.nan, np.inf])
def test_nan_or_infinite_intensities_are_refused(tmp_path, bad_value):
    array = np.asarray(nib.load(CT).dataobj).astype(np.float32)
    array[10, 10, 10] = bad_value
    path = save(tmp_path / "bad_ct.nii.gz", array, nib.load(CT).affine)
    with pytest.raises(DataError, match=names(path, problem=r"1 voxels are NaN or infinite")):
        load_image(path)


def test_non_integer_labels_are_refused(tmp_path):
    path = save(tmp_path / "soft.nii.gz", np.full((4, 4, 4), 0.5, dtype=np.float32))
    with pytest.raises(DataError, match=names(path, problem=r"label contains non-integer values")):
        load_label(path)


def test_image_and_label_shapes_must_match(tmp_path):
    label = save(tmp_path / "small_label.nii.gz", np.zeros((10, 10, 10), dtype=np.uint8), nib.load(CT).affine)
    problem = r"image shape \(122, 101, 30\) and label shape \(10, 10, 10\)"
    with pytest.raises(DataError, match=names(CT, label, problem=problem)):
        check_same_grid(load_image(CT), load_label(label))


def test_image_and_label_affines_must_match(tmp_path):
    affine = nib.load(LABELS).affine.copy()
    affine[0, 3] += 3.0  # one voxel to the side
    label = save(tmp_path / "shifted_label.nii.gz", np.asarray(nib.load(LABELS).dataobj), affine)
    with pytest.raises(DataError, match=names(CT, label, problem=r"image and label affines differ by up to 3")):
        check_same_grid(load_image(CT), load_label(label))


def test_reading_good_and_bad_files_modifies_nothing(tmp_path):
    shutil.copy(CT, tmp_path / "ct.nii.gz")
    save(tmp_path / "nan.nii.gz", np.full((4, 4, 4), np.nan, dtype=np.float32))
    before = digests(tmp_path)
    load_image(tmp_path / "ct.nii.gz")
    with pytest.raises(DataError):
        load_image(tmp_path / "nan.nii.gz")
    assert digests(tmp_path) == before
