"""The benchmark's ``sam_med3d`` protocol with ``large_object: follow_mask`` (paper Sec. 4.3's sliding window): each
click's mask follows the object beyond the first crop, every crop encoded once per case; an object inside one crop
gets the single-crop masks exactly; the option is part of the unit's cache key.

The model is the stand-in of ``tests/inference/test_large_objects.py``: its "embedding" is the crop itself and its
logits say whether each low-res cell lies inside a known ellipsoid, so every crop predicts the same world-fixed
object and the test knows the right answer."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from inference.test_large_objects import LARGE, SHAPE, dice, inside_ellipsoid, stand_in
from tiny_models import tiny_model

from evaluation.helpers import config
from zoo.evaluation.benchmark import ModelInfo, plan_cases, unit_key
from zoo.evaluation.cases import load_case
from zoo.evaluation.config import ModelSpec
from zoo.evaluation.encoding import EncodingCache
from zoo.evaluation.metrics import MetricSettings
from zoo.evaluation.protocols import PROTOCOLS, get_protocol, not_applicable_reason
from zoo.evaluation.runner import run_unit
from zoo.processors import processor_for

SETTINGS = MetricSettings(2.0)
CLICKS = 3
FOLLOW = {"name": "sam_med3d", "clicks": CLICKS, "large_object": "follow_mask", "max_crops": 64}
SINGLE = {"name": "sam_med3d", "clicks": CLICKS}


def dataset(root: Path, radii: tuple[float, float, float]) -> Path:
    """An nnU-Net folder with one case: the ellipsoid's smooth values as the image (what the stand-in sees) and the
    ellipsoid as label 1 (1.5 mm voxels, as the stand-in's tests: no resampling)."""
    values = inside_ellipsoid(radii)
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    labels = {"background": 0, "organ": 1}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}), encoding="utf-8")
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    nib.save(nib.Nifti1Image(values.astype(np.float32), affine), str(root / "imagesTr" / "case0_0000.nii.gz"))
    nib.save(nib.Nifti1Image((values > 0).astype(np.uint8), affine), str(root / "labelsTr" / "case0.nii.gz"))
    return root


def loaded(tmp_path_factory, name: str, radii: tuple[float, float, float]):
    root = dataset(tmp_path_factory.mktemp(name) / "dataset", radii)
    models = [{"name": "m", "create": "sam_med3d_turbo"}]
    (found,) = plan_cases(config(root.parent / "out", root, models, ["sam_med3d"]))
    return load_case(found)


@pytest.fixture(scope="module")
def large_case(tmp_path_factory):
    return loaded(tmp_path_factory, "large", LARGE)  # 60 x 44 x 34 voxels: about two 32^3 crops along each axis


@pytest.fixture(scope="module")
def small_case(tmp_path_factory):
    return loaded(tmp_path_factory, "small", (5.0, 4.0, 3.0))  # 10 x 8 x 6 voxels: inside any crop around it


def run(case, protocol):
    model, processor = stand_in()
    cache = EncodingCache(model)
    return run_unit(model, processor, case, get_protocol(protocol), SETTINGS, 7, cache, keep_masks=True)


def test_following_the_mask_recovers_a_large_object_that_one_crop_cuts(large_case):
    truth = large_case.labels["organ"].astype(bool)
    assert truth.shape == SHAPE
    single, follow = run(large_case, SINGLE), run(large_case, FOLLOW)
    # The same random first click for both (the variant's streams are seeded from sam_med3d's name).
    assert follow.prompts["organ"]["clicks"][0] == single.prompts["organ"]["clicks"][0]
    one, many = single.masks["organ"][CLICKS], follow.masks["organ"][CLICKS]
    assert dice(one, truth) < 0.8  # one 32^3 crop holds a part of it
    assert dice(many, truth) > 0.95
    assert dice(many, truth) > dice(one, truth) + 0.2
    rows = {r["step"]: r["dice"] for r in follow.rows}
    assert rows[1] > 0.95 and rows[CLICKS] == pytest.approx(dice(many, truth), abs=1e-6)
    crops = follow.prompts["organ"]["crops"]
    assert len(crops) == CLICKS and all(len(step) > 8 for step in crops) and all(follow.prompts["organ"]["complete"])
    # Later clicks come from the errors in every crop's view, here beyond the first crop (the file's voxels are the
    # resampled grid's: 1.5 mm, no reorientation), and go to the crops they fall in.
    first = crops[0][0]
    outside = [c for c in follow.prompts["organ"]["clicks"][1:] if not all(s <= x < s + 32 for x, s in zip(c, first))]
    assert outside
    # Every crop is encoded once for the case, however many clicks reuse it.
    distinct = {tuple(start) for step in crops for start in step}
    assert follow.encoder_calls == len(distinct)


def test_an_object_inside_one_crop_gets_the_single_crop_masks_exactly(small_case):
    single, follow = run(small_case, SINGLE), run(small_case, FOLLOW)
    assert follow.prompts["organ"]["clicks"] == single.prompts["organ"]["clicks"]
    assert all(len(step) == 1 for step in follow.prompts["organ"]["crops"])
    for step in single.masks["organ"]:
        assert np.array_equal(follow.masks["organ"][step], single.masks["organ"][step])
    assert single.masks["organ"][CLICKS].any()
    assert [r["dice"] for r in follow.rows] == [r["dice"] for r in single.rows]
    assert follow.encoder_calls == single.encoder_calls == 1


def test_the_option_is_named_validated_and_part_of_the_cache_key(tmp_path):
    plain, follow = get_protocol(SINGLE), get_protocol(FOLLOW)
    assert get_protocol({**SINGLE, "large_object": "single_crop"}) == plain
    assert follow.name == "sam_med3d_follow_mask" and follow.stream_name == "sam_med3d" and follow.max_crops == 64
    assert follow.steps == plain.steps and follow.table_steps == plain.table_steps
    lite = processor_for(tiny_model("litemedsam"))
    assert "3D models" in not_applicable_reason(follow, lite, "volume")  # a 2D model sees every slice whole
    for bad, match in (({**FOLLOW, "large_object": "zoom"}, "large_object"),
                       ({"name": "sam_med2d_iterative", "large_object": "follow_mask"}, "3D models only"),
                       ({**SINGLE, "max_crops": 4}, "max_crops")):
        with pytest.raises(ValueError, match=match):
            get_protocol(bad)
    # Both run side by side in one benchmark (distinct names).
    cfg = config(tmp_path / "out", tmp_path, [{"name": "m", "create": "sam_med3d_turbo"}], [SINGLE, FOLLOW])
    assert [p.name for p in cfg.protocol_list()] == ["sam_med3d", "sam_med3d_follow_mask"]
    info = ModelInfo("m", "m", "sam_med3d", "SamMed3DProcessor", "random", True, None, None, "0" * 64, 1)
    spec = ModelSpec("m", create="sam_med3d_turbo")
    keys = {unit_key(cfg, info, spec, "case", p) for p in (plain, follow, get_protocol({**FOLLOW, "max_crops": 8}))}
    assert len(keys) == 3
    # The single crop's key is the one units had before the option existed (its cache stays valid).
    before = dataclasses.asdict(plain) | {"model_dims": sorted(plain.model_dims)}
    for field in ("large_object", "max_crops", "stream"):
        before.pop(field)
    assert plain.cache_content() == before
    assert PROTOCOLS["sam_med3d"].large_object == "single_crop"
