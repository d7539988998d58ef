"""Scores against masks whose values are counted by hand (MONAI computes them; the expected numbers do not)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from zoo.evaluation.metrics import MetricSettings, dice, hd95, score, surface_dice


def squares() -> tuple[np.ndarray, np.ndarray]:
    prediction = np.zeros((10, 10), dtype=bool)
    target = np.zeros((10, 10), dtype=bool)
    prediction[2:6, 2:6] = True  # 16 pixels
    target[2:6, 3:7] = True  # 16 pixels, 12 shared
    return prediction, target


def test_dice_of_two_overlapping_squares_is_counted_by_hand():
    prediction, target = squares()
    assert dice(prediction, target) == pytest.approx(2 * 12 / (16 + 16))


@pytest.mark.parametrize("boundary", ["surfels", "voxels"])
def test_an_empty_prediction_scores_zero_and_has_no_hd95(boundary):
    _, target = squares()
    empty = np.zeros_like(target)
    scores = score(empty, target, (1.0, 1.0), MetricSettings(1.0, boundary, hd95=True))
    assert scores["dice"] == 0.0
    assert scores["nsd"] == 0.0
    assert math.isnan(scores["hd95"])


def test_two_empty_masks_agree_but_have_no_surface():
    empty = np.zeros((4, 5, 6), dtype=bool)
    scores = score(empty, empty, (1.0, 1.0, 1.0), MetricSettings(1.0, hd95=True))
    assert scores["dice"] == 1.0
    assert math.isnan(scores["nsd"]) and math.isnan(scores["hd95"])


@pytest.mark.parametrize("boundary", ["surfels", "voxels"])
def test_a_one_voxel_label_found_exactly(boundary):
    label = np.zeros((5, 6, 7), dtype=bool)
    label[2, 3, 4] = True
    scores = score(label.copy(), label, (2.0, 1.0, 3.0), MetricSettings(0.5, boundary, hd95=True))
    assert scores == {"dice": 1.0, "nsd": 1.0, "hd95": 0.0}


def test_a_one_voxel_label_missed_by_three_voxels_along_a_2_mm_axis():
    label = np.zeros((8, 5, 5), dtype=bool)
    label[1, 2, 2] = True
    prediction = np.zeros_like(label)
    prediction[4, 2, 2] = True  # 3 voxels x 2 mm = 6 mm away
    spacing = (2.0, 1.0, 1.0)
    assert dice(prediction, label) == 0.0
    assert hd95(prediction, label, spacing) == pytest.approx(6.0)
    assert surface_dice(prediction, label, 5.0, spacing, "voxels") == 0.0  # 6 mm > 5 mm
    assert surface_dice(prediction, label, 7.0, spacing, "voxels") == 1.0  # 6 mm <= 7 mm


def test_spacing_counts_per_axis():
    label = np.zeros((6, 6), dtype=bool)
    label[1, 1] = True
    prediction = np.zeros_like(label)
    prediction[1, 3] = True  # two pixels along the second axis
    assert hd95(prediction, label, (1.0, 4.0)) == pytest.approx(8.0)
    assert hd95(prediction, label, (4.0, 1.0)) == pytest.approx(2.0)


def test_masks_on_different_grids_are_refused():
    with pytest.raises(ValueError, match="not on one grid"):
        score(np.zeros((3, 3), bool), np.zeros((3, 4), bool), (1.0, 1.0), MetricSettings(1.0))
    with pytest.raises(ValueError, match="positive"):
        MetricSettings(0.0)
