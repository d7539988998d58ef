"""The Hugging Face Hub format: save/load round trips, offline cache, and push/pull against a local Hub server."""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file

import zoo
from zoo.hub import CheckpointError
from zoo.models.sam_med3d import SamMed3D

from .fake_hub import FakeHub
from .tiny_configs import TINY_3D


HERE = Path(__file__).parent


def predict(model):
    torch.manual_seed(0)
    config = model.config
    spatial = (config.image_size,) * (3 if model.family == "sam_med3d" else 2)
    images = torch.randn(2, config.in_chans, *spatial)
    coords = torch.tensor([[[5.0, 9.0, 20.0]], [[1.0, 2.0, 3.0]]])[..., : len(spatial)]
    with torch.no_grad():
        prediction = model(images, points=(coords, torch.tensor([[1], [0]])), multimask_output=True)
    return prediction.low_res_logits, prediction.iou_predictions


def assert_same_predictions(a, b):
    for x, y in zip(predict(a), predict(b)):
        assert torch.equal(x, y)


@pytest.mark.parametrize("model_fixture", ["med3d", "med2d"])
def test_save_then_load_gives_identical_outputs(model_fixture, request, tmp_path):
    model = request.getfixturevalue(model_fixture)
    model.save_pretrained(tmp_path / "saved")
    loaded = zoo.from_pretrained(tmp_path / "saved")
    assert type(loaded) is type(model)
    assert loaded.config == model.config
    assert not loaded.training
    assert_same_predictions(loaded, model)


def test_the_config_round_trips_with_tuples_restored(med3d, tmp_path):
    med3d.save_pretrained(tmp_path)
    loaded = SamMed3D.from_pretrained(tmp_path)
    assert loaded.config.global_attn_indexes == TINY_3D["global_attn_indexes"]
    assert isinstance(loaded.config.global_attn_indexes, tuple)


def test_a_folder_of_another_family_is_refused_by_a_family_class(med2d, tmp_path):
    med2d.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="config.json is for family 'sam_med2d', not 'sam_med3d'"):
        SamMed3D.from_pretrained(tmp_path)


def test_unknown_config_fields_are_an_error_not_dropped(med3d, tmp_path):
    med3d.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "invented_field": 1}))
    with pytest.raises(ValueError, match="does not know: invented_field"):
        zoo.from_pretrained(tmp_path)


def test_loading_a_folder_is_strict(med3d, tmp_path):
    med3d.save_pretrained(tmp_path)
    weights = load_file(tmp_path / "model.safetensors")
    weights.pop("mask_decoder.iou_token.weight")
    save_file(weights, tmp_path / "model.safetensors")
    expected = r"model\.safetensors: does not fit SamMed3D: 1 missing key \(mask_decoder\.iou_token\.weight\)"
    with pytest.raises(CheckpointError, match=expected):
        zoo.from_pretrained(tmp_path)


def test_a_folder_without_config_is_not_a_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        zoo.from_pretrained(tmp_path)


def populate_hub_cache(cache, repo_id, folder, revision="0123456789abcdef0123456789abcdef01234567"):
    """The cache layout hf_hub_download reads: refs/main -> snapshots/<revision>/<files>."""
    repo_dir = cache / f"models--{repo_id.replace('/', '--')}"
    (repo_dir / "refs").mkdir(parents=True)
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for path in folder.iterdir():
        (snapshot / path.name).write_bytes(path.read_bytes())


def test_a_prepopulated_cache_loads_offline(med2d, tmp_path):
    assert huggingface_hub.constants.HF_HUB_OFFLINE, "tests/conftest.py must set HF_HUB_OFFLINE=1"
    med2d.save_pretrained(tmp_path / "saved")
    populate_hub_cache(tmp_path / "cache", "acme/tiny-med2d", tmp_path / "saved")
    loaded = zoo.from_pretrained("acme/tiny-med2d", cache_dir=tmp_path / "cache")
    assert_same_predictions(loaded, med2d)


def test_a_repo_missing_from_the_offline_cache_fails_at_once(tmp_path):
    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
        zoo.from_pretrained("acme/not-cached", cache_dir=tmp_path / "cache")


@pytest.mark.slow
def test_push_to_hub_then_from_pretrained_round_trips_through_a_hub_server(tmp_path):
    with FakeHub() as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.endpoint,
            "HF_HUB_OFFLINE": "0",
            "HF_HOME": str(tmp_path / "hf_home"),
            "HF_HUB_CACHE": str(tmp_path / "hf_cache"),
            "HF_HUB_DISABLE_XET": "1",
            "HF_HUB_DISABLE_TELEMETRY": "1",
            "NO_PROXY": "127.0.0.1",
            "OMP_NUM_THREADS": "1",
        }
        result_path = tmp_path / "result.json"
        command = [sys.executable, str(HERE / "push_pull_client.py"), "acme/tiny-med3d", str(result_path)]
        completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
        assert completed.returncode == 0, completed.stderr[-4000:]
        result = json.loads(result_path.read_text())

        assert result["latest_class"] == "SamMed3D"
        assert result["latest_is_second"] and not result["latest_is_first"]
        assert result["pinned_is_first"]
        pushed = hub.repos["acme/tiny-med3d"].commits[result["first_commit"]]
        assert sorted(pushed) == ["README.md", "config.json", "model.safetensors", "processor_config.json"]
        assert json.loads(pushed["config.json"])["family"] == "sam_med3d"
        assert json.loads(pushed["processor_config.json"])["processor_type"] == "sam_med3d"
        assert "POST /api/models/acme/tiny-med3d/commit/main" in hub.requests
        assert f"GET /acme/tiny-med3d/resolve/{result['first_commit']}/model.safetensors" in hub.requests
