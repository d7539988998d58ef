"""Finding cases and targets in the nnU-Net and SAM-Med3D per-target layouts, and their bad-input errors."""

from __future__ import annotations

import logging
import shutil

import nibabel as nib
import numpy as np
import pytest
from bundled_data import CT, LABELS, class_names, digests, make_nnunet, names, write_dataset_json

from zoo.data import DataError, find_cases, list_targets, read_dataset_json


def label_counts() -> dict[int, int]:
    values, counts = np.unique(np.asarray(nib.load(LABELS).dataobj), return_counts=True)
    return {int(v): int(c) for v, c in zip(values, counts) if v != 0}


@pytest.mark.parametrize("version", [1, 2])
def test_dataset_json_labels_are_read_in_both_nnunet_versions(tmp_path, version):
    write_dataset_json(tmp_path, {1: "spleen", 5: "liver"}, version)
    assert read_dataset_json(tmp_path / "dataset.json") == ({1: "spleen", 5: "liver"}, ".nii.gz")


def test_nnunet_case_pairs_the_label_with_channel_0000(nnunet_root):
    (case,) = find_cases(nnunet_root)
    assert case.case_id == "abdomen"
    assert case.image_path == nnunet_root / "imagesTr" / "abdomen_0000.nii.gz"
    assert case.label_path == nnunet_root / "labelsTr" / "abdomen.nii.gz"


def test_every_present_class_becomes_one_target(nnunet_root):
    kept, skipped = list_targets(find_cases(nnunet_root))
    assert not skipped
    assert {t.class_id: t.num_voxels for t in kept} == label_counts()
    assert {t.class_id: t.class_name for t in kept} == {c: class_names()[c] for c in label_counts()}


def test_small_targets_are_skipped_like_upstream_and_the_skip_is_logged(nnunet_root, caplog):
    # 3 mm voxels resample to 8 voxels each at 1.5 mm; upstream drops targets with <= 1000 voxels.
    too_small = sorted(c for c, n in label_counts().items() if n * 8 <= 1000)
    with caplog.at_level(logging.WARNING, logger="zoo.data.layout3d"):
        kept, skipped = list_targets(find_cases(nnunet_root), (1.5, 1.5, 1.5), min_voxels=1000)
    assert sorted(t.class_id for t in skipped) == too_small and len(too_small) == 5
    assert len(kept) == len(label_counts()) - len(too_small)
    assert f"skipped {len(too_small)} of {len(label_counts())} targets" in caplog.text


def test_missing_image_is_named(nnunet_root):
    (nnunet_root / "imagesTr" / "abdomen_0000.nii.gz").unlink()
    with pytest.raises(DataError, match=r"abdomen\.nii\.gz vs .*abdomen_0000\.nii\.gz: label has no matching image"):
        find_cases(nnunet_root)


def test_label_values_missing_from_dataset_json_are_named(nnunet_root):
    write_dataset_json(nnunet_root, {1: "spleen", 5: "liver"})
    label = nnunet_root / "labelsTr" / "abdomen.nii.gz"
    problem = r"label values \[2, 3, 4, .*\] are not in the dataset's labels \[1, 5\]"
    with pytest.raises(DataError, match=names(label, problem=problem)):
        list_targets(find_cases(nnunet_root))


def test_empty_label_is_named(tmp_path):
    empty = tmp_path / "empty.nii.gz"
    reference = nib.load(LABELS)
    nib.save(nib.Nifti1Image(np.zeros(reference.shape, dtype=np.uint8), reference.affine), empty)
    root = make_nnunet(tmp_path / "dataset", {"blank": (CT, empty)})
    with pytest.raises(DataError, match=names(root / "labelsTr" / "blank.nii.gz", problem="label is empty")):
        list_targets(find_cases(root))


def test_label_on_another_grid_than_its_image_is_named(tmp_path):
    reference = nib.load(LABELS)
    shifted = tmp_path / "shifted.nii.gz"
    affine = reference.affine.copy()
    affine[2, 3] += 1.0
    nib.save(nib.Nifti1Image(np.asarray(reference.dataobj), affine), shifted)
    root = make_nnunet(tmp_path / "dataset", {"abdomen": (CT, shifted)})
    with pytest.raises(DataError, match=r"abdomen_0000\.nii\.gz vs .*abdomen\.nii\.gz: image and label affines differ"):
        list_targets(find_cases(root))


def test_per_target_layout_names_targets_after_their_folder(tmp_path):
    labels = np.asarray(nib.load(LABELS).dataobj)
    affine = nib.load(LABELS).affine
    for target, class_id in (("kidney_right", 2), ("spleen", 1)):
        folder = tmp_path / target / "TotalSegExample"
        (folder / "imagesTr").mkdir(parents=True)
        (folder / "labelsTr").mkdir()
        shutil.copy(CT, folder / "imagesTr" / "ct_abdomen.nii.gz")
        binary = nib.Nifti1Image((labels == class_id).astype(np.uint8), affine)
        nib.save(binary, folder / "labelsTr" / "ct_abdomen.nii.gz")
    kept, _ = list_targets(find_cases(tmp_path, layout="per_target"))
    assert sorted((t.case_id, t.class_id, t.class_name, t.num_voxels) for t in kept) == [
        ("kidney_right/TotalSegExample/ct_abdomen", 1, "kidney_right", label_counts()[2]),
        ("spleen/TotalSegExample/ct_abdomen", 1, "spleen", label_counts()[1]),
    ]


def test_per_target_labels_must_be_binary(tmp_path):
    folder = tmp_path / "liver" / "Example"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    shutil.copy(CT, folder / "imagesTr" / "case.nii.gz")
    shutil.copy(LABELS, folder / "labelsTr" / "case.nii.gz")
    problem = r"label values \[2, 3, .*\] are not in the dataset's labels \[1\]"
    with pytest.raises(DataError, match=names(folder / "labelsTr" / "case.nii.gz", problem=problem)):
        list_targets(find_cases(tmp_path))


def test_listing_targets_modifies_nothing(nnunet_root):
    before = digests(nnunet_root)
    list_targets(find_cases(nnunet_root), min_voxels=1000)
    assert digests(nnunet_root) == before
