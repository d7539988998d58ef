"""The processor travels with the weights: a folder written by ``zoo convert`` or ``save_pretrained`` gives the same
masks through ``zoo predict``, the Predictor and the Python API, with no flag naming the preprocessing."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import zoo
from zoo.hub import convert
from zoo.inference import Predictor
from zoo.io.png import read_image
from zoo.processors import processor_for
from zoo.resources import data_path

IMAGE = data_path("sam_med2d_demo", "images", "s0114_111.png")  # 181 x 258: not square, so geometry matters
BOX = [63, 80, 111, 132]
TINY_UNET = dict(
    image_size=64, embed_dim=32, depth=12, num_heads=2, window_size=3, resnet_layers=(1, 1, 1, 1), decoder_mlp_dim=32
)
TINY_SAM = dict(image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=(1,),
                prompt_embed_dim=32, decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32)


def _predictor_mask(model: torch.nn.Module) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        predictor = Predictor(model)
    predictor.set_image(read_image(IMAGE))
    return predictor.predict(box=BOX).masks[0].numpy()


@pytest.mark.parametrize(
    ("name", "overrides", "processor_type"), [("sam_unet_r34", TINY_UNET, "sam_unet"), ("sam_vit_b", TINY_SAM, "sam")]
)
def test_a_converted_folder_brings_its_processor_to_every_entry_point(name, overrides, processor_type, tmp_path: Path):
    torch.manual_seed(0)
    authors = zoo.create_model(name, **overrides)
    torch.save({"model": authors.state_dict()}, tmp_path / "authors.pth")
    folder = tmp_path / "hub"
    convert(tmp_path / "authors.pth", folder, model=name, **overrides)
    saved = json.loads((folder / "processor_config.json").read_text())
    assert saved["processor_type"] == processor_type and saved["image_size"] == 64

    loaded = zoo.from_pretrained(folder)
    assert processor_for(loaded).processor_type == processor_type
    expected = _predictor_mask(loaded)
    assert 0 < expected.sum() < expected.size

    out = tmp_path / "masks"
    done = subprocess.run(
        [sys.executable, "-m", "zoo.cli.main", "predict", str(IMAGE), "--model", str(folder),
         "--box", *map(str, BOX), "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"weights: {folder}" in done.stdout
    written = np.asarray(Image.open(out / f"{IMAGE.stem}_mask.png")) > 0
    assert np.array_equal(written, expected)


def test_save_pretrained_writes_the_processor_the_model_carries(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo.create_model("sam_unet_r34", **TINY_UNET)
    model.save_pretrained(tmp_path / "saved")
    assert json.loads((tmp_path / "saved" / "processor_config.json").read_text())["processor_type"] == "sam_unet"
    again = zoo.from_pretrained(tmp_path / "saved")
    assert np.array_equal(_predictor_mask(again), _predictor_mask(model))
