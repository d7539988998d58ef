"""2D models on volumes (zoo.inference.volume2d with zoo.data.predict.read_volume_slices): the slices and their exact
inverse on any orientation, the 3D box in file voxels, a box on one slice followed beyond it, and the released
LiteMedSAM on the bundled CT's liver through propagate_box."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import zoo
from tiny_models import mark_whole_input, tiny_model
from zoo.data.predict import read_volume_slices
from zoo.data.slicer import extract_slice, to_ras
from zoo.inference.volume2d import segment_volume
from zoo.io.nifti import load_image
from zoo.resources import data_path

pytestmark = pytest.mark.filterwarnings("ignore::zoo.inference.predictor.RandomWeightsWarning")

CT = data_path("totalseg_example", "ct.nii.gz")
LABELS = data_path("totalseg_example", "labels.nii.gz")
LIVER = 5


def oblique_volume(path: Path) -> Path:
    """A 5 x 6 x 7 volume stored L-P-I with its axes permuted, every voxel a distinct value."""
    values = np.arange(5 * 6 * 7, dtype=np.float32).reshape(5, 6, 7)
    affine = np.array([[0.0, 0.0, -2.0, 10.0], [-1.5, 0.0, 0.0, 5.0], [0.0, -3.0, 0.0, 7.0], [0.0, 0.0, 0.0, 1.0]])
    nib.save(nib.Nifti1Image(values, affine), str(path))
    return path


@pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
def test_voxels_map_to_the_slicers_pixels_and_back(plane, tmp_path):
    path = oblique_volume(tmp_path / "v.nii.gz")
    slices = read_volume_slices(path, plane, window=(0.0, 255.0))
    values = np.asarray(nib.load(path).dataobj)
    grey = to_ras(load_image(path))
    shown = np.stack([extract_slice(grey, plane, z) for z in range(len(slices.images))])
    rng = np.random.default_rng(0)
    for voxel in rng.integers(0, [5, 6, 7], size=(20, 3)):
        col, row, z = slices.display_index(voxel[None])[0].astype(int)
        assert shown[z, row, col] == values[tuple(voxel)]  # the pixel that shows this voxel
        one_hot = np.zeros(slices.images.shape, dtype=bool)
        one_hot[z, row, col] = True
        back = slices.to_file(one_hot)
        assert back.shape == (5, 6, 7) and back[tuple(voxel)] and back.sum() == 1


def test_the_3d_box_in_file_voxels_becomes_the_slices_box(tmp_path):
    slices = read_volume_slices(oblique_volume(tmp_path / "v.nii.gz"), "axial", window=(0.0, 255.0))
    box = slices.box_on_slices([1, 2, 3, 3, 4, 5])
    corners = slices.display_index(np.array([[1, 2, 3], [3, 4, 5]]))
    assert box[:3] == tuple(corners.min(axis=0)) and box[3:] == tuple(corners.max(axis=0))
    with pytest.raises(zoo.errors.DataError, match="not inside"):
        slices.box_on_slices([1, 2, 3, 9, 4, 5])


def test_a_box_on_one_slice_follows_the_object_while_the_masks_last():
    slices = read_volume_slices(CT, "axial", window=(-160, 240))
    net = mark_whole_input(tiny_model("litemedsam"), +1.0)  # every mask is the whole slice
    one_slice = segment_volume(net, slices, [40, 30, 12, 90, 80, 12])
    assert sorted(one_slice.slices) == list(range(30))  # from slice 12 up to the top and down to the bottom
    assert one_slice.mask.shape == (122, 101, 30) and one_slice.mask.all()
    boxed = segment_volume(net, slices, [40, 30, 10, 90, 80, 14])  # a 3D box bounds the slices (the authors')
    assert sorted(boxed.slices) == list(range(10, 15))
    assert boxed.mask[:, :, 10:15].all() and not boxed.mask[:, :, :10].any() and not boxed.mask[:, :, 15:].any()
    empty = segment_volume(mark_whole_input(tiny_model("litemedsam"), -1.0), slices, [40, 30, 12, 90, 80, 12])
    assert empty.slices == [12] and not empty.mask.any()


def test_the_released_litemedsam_segments_the_liver_over_every_slice_it_spans():
    labels = np.asarray(nib.load(LABELS).dataobj) == LIVER
    found = np.nonzero(labels)
    box = [int(i.min()) for i in found] + [int(i.max()) for i in found]
    slices = read_volume_slices(CT, "axial", window=(-160, 240))  # MedSAM's abdomen window, L40 W400
    result = segment_volume(zoo.from_pretrained("litemedsam"), slices, box)
    spanned = sorted({int(k) for k in found[2]})
    assert sorted(result.slices) == spanned
    assert all(result.mask[:, :, k].any() for k in spanned)
    dice = 2.0 * (result.mask & labels).sum() / (result.mask.sum() + labels.sum())
    print(f"liver Dice through propagate_box: {dice:.4f} over {len(spanned)} slices")
    assert dice > 0.85  # 0.906 measured (torch 2.14.1, CPU)


@pytest.mark.parametrize("family", ["sam_med2d_b", "sam_vit_b", "sam_unet_r34", "litemedsam"])
def test_every_2d_family_segments_a_volume_slice_by_slice(family):
    slices = read_volume_slices(CT, "coronal", window=(-160, 240))  # coronal: 30 x 122 slices of 101
    result = segment_volume(tiny_model(family), slices, [40, 50, 5, 90, 52, 25])  # j 50..52: 3 coronal slices
    assert sorted(result.slices) == [50, 51, 52] and result.plane == "coronal"
    assert result.mask.shape == (122, 101, 30) and not result.mask[:, :50].any() and not result.mask[:, 53:].any()
