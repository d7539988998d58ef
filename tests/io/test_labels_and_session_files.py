"""Label maps (zoo.io.labels, MaskSet.add_labels/add_json) and saved-session files (zoo.io.session_files)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

from zoo.errors import DataError
from zoo.io.coordinates import voxel_to_world, world_to_voxel
from zoo.io.labels import label_file_names, label_map, label_table
from zoo.io.masks import MaskSet
from zoo.io.session_files import SESSION_FILE, read_session, write_session


def test_the_later_object_wins_where_objects_overlap():
    a = np.zeros((4, 5), dtype=bool)
    b = np.zeros((4, 5), dtype=bool)
    a[:2] = True
    b[1:3] = True
    labels = label_map([a, b])
    assert labels.dtype == np.uint8
    assert labels[0].tolist() == [1] * 5 and labels[1].tolist() == [2] * 5 and labels[2].tolist() == [2] * 5
    assert labels[3].tolist() == [0] * 5
    swapped = label_map([b, a])  # now a is the later object: the overlap is a's (value 2)
    assert swapped[:3, 0].tolist() == [2, 2, 1]
    assert label_table(["liver", None]) == {"0": "background", "1": "liver", "2": "object_1"}
    assert label_file_names("ct", 3) == ("ct_labels.nii.gz", "ct_labels.json")


def test_a_nifti_label_map_keeps_the_sources_geometry_and_its_values(tmp_path):
    affine = np.array([[0.0, 0.0, -2.0, 10.0], [-1.5, 0.0, 0.0, 5.0], [0.0, 3.0, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    source = tmp_path / "ct.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((3, 4, 5), dtype=np.int16), affine), str(source))
    many = [np.zeros((3, 4, 5), dtype=bool) for _ in range(300)]
    many[299][0, 0, 0] = True
    many[3][1, 1, 1] = True
    with MaskSet(tmp_path / "out") as files:
        files.add_labels("ct_labels.nii.gz", label_map(many[:5]), source)
        files.add_labels("many_labels.nii.gz", label_map(many), source)
        files.add_json("ct_labels.json", label_table(["a", "b", "c", "d", "e"]))
    small = nib.load(tmp_path / "out" / "ct_labels.nii.gz")
    assert np.allclose(small.affine, affine) and small.header.get_data_dtype() == np.uint8
    assert np.asarray(small.dataobj)[1, 1, 1] == 4
    large = nib.load(tmp_path / "out" / "many_labels.nii.gz")
    assert large.header.get_data_dtype() == np.uint16 and np.asarray(large.dataobj)[0, 0, 0] == 300
    assert json.loads((tmp_path / "out" / "ct_labels.json").read_text())["5"] == "e"


def test_a_png_label_map_holds_the_values(tmp_path):
    labels = np.array([[0, 1], [2, 3]], dtype=np.uint8)
    with MaskSet(tmp_path) as files:
        files.add_labels("x_labels.png", labels, tmp_path / "x.png")
    assert np.array_equal(np.asarray(Image.open(tmp_path / "x_labels.png")), labels)


def test_a_failed_run_leaves_neither_masks_nor_label_maps(tmp_path):
    with pytest.raises(RuntimeError), MaskSet(tmp_path / "out") as files:
        files.add("x_mask.png", np.ones((2, 2), dtype=np.uint8), tmp_path / "x.png")
        files.add_labels("x_labels.png", np.ones((2, 2), dtype=np.uint8), tmp_path / "x.png")
        raise RuntimeError("the second image failed")
    assert list((tmp_path / "out").iterdir()) == []


def test_world_and_voxel_coordinates_are_inverse():
    affine = np.array([[0.0, 0.0, -2.0, 10.0], [-1.5, 0.0, 0.0, 5.0], [0.0, 3.0, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    voxels = np.array([[1.0, 2.0, 3.0], [0.5, 0.0, 4.25]])
    for space in ("world", "world_lps"):
        assert np.allclose(world_to_voxel(voxel_to_world(voxels, affine, space), affine, space), voxels)


def test_a_session_folder_is_json_and_safetensors_and_reads_back(tmp_path):
    tensors = {"image": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    write_session(tmp_path / "s", {"actions": []}, tensors)
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files[0].startswith("embeddings-") and files[0].endswith(".safetensors") and files[1] == SESSION_FILE
    content, back = read_session(tmp_path / "s")
    assert content["format"] == "zoo-session" and torch.equal(back["image"], tensors["image"])
    (tmp_path / "s" / files[0]).unlink()
    with pytest.raises(DataError, match="embeddings file"):
        read_session(tmp_path / "s")
    (tmp_path / "s" / SESSION_FILE).write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DataError, match="not a zoo session"):
        read_session(tmp_path / "s")
    with pytest.raises(DataError, match="session.json"):
        read_session(tmp_path / "nothing")
    assert not any(Path(tmp_path / "s").glob("*.pkl"))
