"""One unit (model x case x protocol) through the processors: the same prompts for every model, clicks from the
error region, 2D masks stacked back onto the file's grid, and one image encoding per image however many clicks."""

from __future__ import annotations

import numpy as np
import pytest
from evaluation.helpers import SPACING, config, label_volume, write_dataset
from tiny_models import mark_whole_input, tiny_model
from zoo.evaluation.benchmark import plan_cases
from zoo.evaluation.cases import load_case
from zoo.evaluation.encoding import EncodingCache
from zoo.evaluation.metrics import MetricSettings
from zoo.evaluation.protocols import get_protocol
from zoo.evaluation.runner import run_unit
from zoo.processors import processor_for

SETTINGS = MetricSettings(2.0)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    root = write_dataset(tmp_path_factory.mktemp("data") / "dataset")
    (found,) = plan_cases(config(root.parent / "out", root, [{"name": "m", "create": "litemedsam"}], ["sam_med3d"]))
    return load_case(found)


def run(model, case, protocol, seed=7):
    model = model.eval()
    return run_unit(model, processor_for(model), case, get_protocol(protocol), SETTINGS, seed, EncodingCache(model))


def test_the_case_holds_the_named_classes_and_skips_the_absent_one(case):
    assert [t.name for t in case.case.targets] == ["organ", "vessel"]
    assert case.case.skipped == (("absent", "class absent (label 3) is empty in case0.nii.gz"),)
    assert case.spacing == pytest.approx(SPACING)


def test_two_models_on_one_protocol_get_the_same_prompts(case):
    first, second = tiny_model("litemedsam", seed=0), tiny_model("litemedsam", seed=1)
    clicks = [run(m, case, {"name": "sam_med3d", "clicks": 3}) for m in (first, second)]
    for target in ("organ", "vessel"):
        one, two = clicks[0].prompts[target], clicks[1].prompts[target]
        assert one.keys() == two.keys() and len(one) >= 4  # one click loop per slice holding the target
        assert all(one[z][0] == two[z][0] for z in one)  # the first click of every slice
        assert all(click[-1] == 1 for z in one for click in one[z][:1])
    points = [run(m, case, "sam_med2d_points") for m in (first, second)]
    assert points[0].prompts == points[1].prompts  # non-iterative point sets: all identical
    boxes = [run(tiny_model(name), case, "sam_med2d_box") for name in ("sam_med2d_b", "sam_unet_r34")]
    assert boxes[0].prompts == boxes[1].prompts  # the same box for both families (both write max + 1)
    other_seed = run(first, case, "sam_med2d_points", seed=8)
    assert other_seed.prompts != points[0].prompts


def test_clicks_after_the_first_come_from_the_error_region(case):
    everything = mark_whole_input(tiny_model("litemedsam"), +1.0)  # every mask is the whole slice
    outcome = run(everything, case, {"name": "sam_med3d", "clicks": 3})
    for target, per_slice in outcome.prompts.items():
        for clicks in per_slice.values():
            assert clicks[0][-1] == 1  # a random foreground pixel
            assert [c[-1] for c in clicks[1:]] == [0, 0]  # only false positives are left: background clicks


def test_2d_masks_are_stacked_back_onto_the_files_own_grid(case):
    # Every mask is the whole slice, so the stacked prediction is every voxel of each axial slice that holds the
    # target. Axial slices are the FIRST file axis here (see helpers.AFFINE), counted independently of the zoo.
    everything = mark_whole_input(tiny_model("litemedsam"), +1.0)
    outcome = run_unit(everything, processor_for(everything), case, get_protocol("litemedsam_box"), SETTINGS, 0,
                       EncodingCache(everything), keep_masks=True)
    label = label_volume()
    for target, value in (("organ", 1), ("vessel", 2)):
        holding = (label == value).any(axis=(1, 2))
        expected = np.zeros(label.shape, dtype=bool)
        expected[holding] = True
        predicted = outcome.masks[target][1]
        assert predicted.shape == label.shape
        assert np.array_equal(predicted, expected)
        truth = label == value
        row = next(r for r in outcome.rows if r["target"] == target)
        assert row["dice"] == pytest.approx(2 * (expected & truth).sum() / (expected.sum() + truth.sum()), abs=1e-6)


def count_encodings(model):
    calls = {"n": 0}
    original = model.encode_image

    def counted(batch):
        calls["n"] += 1
        return original(batch)

    model.encode_image = counted
    return calls


def test_clicks_cost_no_image_encoding(case):
    label = label_volume()
    slices_holding_a_target = int((label > 0).any(axis=(1, 2)).sum())
    for clicks in (1, 4):
        model = tiny_model("litemedsam")
        calls = count_encodings(model)
        outcome = run(model, case, {"name": "sam_med3d", "clicks": clicks})
        assert calls["n"] == slices_holding_a_target == outcome.encoder_calls  # each slice once, for both targets
    model = tiny_model("sam_med3d_turbo")
    calls = count_encodings(model)
    outcome = run(model, case, {"name": "sam_med3d", "clicks": 4})
    assert calls["n"] == 2  # one crop per target, around its first click; 3 more clicks each decode only
    assert len(outcome.rows) == 2 * 4
    assert all(len(p["clicks"]) >= 1 for p in outcome.prompts.values())


def test_a_3d_model_is_scored_on_the_files_grid(case):
    model = tiny_model("sam_med3d_turbo")
    outcome = run_unit(model, processor_for(model), case, get_protocol({"name": "sam_med3d", "clicks": 2}), SETTINGS,
                       7, EncodingCache(model), keep_masks=True)
    assert outcome.masks["organ"][2].shape == label_volume().shape  # pasted back onto the file's voxels
    assert {r["step"] for r in outcome.rows} == {1, 2}
