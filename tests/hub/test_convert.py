"""zoo convert (Python and command line): official file -> Hub-format folder that zoo.from_pretrained loads."""

import json
import os
import subprocess
import sys

import pytest
import torch

import zoo
from zoo.cli.main import main
from zoo.hub import CheckpointError, convert
from zoo.hub.convert import file_sha256
from zoo.processors import processor_for, processor_from_dict

from .official_format import identical_state_dicts, sam_med2d_official_checkpoint, sam_med3d_official_checkpoint
from .tiny_configs import TINY_2D, TINY_3D, TINY_SAM


@pytest.fixture
def med3d_file(med3d, tmp_path):
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(sam_med3d_official_checkpoint(med3d.state_dict()), path)
    return path


@pytest.fixture
def med2d_file(med2d, tmp_path):
    path = tmp_path / "sam-med2d_b.pth"
    torch.save(sam_med2d_official_checkpoint(med2d.state_dict()), path)
    return path


def test_a_sam_med3d_file_becomes_a_hub_folder_with_the_same_weights(med3d, med3d_file, tmp_path):
    out = tmp_path / "out"
    convert(med3d_file, out, "sam_med3d_turbo", **TINY_3D)
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md", "config.json", "model.safetensors", "processor_config.json"
    ]
    processor_config = json.loads((out / "processor_config.json").read_text())
    assert processor_config["processor_type"] == "sam_med3d" and processor_config["image_size"] == TINY_3D["image_size"]
    loaded = zoo.from_pretrained(out)
    assert type(loaded).__name__ == "SamMed3D"
    assert identical_state_dicts(loaded.state_dict(), med3d.state_dict())
    assert processor_for(loaded).config == processor_from_dict(processor_config).config


def test_a_sam_med2d_file_becomes_a_hub_folder_with_the_same_weights(med2d, med2d_file, tmp_path):
    convert(med2d_file, tmp_path / "out", "sam_med2d_b", **TINY_2D)
    loaded = zoo.from_pretrained(tmp_path / "out")
    assert type(loaded).__name__ == "SamMed2D"
    assert identical_state_dicts(loaded.state_dict(), med2d.state_dict())


def test_config_json_records_family_and_config(med3d_file, tmp_path):
    convert(med3d_file, tmp_path / "out", "sam_med3d_turbo", **TINY_3D)
    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert config["family"] == "sam_med3d"
    assert config["embed_dim"] == TINY_3D["embed_dim"]
    assert config["global_attn_indexes"] == list(TINY_3D["global_attn_indexes"])


def test_the_model_card_names_model_paper_licence_source_and_sha256(med3d_file, tmp_path):
    conversion = convert(med3d_file, tmp_path / "out", "sam_med3d_turbo", **TINY_3D)
    card = (tmp_path / "out" / "README.md").read_text()
    assert conversion.source_sha256 == file_sha256(med3d_file)
    for expected in (
        "library_name: promptable-medseg-zoo",
        "license: apache-2.0",
        "`sam_med3d_turbo`",
        "https://arxiv.org/abs/2310.15161",
        "https://github.com/uni-medical/SAM-Med3D",
        f"Converted from `sam_med3d_turbo.pth` (sha256 `{conversion.source_sha256}`)",
        "1.5 x 1.5 x 1.5 mm",
        "(modified config)",
    ):
        assert expected in card, expected


def test_a_file_with_another_name_is_not_attributed_to_the_authors_url(med3d, tmp_path):
    path = tmp_path / "my_finetune.pth"
    torch.save(sam_med3d_official_checkpoint(med3d.state_dict()), path)
    convert(path, tmp_path / "out", "sam_med3d_turbo", **TINY_3D)
    card = (tmp_path / "out" / "README.md").read_text()
    assert "Converted from `my_finetune.pth`" in card
    assert "huggingface.co/blueyo0" not in card


def test_a_non_empty_destination_is_not_overwritten(med3d_file, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match=r"out already exists and is not empty.*--overwrite"):
        convert(med3d_file, out, "sam_med3d_turbo", **TINY_3D)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_only_the_converted_files(med3d_file, med3d, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / "README.md").write_text("old card")
    convert(med3d_file, out, "sam_med3d_turbo", overwrite=True, **TINY_3D)
    assert (out / "notes.txt").read_text() == "mine"
    assert "sam_med3d_turbo" in (out / "README.md").read_text()
    assert identical_state_dicts(zoo.from_pretrained(out).state_dict(), med3d.state_dict())


def test_a_checkpoint_matching_no_released_variant_needs_model_named(med3d_file, tmp_path):
    expected = r"sam_med3d_turbo\.pth: looks like a sam_med3d checkpoint .*--model NAME"
    with pytest.raises(CheckpointError, match=expected):
        convert(med3d_file, tmp_path / "out", **TINY_3D)


def test_an_unrecognisable_checkpoint_needs_model_named(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"backbone.weight": torch.ones(2)}, path)
    with pytest.raises(CheckpointError, match=r"other\.pth: cannot tell which model it is for.*--model NAME"):
        convert(path, tmp_path / "out")


def test_the_wrong_model_name_is_a_wrong_family_error(med3d_file, tmp_path):
    with pytest.raises(CheckpointError, match=r"looks like a sam_med3d checkpoint .*SamMed2D"):
        convert(med3d_file, tmp_path / "out", "sam_med2d_b", **TINY_2D)
    assert not (tmp_path / "out").exists()


def test_meta_sam_converts_to_an_initialised_sam_med2d(tmp_path):
    torch.manual_seed(1)
    sam = zoo.create_model("sam_vit_b", **TINY_SAM)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    conversion = convert(path, tmp_path / "out", "sam_med2d_b", **TINY_2D)
    assert conversion.init_report is not None and "image_encoder.pos_embed" in conversion.init_report.resized
    card = (tmp_path / "out" / "README.md").read_text()
    assert f"Initialised from `sam_vit_b_01ec64.pth` (sha256 `{conversion.source_sha256}`)" in card
    assert "What the initialisation did (nothing else was changed)" in card and "left at init: " in card
    assert str(tmp_path) not in card
    loaded = zoo.from_pretrained(tmp_path / "out")
    copied_key = "image_encoder.patch_embed.proj.weight"
    assert torch.equal(loaded.state_dict()[copied_key], sam.state_dict()[copied_key])


def test_the_sam_initialisation_is_reproducible_with_a_seed(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(zoo.create_model("sam_vit_b", **TINY_SAM).state_dict(), path)
    convert(path, tmp_path / "a", "sam_med2d_b", seed=3, **TINY_2D)
    convert(path, tmp_path / "b", "sam_med2d_b", seed=3, **TINY_2D)
    assert (tmp_path / "a" / "model.safetensors").read_bytes() == (tmp_path / "b" / "model.safetensors").read_bytes()


def cli_overrides(config):
    return [arg for field, value in config.items() for arg in ("--set", f"{field}={json.dumps(value)}")]


def test_the_zoo_convert_command_writes_a_loadable_folder(med2d, med2d_file, tmp_path, capsys):
    command = ["convert", str(med2d_file), str(tmp_path / "out"), "--model", "sam_med2d_b", *cli_overrides(TINY_2D)]
    status = main(command)
    assert status == 0
    assert f"wrote sam_med2d_b to {tmp_path / 'out'}" in capsys.readouterr().out
    assert identical_state_dicts(zoo.from_pretrained(tmp_path / "out").state_dict(), med2d.state_dict())


def test_the_zoo_convert_command_reports_errors_on_stderr(tmp_path, capsys):
    (tmp_path / "notes.pth").write_text("not weights")
    status = main(["convert", str(tmp_path / "notes.pth"), str(tmp_path / "out")])
    assert status == 1
    assert "zoo convert: error: " in capsys.readouterr().err


def test_the_console_script_runs_convert_end_to_end(med3d, med3d_file, tmp_path):
    command = [sys.executable, "-m", "zoo.cli.main", "convert", str(med3d_file), str(tmp_path / "out")]
    command += ["--model", "sam_med3d_turbo", *cli_overrides(TINY_3D)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr
    assert identical_state_dicts(zoo.from_pretrained(tmp_path / "out").state_dict(), med3d.state_dict())


def test_the_zoo_console_script_points_at_the_cli():
    from importlib.metadata import entry_points

    (script,) = entry_points(group="console_scripts", name="zoo")
    assert script.value == "zoo.cli.main:main"
