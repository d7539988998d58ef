"""The app's logic without a browser: files it accepts, clicks on each view reaching the session as the voxel shown,
per-slice sessions of a 2D model on a volume, undo/reset, the random-weights notice and the exported geometry."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image
from tiny_models import tiny_model

from zoo.app.views import VIEWS
from zoo.app.workspace import ModelCache, Workspace, check_file
from zoo.errors import DataError
from zoo.io.nifti import load_label
from zoo.resources import data_path

CT = data_path("totalseg_example", "ct.nii.gz")
PNG = data_path("sam_med2d_demo", "images", "amos_0004_75.png")
LIVER = 5


def test_only_readable_types_below_the_size_limit_are_opened(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(DataError, match=r"\.nii\.gz, \.nii, \.png"):
        check_file(text, 10)
    with pytest.raises(DataError, match="file not found"):
        check_file(tmp_path / "missing.nii.gz", 10)
    with pytest.raises(DataError, match="above the app's limit of 0.001 MB"):
        check_file(CT, 0.001)
    assert check_file(CT, 10) == CT


@pytest.fixture(scope="module")
def tiny_3d():
    return ModelCache(lambda name: tiny_model("sam_med3d_turbo"))


def _write_volume(path: Path) -> Path:
    """A non-isotropic volume stored L-S-P (not RAS), with a bright block to click on."""
    affine = np.array([[-1.5, 0, 0, 30.0], [0, 0, -0.8, 10.0], [0, 4.0, 0, -20.0], [0, 0, 0, 1]])
    rng = np.random.default_rng(0)
    array = rng.normal(0, 10, (40, 14, 36)).astype(np.float32)
    array[15:25, 5:9, 12:24] += 300
    nib.save(nib.Nifti1Image(array, affine), str(path))
    return path


def test_a_3d_model_gets_the_voxel_under_each_click_and_the_export_keeps_the_geometry(tiny_3d, tmp_path) -> None:
    volume = _write_volume(tmp_path / "block.nii.gz")
    ws = Workspace(tiny_3d, "tiny", temp_dir=tmp_path / "app")
    assert ws.model.random and "RANDOM weights" in ws.model.notice
    ws.open(volume)
    geometry = ws.image.geometry
    target = (20, 7, 18)
    for number, view in enumerate(VIEWS, start=1):
        index, row, col = geometry.voxel_to_pixel(view, target)
        ws.set_slice(view, index)
        outcome = ws.click(view, *geometry.pixel_to_display(view, row, col))
        assert not outcome.error, outcome.message
        assert ws.sessions["volume"].actions[-1].coords == tuple(float(v) for v in target), view
        assert len(ws.history) == number
    assert "latency" in ws.status() and "prompts: 3" in ws.status()
    mask = ws.mask()
    assert mask.shape == (40, 14, 36)
    ws.undo()
    assert len(ws.history) == 2 and len(ws.sessions["volume"].actions) == 2
    written = ws.export()
    assert written.parent.parent.parent == tmp_path / "app"
    saved, source = nib.load(str(written)), nib.load(str(volume))
    assert saved.shape == source.shape
    np.testing.assert_array_equal(saved.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(saved.dataobj) > 0, ws.mask())
    ws.reset()
    assert not ws.mask().any() and "prompts: 0" in ws.status()


def test_a_3d_model_refuses_a_2d_image_and_a_box_with_a_message(tiny_3d, tmp_path) -> None:
    ws = Workspace(tiny_3d, "tiny", temp_dir=tmp_path)
    ws.open(PNG)
    outcome = ws.click("image", 100, 100)
    assert outcome.error and "3D model" in outcome.message
    ws.open(_write_volume(tmp_path / "block.nii.gz"))
    ws.set_mode("box (two clicks)")
    assert not ws.click("axial", 10, 10).error  # the first corner
    outcome = ws.click("axial", 30, 30)
    assert outcome.error and "not boxes" in outcome.message
    assert not ws.history


@pytest.fixture(scope="module")
def litemedsam():
    return ModelCache()


def _box_on(ws: Workspace, view: str, mask: np.ndarray) -> None:
    geometry = ws.image.geometry
    rows, cols = np.nonzero(mask)
    ws.set_mode("box (two clicks)")
    for row, col in ((rows.min(), cols.min()), (rows.max(), cols.max())):
        outcome = ws.click(view, *geometry.pixel_to_display(view, row, col))
        assert not outcome.error, outcome.message


def test_litemedsam_on_ct_slices_undo_reset_and_export(litemedsam, tmp_path: Path) -> None:
    """The released LiteMedSAM: a box on an axial slice segments the liver there; a box on a coronal slice adds
    that slice's mask; undo takes it back exactly; the export has the CT's shape and affine."""
    ws = Workspace(litemedsam, "litemedsam", temp_dir=tmp_path)
    assert not ws.model.random and "RANDOM" not in ws.model.notice
    ws.open(CT)
    assert ws.window.startswith("abdomen")
    geometry = ws.image.geometry
    liver = geometry.to_ras(load_label(data_path("totalseg_example", "labels.nii.gz")).array == LIVER)
    axial = ws.slices["axial"]
    truth = geometry.extract(liver, "axial", axial)
    _box_on(ws, "axial", truth)
    shown = geometry.extract(geometry.to_ras(ws.mask()), "axial", axial)
    assert 2 * (shown & truth).sum() / (shown.sum() + truth.sum()) > 0.85
    after_axial = ws.mask().copy()
    assert after_axial.sum() == shown.sum()  # one slice only

    coronal = int(np.argmax(liver.sum(axis=(0, 2))))
    coronal_index = geometry.voxel_to_pixel("coronal", geometry.from_ras_index((0, coronal, 0)))[0]
    ws.set_slice("coronal", coronal_index)
    _box_on(ws, "coronal", geometry.extract(liver, "coronal", coronal_index))
    assert set(ws.sessions) == {("axial", axial, ws.window), ("coronal", coronal_index, ws.window)}
    both = ws.mask()
    assert both.sum() > after_axial.sum()
    ws.undo()
    np.testing.assert_array_equal(ws.mask(), after_axial)

    written = ws.export()
    saved, source = nib.load(str(written)), nib.load(str(CT))
    assert written.name == "ct_mask.nii.gz" and saved.shape == source.shape
    np.testing.assert_array_equal(saved.affine, source.affine)
    np.testing.assert_array_equal(np.asarray(saved.dataobj) > 0, after_axial)
    ws.reset()
    assert not ws.mask().any()


def test_litemedsam_box_on_a_png_exports_a_png_of_its_size(litemedsam, tmp_path: Path) -> None:
    ws = Workspace(litemedsam, "litemedsam", temp_dir=tmp_path)
    ws.open(PNG)
    truth = np.zeros((512, 512), dtype=bool)
    truth[230:301, 150:231] = True  # the README's box (150, 230, 230, 300)
    _box_on(ws, "image", truth)
    assert ws.sessions["image"].actions[-1].coords == (150.0, 230.0, 230.0, 300.0)
    written = ws.export()
    saved = np.asarray(Image.open(written))
    assert written.name == "amos_0004_75_mask.png" and saved.shape == (512, 512)
    np.testing.assert_array_equal(saved > 0, ws.mask())
    assert ws.mask().sum() > 500
