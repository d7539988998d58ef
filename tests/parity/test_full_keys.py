"""Full-size key sets: a checkpoint with exactly upstream's keys and shapes converts and loads strictly.

For every ``full_keys.json`` under the fixture roots (``$ZOO_PARITY_DIR``, default ``../shared/parity``, and
``$ZOO_PARITY_PENDING_DIR``, default ``../shared/parity-pending``; a missing parity root fails under ``CI=true``), the
released model is built at full size, an official-format file is written with exactly those keys and shapes
(random values, wrapped the way the authors' training script wraps them), and ``zoo convert`` (model inferred
from the keys) plus ``zoo.from_pretrained`` must load it strictly and carry every value to the right tensor.
"""

import argparse
import gc
import json

import pytest
import torch

import zoo
from zoo.hub import convert, read_state_dict
from zoo.hub.loading import state_dict_mismatches

from .harness import fixture_roots, in_ci

FULL_KEYS_FILE = "full_keys.json"

#: The released model a key map describes: one map per family file, or one per variant (SAM-UNet's file).
RELEASED_MODEL = {
    "sam_med3d": "sam_med3d_turbo",
    "sam_med2d": "sam_med2d_b",
    "res34_sam_unet": "sam_unet_r34",
    "res50_sam_unet": "sam_unet_r50",
}


def wrap_like_sam_med3d(state_dict):
    """SAM-Med3D's train.py: weights under ``model_state_dict`` beside the training state and argparse args."""
    return {
        "epoch": 200,
        "model_state_dict": state_dict,
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 8e-4, "params": [0]}]},
        "lr_scheduler_state_dict": {"milestones": {120: 1, 180: 1}, "last_epoch": 200},
        "losses": [0.5],
        "dices": [0.8],
        "best_loss": 0.5,
        "best_dice": 0.8,
        "args": argparse.Namespace(model_type="vit_b_ori", lr=8e-4),
        "used_datas": [],
    }


def wrap_like_sam_med2d(state_dict):
    """SAM-Med2D's and SAM-UNet's train.py: weights under ``model`` beside a whole pickled optimizer object."""
    return {"model": state_dict, "optimizer": torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)}


OFFICIAL_WRAPPING = {
    "sam_med3d": wrap_like_sam_med3d,
    "sam_med2d": wrap_like_sam_med2d,
    "sam_unet": wrap_like_sam_med2d,
}


def key_maps():
    """``(family, map name, {key: shape})`` for every key map in every full_keys.json of every fixture root."""
    params = []
    for root in fixture_roots():
        if not root.path.is_dir():
            if not root.pending:  # the released key sets live in the parity root; its absence is reported
                params.append(pytest.param(root.missing_reason(), id="missing-parity-root"))
            continue
        for path in sorted(root.path.rglob(FULL_KEYS_FILE)):
            family = path.relative_to(root.path).parts[0]
            content = json.loads(path.read_text())
            maps = {family: content["keys"]} if "keys" in content else content
            params += [pytest.param((family, name, keys), id=f"{family}/{name}") for name, keys in maps.items()]
    if not params:
        params.append(pytest.param(f"no {FULL_KEYS_FILE} under {[str(r.path) for r in fixture_roots()]}", id="none"))
    return params


def random_weights(key_shapes):
    generator = torch.Generator().manual_seed(0)
    return {
        key: torch.zeros(shape, dtype=torch.long)
        if key.endswith("num_batches_tracked")
        else torch.randn(shape, generator=generator)
        for key, shape in key_shapes.items()
    }


@pytest.mark.parity
@pytest.mark.full_size
@pytest.mark.slow
@pytest.mark.parametrize("key_map", key_maps())
def test_full_size_official_checkpoint_converts_and_loads_strictly(key_map, tmp_path, record_property):
    if isinstance(key_map, str):  # no key map to load: a missing fixture root, or none holds a full_keys.json
        if in_ci():
            pytest.fail(f"{key_map}; under CI=true the fixtures must be present")
        pytest.skip(key_map)
    family, map_name, key_shapes = key_map
    assert map_name in RELEASED_MODEL, f"{map_name}: no released model is known for this key map"
    model_name = RELEASED_MODEL[map_name]
    if model_name not in zoo.list_models():
        pytest.skip(f"{model_name} is not registered yet")

    source = tmp_path / f"{model_name}.pth"
    torch.save(OFFICIAL_WRAPPING[family](random_weights(key_shapes)), source)
    gc.collect()

    conversion = convert(source, tmp_path / "hub")  # the model is inferred from the keys and shapes
    assert conversion.model_name == model_name
    model = zoo.from_pretrained(tmp_path / "hub")

    official, _ = read_state_dict(source)
    adapt = getattr(model, "adapt_official_state_dict", None)
    expected = adapt(official) if callable(adapt) else official
    assert state_dict_mismatches(model.state_dict(), expected) == []
    loaded = model.state_dict()
    wrong_values = [key for key in expected if not torch.equal(loaded[key], expected[key])]
    assert not wrong_values, f"values not carried to their keys: {wrong_values[:5]}"
    record_property("state_dict_elements", sum(t.numel() for t in loaded.values()))
    record_property("parameters", sum(p.numel() for p in model.parameters()))
