"""The registry of published weights (checkpoints/*.yaml) is complete and well-formed."""

import re

import pytest

import zoo
from zoo.hub.registry_cards import REGISTRY_DIR_ENV, list_weight_sets, weight_set


def test_every_registered_model_has_a_weight_set_record():
    missing = set(zoo.list_models()) - set(list_weight_sets())
    assert not missing, f"no checkpoints/<name>.yaml for {sorted(missing)}"


@pytest.mark.parametrize("name", list_weight_sets())
def test_each_record_is_complete(name):
    record = weight_set(name)
    assert record.model == name
    assert record.paper_url.startswith("https://arxiv.org/abs/")
    assert record.code_url.startswith("https://github.com/")
    assert record.license
    assert record.input_spec and record.prompt_types
    assert record.source_sha256 == "unknown" or re.fullmatch(r"[0-9a-f]{64}", record.source_sha256)


@pytest.mark.parametrize("name", zoo.list_models())
def test_each_registered_model_record_names_a_registered_family(name):
    assert weight_set(name).family in zoo.list_families()


def test_a_record_missing_fields_is_reported(tmp_path, monkeypatch):
    (tmp_path / "broken.yaml").write_text("model: broken\nfamily: sam_med3d\n")
    monkeypatch.setenv(REGISTRY_DIR_ENV, str(tmp_path))
    with pytest.raises(ValueError, match=r"broken\.yaml: missing fields title, license"):
        weight_set("broken")


def test_an_unknown_weight_set_is_a_key_error(tmp_path, monkeypatch):
    monkeypatch.setenv(REGISTRY_DIR_ENV, str(tmp_path))
    with pytest.raises(KeyError, match="no weight-set record"):
        weight_set("nothing")
