"""zoo publish: LiteMedSAM's real weights to a Hub server on 127.0.0.1, loaded back in a fresh process; idempotence;
the dry run; the model card's metadata.

The Hub client runs in subprocesses (tests/hub/hub_client.py), because HF_ENDPOINT is read when huggingface_hub is
imported and this process is offline (tests/conftest.py).
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from zoo.cli.main import main
from zoo.hub.model_card import read_benchmark_report
from zoo.hub.packaged import CACHE_DIR_ENV
from zoo.hub.publish import FOLDER_FILES, git_blob_id

from .fake_hub import FakeHub, hub_environment
from .fake_hub import git_blob_id as hub_blob_id
from .tiny_configs import TINY_3D

HERE = Path(__file__).parent
LITEMEDSAM_SHA256 = "79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76"
REPO = "acme/litemedsam"


def run_client(steps, env, folder):
    request, result = folder / "request.json", folder / "result.json"
    request.write_text(json.dumps(steps))
    command = [sys.executable, str(HERE / "hub_client.py"), str(request), str(result)]
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-4000:]
    return json.loads(result.read_text())


def card_metadata(readme: bytes) -> dict:
    return yaml.safe_load(readme.decode().split("---\n")[1])


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    """LiteMedSAM published twice (same bytes) with --revision v1 to a running hub."""
    home = tmp_path_factory.mktemp("publish")
    report = home / "report.json"
    report.write_text(json.dumps({"results": [{"dataset": "TotalSegmentator example CT", "metric": "dice",
                                               "value": 0.9, "task": "box-prompted 2D segmentation"}]}))
    with FakeHub() as hub:
        env = hub_environment(hub.endpoint, home)
        argv = ["publish", "litemedsam", REPO, "--revision", "v1", "--benchmark", str(report)]
        steps = [{"name": "first", "cli": argv}, {"name": "again", "cli": argv}]
        outcome = run_client(steps, env, home)
        yield hub, env, home, outcome


@pytest.mark.slow
def test_publish_uploads_the_whole_folder_in_one_commit(published):
    hub, _, _, outcome = published
    assert outcome["first"]["status"] == 0, outcome["first"]["stderr"]
    repo = hub.repos[REPO]
    assert len(repo.commits) == 1
    (commit, files), = repo.commits.items()
    assert sorted(files) == sorted(FOLDER_FILES)
    assert f"{REPO}: published at commit {commit}" in outcome["first"]["stdout"]
    assert repo.tags == {"v1": commit}
    assert json.loads(files["config.json"])["family"] == "litemedsam"
    assert json.loads(files["processor_config.json"])["processor_type"] == "litemedsam"


@pytest.mark.slow
def test_the_card_carries_provenance_parity_and_benchmark_metadata(published):
    hub, _, _, _ = published
    (files,) = hub.repos[REPO].commits.values()
    metadata = card_metadata(files["README.md"])
    provenance = metadata["promptable_medseg_zoo"]
    assert provenance["source_file"] == "lite_medsam.pth"
    assert provenance["source_sha256"] == LITEMEDSAM_SHA256
    assert provenance["converted_with"] == "promptable-medseg-zoo 0.1.0"
    assert provenance["parity_cases"] == ["litemedsam"]
    assert provenance["paper"] == "https://arxiv.org/abs/2304.12306"
    assert metadata["license"] == "apache-2.0" and "arxiv:2304.12306" in metadata["tags"]
    (result,) = metadata["model-index"][0]["results"]
    assert result["metrics"] == [{"type": "dice", "value": 0.9}]
    assert result["dataset"]["name"] == "TotalSegmentator example CT"
    assert 'zoo.from_pretrained("acme/litemedsam", revision="v1")' in files["README.md"].decode()


@pytest.mark.slow
def test_publishing_the_same_bytes_again_makes_no_commit(published):
    hub, _, _, outcome = published
    assert outcome["again"]["status"] == 0, outcome["again"]["stderr"]
    assert len(hub.repos[REPO].commits) == 1
    assert "no new commit" in outcome["again"]["stdout"]
    assert sum(request.startswith(f"POST /api/models/{REPO}/commit/") for request in hub.requests) == 1
    assert f"POST /api/models/{REPO}/paths-info/{next(iter(hub.repos[REPO].commits))}" in hub.requests


@pytest.mark.slow
def test_a_fresh_process_with_an_empty_cache_gets_the_packaged_weights_masks(published, tmp_path):
    hub, env, _, _ = published
    fresh = {**env, "HF_HUB_CACHE": str(tmp_path / "empty_cache"), "HF_HOME": str(tmp_path / "hf_home")}
    outcome = run_client([{"name": "masks", "masks": REPO, "kwargs": {"revision": "v1"}}], fresh, tmp_path)["masks"]
    assert outcome["weights_origin"] == REPO
    assert outcome["same_weights"] and outcome["processor_config_equal"]
    assert outcome["same_masks"] and outcome["foreground_pixels"] > 1000
    assert any(r.startswith(f"GET /{REPO}/resolve/") and r.endswith("/model.safetensors") for r in hub.requests)


def test_a_dry_run_writes_the_folder_only_and_twice_the_same_bytes(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    torch.manual_seed(0)
    import zoo

    zoo.create_model("sam_med3d_turbo", **TINY_3D).save_pretrained(tmp_path / "run")
    for out in ("one", "two"):
        assert main(["publish", str(tmp_path / "run"), "acme/tiny", "--dry-run", "--output-dir", str(tmp_path / out)]) == 0
    assert "dry run: wrote" in capsys.readouterr().out
    one, two = ({p.name: p.read_bytes() for p in (tmp_path / out).iterdir()} for out in ("one", "two"))
    assert sorted(one) == sorted(FOLDER_FILES) and one == two
    assert git_blob_id(tmp_path / "one" / "config.json") == hub_blob_id(one["config.json"])


def test_publish_never_writes_into_a_folder_that_holds_files(tmp_path, capsys):
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "notes.txt").write_text("mine")
    assert main(["publish", "litemedsam", "acme/x", "--dry-run", "--output-dir", str(tmp_path / "out")]) == 1
    assert "exists and is not an empty folder" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["notes.txt"]


def test_a_benchmark_report_without_numbers_is_refused_naming_the_file(tmp_path):
    report = tmp_path / "report.json"
    report.write_text(json.dumps({"results": [{"dataset": "ct", "metric": "dice", "value": "high"}]}))
    with pytest.raises(ValueError, match=r"report\.json: results\[0\]: needs a metric name and a numeric value"):
        read_benchmark_report(report)


def test_a_name_without_reachable_weights_says_so_at_once(capsys):
    assert main(["publish", "sam_med2d_b", "acme/x", "--dry-run"]) == 1
    assert "no copy of its released weights is reachable here" in capsys.readouterr().err


def test_a_zoo_run_checkpoint_is_published_through_zoo_predicts_reader(tmp_path):
    import zoo

    torch.manual_seed(3)
    net = zoo.create_model("sam_med3d_turbo", **TINY_3D)
    hparams = {"model": "sam_med3d_turbo", "model_overrides": dict(TINY_3D)}
    state = {f"net.{key}": value for key, value in net.state_dict().items()}
    torch.save({"state_dict": state, "hyper_parameters": hparams}, tmp_path / "run.ckpt")
    assert main(["publish", str(tmp_path / "run.ckpt"), "acme/run", "--dry-run", "--output-dir", str(tmp_path / "out")]) == 0
    published = zoo.from_pretrained(tmp_path / "out")
    assert all(torch.equal(published.state_dict()[k], v) for k, v in net.state_dict().items())
    metadata = card_metadata((tmp_path / "out" / "README.md").read_bytes())
    assert metadata["promptable_medseg_zoo"]["source_file"] == "run.ckpt"


def test_a_zoo_benchmark_results_json_of_one_model_gives_means_per_dataset_protocol_and_step(tmp_path):
    rows = [{"model": "litemedsam", "dataset": "ct", "case": "c", "target": t, "class": "liver", "protocol": "box",
             "step": 0, "step_label": "box", "dice": dice, "nsd": 0.5} for t, dice in (("a", 0.8), ("b", 0.6))]
    report = tmp_path / "results.json"
    report.write_text(json.dumps({"benchmark": "b", "models": [{"name": "litemedsam"}], "rows": rows}))
    results = {(r.metric, r.task): r.value for r in read_benchmark_report(report)}
    assert results == {("dice", "box @ box"): pytest.approx(0.7), ("nsd", "box @ box"): 0.5}
    rows.append({**rows[0], "model": "other"})
    report.write_text(json.dumps({"rows": rows}))
    with pytest.raises(ValueError, match=r"results\.json: holds the results of 2 models \(litemedsam, other\)"):
        read_benchmark_report(report)
