"""The registry of published weights (checkpoints/*.yaml) is complete and well-formed."""

import os
import re
from pathlib import Path

import pytest

import zoo
from zoo.hub.convert import file_sha256
from zoo.hub.packaged import PACKAGED_WEIGHTS, packaged_file
from zoo.hub.registry_cards import REGISTRY_DIR_ENV, list_weight_sets, registry_dir, weight_set
from zoo.processors import FAMILY_PROCESSORS


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


# ------------------------------------------------------------------------------------------- publishing fields
REPO_ROOT = Path(__file__).resolve().parents[2]
FIXTURE_ROOTS = [
    Path(os.environ.get("ZOO_PARITY_DIR", REPO_ROOT.parent / "shared" / "parity")),
    Path(os.environ.get("ZOO_PARITY_PENDING_DIR", REPO_ROOT.parent / "shared" / "parity-pending")),
]


@pytest.mark.parametrize("name", list_weight_sets())
def test_each_card_names_its_hub_repo_revision_source_licence_and_preprocessing(name):
    record = weight_set(name)
    raw = (registry_dir() / f"{name}.yaml").read_text()
    assert record.hub_id == f"promptable-medseg-zoo/{name}"
    if record.revision is None:  # nothing uploaded: the card must not read as if it were
        assert "not yet uploaded" in next(line for line in raw.splitlines() if line.startswith("hub_id:"))
    if record.source_file is not None:
        assert record.source_url and record.source_url.startswith("https://")
    assert record.license
    processor = FAMILY_PROCESSORS[record.family].__name__
    assert record.preprocessing and record.preprocessing.startswith(f"{processor}: ")
    assert isinstance(record.parity_cases, tuple)


@pytest.mark.parametrize("name", [n for n in list_weight_sets() if weight_set(n).parity_cases])
def test_declared_parity_cases_are_fixture_cases(name):
    present = [root for root in FIXTURE_ROOTS if root.is_dir()]
    if not present:
        pytest.skip("no parity fixture roots here")
    for case in weight_set(name).parity_cases:
        assert any((root / case / "case.json").is_file() for root in present), f"{name}: no fixture case {case}"


@pytest.mark.parametrize("name", sorted(PACKAGED_WEIGHTS))
def test_a_cards_sha256_matches_the_file_where_it_is_present(name):
    record = weight_set(name)
    assert record.source_sha256_known
    with packaged_file(PACKAGED_WEIGHTS[name]) as path:
        assert file_sha256(path) == record.source_sha256
        assert path.name == record.source_file
