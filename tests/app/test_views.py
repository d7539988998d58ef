"""The app's views: a click on any displayed pixel of any view lands on the voxel drawn there, for files in any
orientation and with non-isotropic voxels; the views follow the radiological display of ``zoo predict``'s slices."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from zoo.app.views import (
    PLANES,
    VIEWS,
    ImageGeometry,
    Marker,
    VolumeGeometry,
    draw_markers,
    overlay,
    to_uint8,
)
from zoo.data.slicer import extract_slice

SHAPE = (7, 5, 4)


def _affine(codes: tuple[str, str, str], spacing: tuple[float, float, float]) -> np.ndarray:
    """An affine whose voxel axes point along ``codes`` (e.g. ("L", "S", "P")) with ``spacing`` mm."""
    affine = np.eye(4)
    affine[:3, :3] = 0
    for axis, code in enumerate(codes):
        ras_axis, sign = {"R": (0, 1), "L": (0, -1), "A": (1, 1), "P": (1, -1), "S": (2, 1), "I": (2, -1)}[code]
        affine[ras_axis, axis] = sign * spacing[axis]
    affine[:3, 3] = (12.0, -30.0, 7.5)
    return affine


ORIENTATIONS = [("R", "A", "S"), ("L", "P", "S"), ("L", "S", "P"), ("I", "R", "A"), ("P", "I", "L")]
SPACINGS = [(1.0, 1.0, 1.0), (0.7, 0.7, 5.0), (3.0, 0.5, 1.5)]


def _coded(shape: tuple[int, int, int]) -> np.ndarray:
    """A volume whose voxel (i, j, k) holds i * 10000 + j * 100 + k."""
    i, j, k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    return (i * 10000 + j * 100 + k).astype(np.int64)


def _decode(value: int) -> tuple[int, int, int]:
    return value // 10000, (value // 100) % 100, value % 100


@pytest.mark.parametrize(("codes", "spacing"), list(itertools.product(ORIENTATIONS, SPACINGS)))
def test_a_click_lands_on_the_voxel_drawn_under_it(codes, spacing) -> None:
    geometry = VolumeGeometry(SHAPE, _affine(codes, spacing), display_size=24)
    coded = geometry.to_ras(_coded(SHAPE))
    for view in VIEWS:
        for index in range(geometry.slice_count(view)):
            picture = geometry.stretch(view, geometry.extract(coded, view, index))
            height, width = geometry.display_shape(view)
            assert picture.shape == (height, width)
            for y, x in itertools.product(range(height), range(width)):
                assert geometry.to_voxel(view, index, x, y) == _decode(int(picture[y, x])), (view, index, x, y)


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_views_are_radiological_in_any_file_orientation(codes) -> None:
    """Axial: anterior at the top, the patient's right on the left; coronal: superior at the top, right on the
    left; sagittal: superior at the top, anterior on the left (world RAS mm of the voxel under each pixel)."""
    affine = _affine(codes, (0.7, 1.3, 4.0))
    geometry = VolumeGeometry(SHAPE, affine)

    def world(view: str, row: int, col: int) -> np.ndarray:
        voxel = geometry.pixel_to_voxel(view, 1, row, col)
        return (affine @ np.array([*voxel, 1.0]))[:3]

    expected = {"axial": (1, 0), "coronal": (2, 0), "sagittal": (2, 1)}  # world axis falling down rows, along cols
    for view, (down, across) in expected.items():
        rows, cols = geometry.view_shape(view)
        assert world(view, rows - 1, 0)[down] < world(view, 0, 0)[down], view
        assert world(view, 0, cols - 1)[across] < world(view, 0, 0)[across], view
        # moving within the view never leaves the slice: the sliced world axis stays put
        sliced = PLANES[view][0]
        assert world(view, rows - 1, cols - 1)[sliced] == pytest.approx(world(view, 0, 0)[sliced])


@pytest.mark.parametrize("codes", ORIENTATIONS)
def test_views_match_the_slices_zoo_predict_gives_2d_models(codes) -> None:
    from zoo.io.nifti import Volume

    affine = _affine(codes, (0.7, 0.7, 5.0))
    array = _coded(SHAPE)
    geometry = VolumeGeometry(SHAPE, affine)
    ras_by_slicer = nib.orientations.apply_orientation(array, nib.orientations.ornt_transform(
        nib.orientations.io_orientation(affine), nib.orientations.axcodes2ornt(("R", "A", "S"))))
    assert np.array_equal(geometry.to_ras(Volume(array, affine, None).array), ras_by_slicer)
    for view in VIEWS:
        for index in range(geometry.slice_count(view)):
            assert np.array_equal(geometry.extract(ras_by_slicer, view, index),
                                  extract_slice(ras_by_slicer, view, index))


def test_non_isotropic_voxels_are_shown_in_their_true_proportions() -> None:
    """0.7 x 0.7 x 5 mm: the coronal and sagittal views are stretched along rows (superior-inferior), and a
    click on any screen row of one stretched voxel row returns that voxel."""
    shape = (100, 80, 12)
    geometry = VolumeGeometry(shape, _affine(("R", "A", "S"), (0.7, 0.7, 5.0)), display_size=448)
    height, width = geometry.display_shape("coronal")
    assert height / width == pytest.approx((12 * 5.0) / (100 * 0.7), rel=0.02)
    assert geometry.display_shape("axial")[0] / geometry.display_shape("axial")[1] == pytest.approx(80 / 100, rel=0.02)
    per_slice = height / 12  # screen pixels per 5 mm voxel
    assert per_slice > 3
    for y in range(height):
        row = geometry.display_to_pixel("coronal", 10, y)[0]
        assert row == min(11, int((y + 0.5) / per_slice))
        assert geometry.to_voxel("coronal", 40, 10, y)[2] == 11 - row  # superior (k = 11) at the top
        assert geometry.to_voxel("coronal", 40, 10, y)[1] == 40


def test_pixels_and_voxels_round_trip() -> None:
    geometry = VolumeGeometry(SHAPE, _affine(("P", "I", "L"), (3.0, 0.5, 1.5)))
    for voxel in itertools.product(*(range(n) for n in SHAPE)):
        for view in VIEWS:
            index, row, col = geometry.voxel_to_pixel(view, voxel)
            assert geometry.pixel_to_voxel(view, index, row, col) == voxel
            x, y = geometry.pixel_to_display(view, row, col)
            assert geometry.to_voxel(view, index, x, y) == voxel


def test_insert_is_the_inverse_of_extract() -> None:
    geometry = VolumeGeometry(SHAPE, _affine(("L", "S", "P"), (1.0, 2.0, 3.0)))
    ras = geometry.to_ras(_coded(SHAPE))
    for view in VIEWS:
        copy = np.zeros_like(ras)
        for index in range(geometry.slice_count(view)):
            geometry.insert(copy, view, index, geometry.extract(ras, view, index))
        assert np.array_equal(copy, ras)
    assert np.array_equal(geometry.from_ras(ras), _coded(SHAPE))


def test_a_2d_image_maps_screen_pixels_to_image_pixels() -> None:
    geometry = ImageGeometry((512, 256), display_size=448)
    assert geometry.display_shape() == (512, 256)  # never shrunk: every pixel can be clicked
    assert geometry.display_to_pixel("image", 0, 0) == (0, 0)
    assert geometry.display_to_pixel("image", 255, 511) == (511, 255)
    small = ImageGeometry((100, 50), display_size=400)
    assert small.display_shape() == (400, 200)
    for row, col in itertools.product(range(100), range(50)):
        assert small.display_to_pixel("image", *small.pixel_to_display("image", row, col)) == (row, col)
    assert small.display_to_pixel("image", 3, 7) == (1, 0)


def test_overlay_windows_and_markers() -> None:
    grey = to_uint8(np.linspace(-1000, 1000, 100).reshape(10, 10), (-160.0, 240.0))
    assert grey.min() == 0 and grey.max() == 255
    mask = np.zeros((10, 10), dtype=bool)
    mask[3:7, 3:7] = True
    picture = overlay(grey, mask)
    assert picture.shape == (10, 10, 3)
    assert np.array_equal(picture[~mask], np.repeat(grey[~mask][:, None], 3, axis=1))
    assert (picture[mask] != np.repeat(grey[mask][:, None], 3, axis=1)).any(axis=1).all()
    geometry = ImageGeometry((10, 10), display_size=100)
    big = geometry.stretch("image", picture)
    drawn = draw_markers(big, [Marker("image", 0, ((5, 5),)), Marker("image", 0, ((1, 1), (8, 8)), kind="box")],
                         geometry, "image")
    assert tuple(drawn[55, 55]) == (0, 230, 0)  # the positive click's dot
    assert tuple(drawn[15, 50]) == (255, 230, 0)  # the box's top edge
