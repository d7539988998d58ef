"""The ITK arithmetic under grid3d, checked directly against SimpleITK 2.5.7 (a test oracle)."""

from __future__ import annotations

import numpy as np
import pytest

from zoo.geometry import itk_resample
from zoo.geometry.itk_inverse import itk_inverse_3x3
from zoo.geometry.itk_resample import ItkGeometry, cast_like_itk, resample_box, round_half_up

from .oracle import require


def _random_direction(rng: np.random.Generator, kind: str) -> np.ndarray:
    if kind == "oblique":
        q, r = np.linalg.qr(rng.normal(size=(3, 3)))
        return q * np.sign(np.diag(r))
    matrix = np.zeros((3, 3))
    matrix[rng.permutation(3), np.arange(3)] = rng.choice([-1.0, 1.0], 3)
    return matrix


def _simpleitk_resampled(sitk, values: np.ndarray, source: ItkGeometry, target: ItkGeometry, interpolator):
    """SimpleITK's ``ResampleImageFilter`` of ``values`` onto the whole ``target`` grid (the oracle)."""
    resampler = sitk.ResampleImageFilter()
    resampler.SetReferenceImage(_sitk_image(sitk, np.zeros(target.size, values.dtype), target))
    resampler.SetInterpolator(interpolator)
    return sitk.GetArrayFromImage(resampler.Execute(_sitk_image(sitk, values, source))).transpose()


def _sitk_image(sitk, values: np.ndarray, geometry: ItkGeometry):
    image = sitk.GetImageFromArray(values.transpose())
    image.SetOrigin(geometry.origin)
    image.SetSpacing(geometry.spacing)
    image.SetDirection(sum(geometry.direction, ()))
    return image


@pytest.mark.parametrize("kind", ["axis", "oblique"])
def test_point_to_index_inverse_is_bit_identical(kind):
    """ITK inverts ``D diag(s)`` through an SVD; its result (read back through index 0 and unit points) is
    reproduced exactly, including the 1e-16 cross terms it leaves for permuted axes."""
    sitk = require("SimpleITK")
    rng = np.random.default_rng(7 if kind == "axis" else 8)
    for _ in range(150):
        spacing = rng.uniform(0.2, 6.0, 3)
        if rng.random() < 0.5:
            spacing = np.round(spacing, 1)
        direction = _random_direction(rng, kind)
        image = sitk.Image([2, 2, 2], sitk.sitkUInt8)
        image.SetSpacing(spacing.tolist())
        image.SetDirection(direction.ravel().tolist())
        want = np.array([image.TransformPhysicalPointToContinuousIndex(e.tolist()) for e in np.eye(3)]).T
        got = np.array(itk_inverse_3x3((direction * spacing).tolist()))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("seed", range(12))
def test_resample_box_is_simpleitk(seed):
    """Random source and target grids (any directions), int16 / float32 / uint8, linear and nearest."""
    sitk = require("SimpleITK")
    rng = np.random.default_rng(seed)
    kind = "oblique" if seed % 3 == 2 else "axis"
    shape = tuple(int(n) for n in rng.integers(3, 24, 3))
    source = ItkGeometry(shape, rng.uniform(-50, 50, 3).round(2), rng.uniform(0.5, 4, 3).round(2),
                         tuple(map(tuple, _random_direction(rng, kind))))
    target_direction = source.direction if seed % 2 == 0 else tuple(map(tuple, _random_direction(rng, kind)))
    target_shape = tuple(int(n) for n in rng.integers(3, 30, 3))
    target = ItkGeometry(target_shape, np.array(source.origin) + rng.uniform(-6, 6, 3), rng.uniform(0.5, 4, 3),
                         target_direction)
    for dtype in (np.int16, np.float32, np.uint8):
        values = (rng.normal(0, 300, shape) if dtype != np.uint8 else rng.integers(0, 256, shape)).astype(dtype)
        for interpolation, itk_interpolator in (("linear", sitk.sitkLinear), ("nearest", sitk.sitkNearestNeighbor)):
            want = _simpleitk_resampled(sitk, values, source, target, itk_interpolator)
            got = resample_box(values, source, target, (0, 0, 0), target_shape, interpolation)
            assert got.dtype == want.dtype
            np.testing.assert_array_equal(got, want)


def _flips(rng: np.random.Generator) -> tuple[tuple[float, ...], ...]:
    return tuple(map(tuple, np.diag(rng.choice([-1.0, 1.0], 3))))


@pytest.mark.parametrize("seed", range(12))
def test_axis_aligned_grids_are_resampled_per_axis_where_they_can_be_and_match_simpleitk(seed, monkeypatch):
    """Axis-aligned source and target grids, nearest and linear. Where the directions only flip axes (RAS crops
    cut from or pasted back onto LPS or RAS scans) ITK's inverse holds exact zeros and each input index is
    computed once per output axis, the interpolation one axis at a time; with permuted axes it may leave 1e-16
    cross terms, and then every voxel is computed. The target box reaches past the source on every side (zeros
    there), and the half-voxel offsets make ties (nearest) and exact voxel hits (linear)."""
    sitk = require("SimpleITK")
    taken = []
    lines = itk_resample._axis_lines
    monkeypatch.setattr(itk_resample, "_axis_lines", lambda *args: taken.append(lines(*args)) or taken[-1])
    monkeypatch.setattr(itk_resample, "CHUNK_VOXELS", 60 if seed % 2 else itk_resample.CHUNK_VOXELS)  # many slabs
    rng = np.random.default_rng(100 + seed)
    shape = tuple(int(n) for n in rng.integers(4, 20, 3))
    spacing = rng.choice([0.5, 0.75, 1.0, 1.5, 2.0], 3) if seed % 2 else rng.uniform(0.4, 3, 3)
    permuted = seed >= 6
    source_direction = tuple(map(tuple, _random_direction(rng, "axis"))) if permuted else _flips(rng)
    source = ItkGeometry(shape, rng.uniform(-20, 20, 3).round(1), spacing, source_direction)
    target_shape = tuple(int(n) for n in rng.integers(10, 40, 3))
    target_spacing = rng.choice([0.5, 0.75, 1.0, 1.5], 3) if seed % 2 else rng.uniform(0.3, 2, 3)
    target_direction = _flips(rng)
    centre = np.array(source.origin) + np.array(source.index_to_point) @ ((np.array(shape) - 1) / 2)
    half = np.array(target_direction) * target_spacing @ ((np.array(target_shape) - 1) / 2)
    target_origin = centre - half + rng.choice([-0.25, 0.0, 0.25, 0.5], 3)
    target = ItkGeometry(target_shape, target_origin, target_spacing, target_direction)
    lo, hi = (1, 2, 3), tuple(n - 1 for n in target_shape)
    for dtype, interpolation, itk_interpolator in ((np.uint8, "nearest", sitk.sitkNearestNeighbor),
                                                   (np.int16, "linear", sitk.sitkLinear),
                                                   (np.float32, "linear", sitk.sitkLinear)):
        values = (rng.integers(1, 256, shape) if dtype == np.uint8 else rng.normal(0, 300, shape)).astype(dtype)
        want = _simpleitk_resampled(sitk, values, source, target, itk_interpolator)
        got = resample_box(values, source, target, (0, 0, 0), target_shape, interpolation)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
        np.testing.assert_array_equal(resample_box(values, source, target, lo, hi, interpolation),
                                      want[1:-1, 2:-1, 3:-1])
        assert (want == 0).any() and (want != 0).any()
    assert len(taken) == 6 and (permuted or all(lines is not None for lines in taken))


def test_nearest_on_oblique_grids_takes_the_per_voxel_path(monkeypatch):
    taken = []
    lines = itk_resample._axis_lines
    monkeypatch.setattr(itk_resample, "_axis_lines", lambda *args: taken.append(lines(*args)) or taken[-1])
    rng = np.random.default_rng(5)
    values = rng.integers(0, 9, (6, 7, 8)).astype(np.uint8)
    oblique = tuple(map(tuple, _random_direction(rng, "oblique")))
    source = ItkGeometry((6, 7, 8), (0.0, 0.0, 0.0), (1.0, 1.5, 2.0), oblique)
    target = ItkGeometry((9, 9, 9), (-1.0, -2.0, -3.0), (1.0, 1.0, 1.0), np.eye(3))
    resample_box(values, source, target, (0, 0, 0), (9, 9, 9), "nearest")
    assert taken == [None]


def test_resample_box_of_a_sub_box_equals_the_same_voxels_of_the_whole():
    rng = np.random.default_rng(3)
    source = ItkGeometry((9, 8, 7), (1.0, -2.0, 3.0), (1.1, 0.9, 2.0), ((0, 1, 0), (-1, 0, 0), (0, 0, 1)))
    target = ItkGeometry((12, 10, 9), (0.5, -1.0, 2.0), (0.7, 0.8, 1.3), source.direction)
    values = rng.normal(size=source.size).astype(np.float32)
    whole = resample_box(values, source, target, (0, 0, 0), target.size, "linear")
    part = resample_box(values, source, target, (2, 3, 1), (9, 10, 5), "linear")
    np.testing.assert_array_equal(part, whole[2:9, 3:10, 1:5])


def test_nearest_neighbour_ties_and_near_ties_match_simpleitk():
    """Output voxels at, and one ulp either side of, half-way positions between input voxels."""
    sitk = require("SimpleITK")
    values = np.arange(1, 9, dtype=np.int16).reshape(8, 1, 1)
    source = ItkGeometry((8, 1, 1), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
    positions = [x for k in range(7) for x in np.nextafter(k + 0.5, [-np.inf, 0.0, np.inf]) if x == x]
    positions += [-0.5, -0.49999999999999994, 7.499999999999999, 0.49999999999999994]
    for x in positions:
        target = ItkGeometry((1, 1, 1), (float(x), 0.0, 0.0), (1.0, 1.0, 1.0), np.eye(3))
        resampler = sitk.ResampleImageFilter()
        resampler.SetReferenceImage(_sitk_image(sitk, np.zeros((1, 1, 1), np.int16), target))
        resampler.SetInterpolator(sitk.sitkNearestNeighbor)
        want = sitk.GetArrayFromImage(resampler.Execute(_sitk_image(sitk, values, source)))[0, 0, 0]
        assert resample_box(values, source, target, (0, 0, 0), (1, 1, 1), "nearest")[0, 0, 0] == want, x


def test_rounding_and_casting_rules():
    np.testing.assert_array_equal(round_half_up(np.array([-0.5, 0.5, 1.5, 2.4999999999999996, 3.5000000000000004])),
                                  [0, 1, 2, 2, 4])
    np.testing.assert_array_equal(cast_like_itk(np.array([-1.7, 1.7, 40000.0, -40000.0]), np.int16),
                                  [-1, 1, 32767, -32768])
    np.testing.assert_array_equal(cast_like_itk(np.array([-3.2, 255.9, 300.0]), np.uint8), [0, 255, 255])
