"""``zoo predict`` (LightningCLI form) writes its masks and nothing else: no logs, no config.yaml, no run folders."""

from __future__ import annotations

import json
from pathlib import Path

import lightning as L
import torch
from run_helpers import TINY_3D

from zoo.cli.main import main as zoo_main
from zoo.training.module import PromptableSegmentationModule

CT = Path(__file__).resolve().parents[2] / "data" / "totalseg_example" / "ct.nii.gz"


def files_under(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def predict(*extra: str) -> int:
    return zoo_main([
        "predict",
        "--model.model", "sam_med3d_turbo",
        "--model.model_overrides", json.dumps(TINY_3D),
        "--data", "zoo.data.predict.PromptedImagesDataModule",
        "--data.images", str(CT),
        "--data.points", "[[60, 50, 15]]",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--ckpt_path", "tiny.ckpt",
        *extra,
    ])


def test_predict_twice_leaves_only_the_mask(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = PromptableSegmentationModule(model="sam_med3d_turbo", model_overrides=TINY_3D)
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": L.__version__}, "tiny.ckpt")
    before = files_under(tmp_path)
    writer = ("--trainer.callbacks+=zoo.training.prediction.MaskWriter", "--trainer.callbacks.output_dir", "masks",
              "--trainer.callbacks.overwrite", "true")
    assert predict(*writer) == 0
    assert predict(*writer) == 0
    assert files_under(tmp_path) - before == {"masks", "masks/ct_mask.nii.gz"}


def test_predict_with_a_root_dir_writes_only_its_predictions_folder(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    module = PromptableSegmentationModule(model="sam_med3d_turbo", model_overrides=TINY_3D)
    torch.save({"state_dict": module.state_dict(), "pytorch-lightning_version": L.__version__}, "tiny.ckpt")
    before = files_under(tmp_path)
    assert predict("--trainer.default_root_dir", "out") == 0
    assert files_under(tmp_path) - before == {"out", "out/predictions", "out/predictions/ct_mask.nii.gz"}
