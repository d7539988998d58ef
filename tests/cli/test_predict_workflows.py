"""``zoo predict``'s workflows beyond one object (run in-process on tiny models saved as Hub folders): several
objects with a label map, a 2D model on the bundled CT with a 3D box, a command-line session of three prompts,
automatic prompts, and SAM-Med3D's large-object strategy."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import zoo

from tiny_models import mark_whole_input, tiny_model
from zoo.cli.main import main as zoo_main
from zoo.inference.session import Session
from zoo.io.png import read_image
from zoo.resources import data_path

CT = data_path("totalseg_example", "ct.nii.gz")
PNG = data_path("sam_med2d_demo", "images", "amos_0004_75.png")


@pytest.fixture(scope="module")
def whole_litemedsam(tmp_path_factory) -> Path:
    """A tiny LiteMedSAM folder whose every mask is the whole image, with a predicted IoU of 1."""
    folder = tmp_path_factory.mktemp("models") / "litemedsam_whole"
    net = mark_whole_input(tiny_model("litemedsam"), +1.0)
    with torch.no_grad():
        net.mask_decoder.iou_prediction_head.layers[-1].weight.zero_()
        net.mask_decoder.iou_prediction_head.layers[-1].bias.fill_(1.0)
    net.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def random_litemedsam(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "litemedsam"
    tiny_model("litemedsam").save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sam_med3d(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("models") / "sam_med3d"
    tiny_model("sam_med3d_turbo").save_pretrained(folder)
    return folder


def test_several_objects_get_their_masks_and_one_label_map_where_the_later_object_wins(whole_litemedsam, tmp_path,
                                                                                       capsys):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({str(PNG): [{"box": [150, 230, 230, 300], "name": "liver"},
                                              {"box": [300, 200, 360, 260], "name": "spleen"}]}))
    assert zoo_main(["predict", "--model", str(whole_litemedsam), "--prompts", str(prompts),
                     "--output-dir", str(tmp_path / "out")]) == 0
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == ["amos_0004_75_labels.json", "amos_0004_75_labels.png", "amos_0004_75_liver_mask.png",
                     "amos_0004_75_spleen_mask.png"]
    labels = np.asarray(Image.open(tmp_path / "out" / "amos_0004_75_labels.png"))
    assert labels.shape == (512, 512) and set(np.unique(labels)) == {2}  # both masks are the whole image
    table = json.loads((tmp_path / "out" / "amos_0004_75_labels.json").read_text())
    assert table == {"0": "background", "1": "liver", "2": "spleen"}
    assert "label map" in capsys.readouterr().out


def test_several_3d_objects_get_a_label_map_with_the_volumes_geometry(sam_med3d, tmp_path):
    prompts = tmp_path / "prompts.json"
    prompts.write_text(json.dumps({str(CT): [{"points": [[60, 48, 15]], "name": "a"},
                                             {"points": [[30, 40, 10]], "name": "b"}]}))
    assert zoo_main(["predict", "--model", str(sam_med3d), "--prompts", str(prompts), "--output-dir",
                     str(tmp_path / "out")]) == 0
    labels = nib.load(tmp_path / "out" / "ct_labels.nii.gz")
    ct = nib.load(CT)
    assert labels.shape == ct.shape and np.allclose(labels.affine, ct.affine)
    a = np.asarray(nib.load(tmp_path / "out" / "ct_a_mask.nii.gz").dataobj) > 0
    b = np.asarray(nib.load(tmp_path / "out" / "ct_b_mask.nii.gz").dataobj) > 0
    values = np.asarray(labels.dataobj)
    assert np.array_equal(values == 2, b) and np.array_equal(values == 1, a & ~b)
    assert json.loads((tmp_path / "out" / "ct_labels.json").read_text())["2"] == "b"


def test_a_2d_model_segments_the_bundled_ct_from_a_3d_box(whole_litemedsam, tmp_path, capsys):
    box3d = ["41", "25", "10", "105", "86", "14"]
    assert zoo_main(["predict", str(CT), "--model", str(whole_litemedsam), "--box3d", *box3d, "--window", "-160", "240",
                     "--name", "liver", "--output-dir", str(tmp_path / "out")]) == 0
    written = nib.load(tmp_path / "out" / "ct_liver_mask.nii.gz")
    ct = nib.load(CT)
    assert written.shape == ct.shape and np.allclose(written.affine, ct.affine)
    assert written.header.get_data_dtype() == np.uint8
    mask = np.asarray(written.dataobj) > 0
    assert mask[:, :, 10:15].all() and not mask[:, :, :10].any() and not mask[:, :, 15:].any()
    out = capsys.readouterr().out
    assert "5 axial slices" in out and "slices/s" in out


def test_a_2d_model_on_a_volume_needs_a_box(whole_litemedsam, tmp_path, capsys):
    assert zoo_main(["predict", str(CT), "--model", str(whole_litemedsam), "--points", "10,10",
                     "--output-dir", str(tmp_path / "out")]) == 1
    assert "give the volume a --box3d" in capsys.readouterr().err


def test_a_command_line_session_of_three_prompts(random_litemedsam, tmp_path, capsys):
    base = ["predict", str(PNG), "--model", str(random_litemedsam), "--session", str(tmp_path / "s")]
    assert zoo_main([*base, "--box", "150", "230", "230", "300"]) == 0
    assert zoo_main([*base, "--points", "190,265"]) == 0
    assert zoo_main([*base, "--points", "170,250", "--labels", "0", "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert out.count("none encoded again") == 2 and "click 3 (negative)" in out
    files = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert files[0] == "amos_0004_75_mask.png" and files[1].startswith("embeddings-") and files[2:] == ["session.json"]
    session = Session(tiny_model("litemedsam"), read_image(PNG))
    session.add_box([150, 230, 230, 300])
    session.add_click([190, 265])
    expected = session.add_click([170, 250], positive=False).mask.numpy()
    for written in (tmp_path / "s" / "amos_0004_75_mask.png", tmp_path / "out" / "amos_0004_75_mask.png"):
        assert np.array_equal(np.asarray(Image.open(written)) > 0, expected)
    assert zoo_main([*base, "--undo"]) == 0
    assert len(json.loads((tmp_path / "s" / "session.json").read_text())["actions"]) == 2


def test_automatic_prompts_are_marked_as_outside_the_papers_protocols(whole_litemedsam, tmp_path, capsys):
    assert zoo_main(["predict", str(PNG), "--model", str(whole_litemedsam), "--auto", "box",
                     "--output-dir", str(tmp_path / "box")]) == 0
    assert sorted(p.name for p in (tmp_path / "box").iterdir()) == ["amos_0004_75_auto_box_mask.png",
                                                                    "amos_0004_75_auto_prompts.json"]
    record = json.loads((tmp_path / "box" / "amos_0004_75_auto_prompts.json").read_text())
    assert "outside the papers' protocols" in record["note"] and record["box"] == [0.0, 0.0, 511.0, 511.0]
    assert "outside the papers' protocols" in capsys.readouterr().out
    assert zoo_main(["predict", str(PNG), "--model", str(whole_litemedsam), "--auto", "grid", "--grid-size", "3",
                     "--output-dir", str(tmp_path / "grid")]) == 0
    record = json.loads((tmp_path / "grid" / "amos_0004_75_auto_prompts.json").read_text())
    assert len(record["objects"]) == 1  # 9 clicks, 9 whole-image masks: the duplicates are dropped
    labels = np.asarray(Image.open(tmp_path / "grid" / "amos_0004_75_auto_labels.png"))
    assert set(np.unique(labels)) == {1}


def test_the_large_object_strategy_is_chosen_and_reported(sam_med3d, tmp_path, capsys):
    assert zoo_main(["predict", str(CT), "--model", str(sam_med3d), "--points", "60,48,15", "--large-object",
                     "follow_mask", "--max-crops", "3", "--output-dir", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "[follow_mask, " in out and "crop(s)" in out
    assert (tmp_path / "out" / "ct_mask.nii.gz").is_file()


def test_the_default_is_the_authors_single_crop(sam_med3d, tmp_path, capsys):
    assert zoo_main(["predict", str(CT), "--model", str(sam_med3d), "--points", "60,48,15",
                     "--output-dir", str(tmp_path / "out")]) == 0
    assert "[single_crop, 1 crop(s)]" in capsys.readouterr().out


@pytest.mark.parametrize(("image", "prompt"), [(CT, {"points": [[60, 48, 15]]}), (PNG, {"box": [150, 230, 230, 300]})])
def test_the_short_form_writes_what_the_lightning_prediction_path_writes(image, prompt, sam_med3d, random_litemedsam,
                                                                         tmp_path):
    from zoo.data.predict import PromptedImagesDataModule
    from zoo.training.prediction import predict_masks

    folder = sam_med3d if image == CT else random_litemedsam
    flags = ["--points", "60,48,15"] if "points" in prompt else ["--box", "150", "230", "230", "300"]
    assert zoo_main(["predict", str(image), "--model", str(folder), *flags, "--output-dir", str(tmp_path / "a")]) == 0
    data = PromptedImagesDataModule(images=str(image), **prompt)
    (reference,) = predict_masks(zoo.from_pretrained(str(folder)), data, tmp_path / "b")
    (ours,) = (tmp_path / "a").iterdir()
    assert ours.name == reference.name
    read = (lambda p: np.asarray(nib.load(p).dataobj)) if image == CT else (lambda p: np.asarray(Image.open(p)))
    assert np.array_equal(read(ours), read(reference))
