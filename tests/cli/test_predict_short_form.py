"""``zoo predict IMAGE --model ... --points/--box --output-dir`` on the bundled CT and a bundled PNG, and its help."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.hub import convert
from zoo.resources import data_path

ZOO = [sys.executable, "-m", "zoo.cli.main"]
CT = data_path("totalseg_example", "ct.nii.gz")
PNG = data_path("sam_med2d_demo", "images", "amos_0004_75.png")


def zoo_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ZOO_CACHE_DIR": str(cwd / "cache")}
    return subprocess.run([*ZOO, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_the_short_help_fits_a_screen_and_documents_the_prompts_file(tmp_path: Path) -> None:
    done = zoo_cli("predict", "--help", cwd=tmp_path)
    assert done.returncode == 0
    assert len(done.stdout.splitlines()) < 80
    for text in ("--model", "--points", "--box", "--prompts", "--output-dir", "--overwrite", '"space": "world"'):
        assert text in done.stdout


def test_a_png_with_a_box_and_the_released_litemedsam(tmp_path: Path) -> None:
    done = zoo_cli("predict", str(PNG), "--model", "litemedsam", "--box", "150", "230", "230", "300", "--name", "liver",
                   "--output-dir", "masks", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "LiteMedSAM" in done.stdout and "weights: " in done.stdout
    mask = np.asarray(Image.open(tmp_path / "masks" / "amos_0004_75_liver_mask.png"))
    assert mask.shape == (512, 512) and set(np.unique(mask)) == {0, 255}
    reference = np.asarray(Image.open(data_path("sam_med2d_demo", "masks", "amos_0004_75_liver_000.png"))) > 0
    inside = mask > 0
    assert 2 * (inside & reference).sum() / (inside.sum() + reference.sum()) > 0.8  # real weights: a real liver


def test_the_bundled_ct_with_a_point_and_a_converted_sam_med3d(tmp_path: Path) -> None:
    torch.manual_seed(0)
    small = dict(image_size=64, embed_dim=48, depth=2, num_heads=2, prompt_embed_dim=48, decoder_num_heads=2,
                 decoder_mlp_dim=64, iou_head_hidden_dim=16)
    model = zoo.create_model("sam_med3d_turbo", **small)
    torch.save({"model_state_dict": model.state_dict()}, tmp_path / "sam_med3d_small.pth")
    folder = tmp_path / "hub"
    convert(tmp_path / "sam_med3d_small.pth", folder, model="sam_med3d_turbo", **small)
    done = zoo_cli("predict", str(CT), "--model", str(folder), "--points", "60,48,15", "--output-dir", "masks",
                   cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    written = nib.load(tmp_path / "masks" / "ct_mask.nii.gz")
    ct = nib.load(CT)
    assert written.shape == ct.shape and np.allclose(written.affine, ct.affine)
    again = zoo_cli("predict", str(CT), "--model", str(folder), "--points", "60,48,15", "--output-dir", "masks",
                    cwd=tmp_path)
    assert again.returncode == 1 and again.stderr.count("\n") <= 2 and "already exist" in again.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--box", "150", "230", "2300", "300"], "is not a box inside the 512 x 512"),
        (["--points", "600,20"], "lies outside the 512 x 512"),
        (["--points", "60,48,15"], "points of a 2D image must be"),
    ],
)
def test_bad_prompts_are_one_line_naming_the_file(args: list[str], message: str, tmp_path: Path) -> None:
    done = zoo_cli("predict", str(PNG), "--model", "litemedsam", *args, "--output-dir", "masks", cwd=tmp_path)
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if line.startswith("zoo predict: error:")]
    assert len(lines) == 1 and message in lines[0] and "amos_0004_75.png" in lines[0], done.stderr[-1500:]
    assert not (tmp_path / "masks").exists() or not list((tmp_path / "masks").iterdir())
