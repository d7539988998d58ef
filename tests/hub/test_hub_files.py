"""The authors' files where they live on the Hub: zoo.from_pretrained("hf://owner/repo[@rev]/file.pth") against a Hub
server on 127.0.0.1 hosting a tiny SAM-Med3D in the authors' layout, a tampered copy and a malicious pickle.

The client runs in subprocesses (HF_ENDPOINT and HF_HUB_OFFLINE are read when huggingface_hub is imported).
"""

import hashlib
import io
import os
import shutil

import pytest
import torch
import yaml
from safetensors.torch import load_file

import zoo
from zoo.errors import CheckpointError
from zoo.hub.hub_files import HubAddress, parse_hub_address
from zoo.hub.registry_cards import REGISTRY_DIR_ENV, registry_dir

from .fake_hub import FakeHub, hub_environment
from .official_format import identical_state_dicts, sam_med3d_official_checkpoint
from .test_publish import run_client
from .tiny_configs import TINY_3D

REPO = "acme/SAM-Med3D"


def saved(checkpoint) -> bytes:
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    return buffer.getvalue()


def tiny_med3d(seed):
    torch.manual_seed(seed)
    return zoo.create_model("sam_med3d_turbo", **TINY_3D).eval()


class CallsSystem:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    """The server holds tiny.pth (commit ``first``), then a tampered tiny.pth, then evil.pth; a registry whose
    sam_med3d_turbo card names hf://acme/SAM-Med3D/tiny.pth and the first file's sha256."""
    home = tmp_path_factory.mktemp("hub_files")
    model = tiny_med3d(0)
    good = saved(sam_med3d_official_checkpoint(model.state_dict()))
    tampered = saved(sam_med3d_official_checkpoint(tiny_med3d(1).state_dict()))
    evil = saved({"model_state_dict": model.state_dict(), "payload": CallsSystem(home / "marker")})
    registry = home / "checkpoints"
    shutil.copytree(registry_dir(), registry)
    card = yaml.safe_load((registry / "sam_med3d_turbo.yaml").read_text())
    card["source"].update(hub=f"hf://{REPO}/tiny.pth", sha256=hashlib.sha256(good).hexdigest())
    (registry / "sam_med3d_turbo.yaml").write_text(yaml.safe_dump(card))
    with FakeHub() as hub:
        first = hub.add_files(REPO, {"tiny.pth": good})
        hub.add_files(REPO, {"tiny.pth": tampered})
        latest = hub.add_files(REPO, {"evil.pth": evil})
        env = {**hub_environment(hub.endpoint, home), REGISTRY_DIR_ENV: str(registry)}
        yield {"hub": hub, "env": env, "home": home, "model": model, "first": first, "latest": latest,
               "sha256": {"good": hashlib.sha256(good).hexdigest(), "tampered": hashlib.sha256(tampered).hexdigest()}}


@pytest.fixture(scope="module")
def online(hosted):
    """One client process: the steps below against the running server."""
    tiny = {"config_overrides": TINY_3D}
    pinned = f"hf://{REPO}@{hosted['first']}/tiny.pth"
    home = hosted["home"]
    steps = [
        {"name": "pinned", "load": pinned, "kwargs": tiny, "state_out": str(home / "pinned.safetensors")},
        {"name": "revision_argument", "load": f"hf://{REPO}/tiny.pth", "kwargs": {**tiny, "revision": hosted["first"]},
         "state_out": str(home / "revision.safetensors")},
        {"name": "local_files_only", "load": pinned, "kwargs": {**tiny, "local_files_only": True}},
        {"name": "tampered", "load": f"hf://{REPO}/tiny.pth", "kwargs": tiny},
        {"name": "malicious", "load": f"hf://{REPO}/evil.pth", "kwargs": tiny},
    ]
    return run_client(steps, hosted["env"], home)


@pytest.mark.slow
def test_an_authors_file_on_the_hub_loads_converted_with_its_weights(hosted, online):
    outcome = online["pinned"]
    assert outcome.get("class") == "SamMed3D", outcome
    assert outcome["weights_origin"] == f"hf://{REPO}@{hosted['first']}/tiny.pth"
    loaded = load_file(hosted["home"] / "pinned.safetensors")
    assert identical_state_dicts(loaded, hosted["model"].state_dict())


@pytest.mark.slow
def test_the_converted_folder_is_cached_by_repo_commit_and_sha256(hosted, online):
    commit_folder = hosted["home"] / "zoo_cache" / "hf" / "acme--SAM-Med3D" / hosted["first"]
    (folder,) = commit_folder.iterdir()  # one conversion for three loads; no staging folder left
    assert folder.name.startswith(hosted["sha256"]["good"])
    assert sorted(p.name for p in folder.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "processor_config.json"
    ]


@pytest.mark.slow
def test_a_revision_argument_is_the_same_as_one_in_the_address(hosted, online):
    assert online["revision_argument"]["weights_origin"] == online["pinned"]["weights_origin"]
    assert identical_state_dicts(load_file(hosted["home"] / "revision.safetensors"), hosted["model"].state_dict())
    assert online["local_files_only"]["class"] == "SamMed3D"


@pytest.mark.slow
def test_a_file_that_differs_from_its_card_fails_naming_the_file_and_both_hashes(hosted, online):
    outcome = online["tampered"]
    assert outcome["error"] == "CheckpointError"
    message = outcome["message"]
    assert message.startswith(f"hf://{REPO}@{hosted['latest']}/tiny.pth (downloaded to ")
    assert f"has sha256 {hosted['sha256']['tampered']}" in message
    assert f"checkpoints/sam_med3d_turbo.yaml expects {hosted['sha256']['good']}" in message


@pytest.mark.slow
def test_a_malicious_pickle_on_the_hub_is_refused_by_the_safe_loader(hosted, online):
    outcome = online["malicious"]
    assert outcome["error"] == "CheckpointError"
    assert outcome["message"].startswith(f"hf://{REPO}@{hosted['latest']}/evil.pth (downloaded to ")
    assert "system" in outcome["message"] and "not on zoo's allow-list" in outcome["message"]
    assert not (hosted["home"] / "marker").exists()


@pytest.mark.slow
def test_offline_with_a_warm_cache_loads_without_any_request(hosted, online, tmp_path):
    hub = hosted["hub"]
    before = len(hub.requests)
    offline = hub_environment(hub.endpoint, hosted["home"], offline=True)
    offline[REGISTRY_DIR_ENV] = hosted["env"][REGISTRY_DIR_ENV]
    pinned = f"hf://{REPO}@{hosted['first']}/tiny.pth"
    outcome = run_client([{"name": "offline", "load": pinned, "kwargs": {"config_overrides": TINY_3D}}], offline,
                         tmp_path)["offline"]
    assert outcome.get("class") == "SamMed3D", outcome
    assert len(hub.requests) == before


@pytest.mark.parametrize(
    ("address", "revision", "expected"),
    [
        ("hf://blueyo0/SAM-Med3D/sam_med3d_turbo.pth", None, HubAddress("blueyo0/SAM-Med3D", None, "sam_med3d_turbo.pth")),
        ("hf://a/b@v1/sub/w.pth", None, HubAddress("a/b", "v1", "sub/w.pth")),
        ("hf://a/b/w.pth", "v2", HubAddress("a/b", "v2", "w.pth")),
        ("hf://a/b@v1", None, HubAddress("a/b", "v1", None)),
    ],
)
def test_hub_addresses_parse(address, revision, expected):
    assert parse_hub_address(address, revision) == expected


@pytest.mark.parametrize(
    ("address", "revision", "problem"),
    [("hf://a", None, "is not an hf:// address"), ("hf://a/b@/w.pth", None, "has '@' but no revision"),
     ("hf://a/b@v1/w.pth", "v2", "names revision 'v1' but revision='v2'")],
)
def test_bad_hub_addresses_are_refused_naming_them(address, revision, problem):
    with pytest.raises(CheckpointError, match=problem):
        parse_hub_address(address, revision)


def test_the_turbo_card_names_the_authors_file_on_the_hub():
    from zoo.hub.registry_cards import weight_set_for_hub_file

    assert weight_set_for_hub_file("blueyo0/SAM-Med3D", "sam_med3d_turbo.pth").model == "sam_med3d_turbo"
    with pytest.raises(CheckpointError, match=r"zoo\.from_pretrained\('hf://blueyo0/SAM-Med3D/sam_med3d_turbo\.pth'\)"):
        zoo.from_pretrained("sam_med3d_turbo")


def test_an_unknown_file_offline_fails_at_once(tmp_path):
    import huggingface_hub

    with pytest.raises(huggingface_hub.errors.LocalEntryNotFoundError):
        zoo.from_pretrained("hf://acme/none/w.pth", cache_dir=tmp_path)
