"""What the ONNX export tests share: the families, their tiny models, the bundled images, which packages are missing."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import torch
from tiny_models import tiny_model

from zoo.resources import data_path

#: Without onnxruntime (and outside CI) these tests skip; the export's own need for onnx is not a reason to skip.
MISSING = [name for name in ("onnxruntime",) if importlib.util.find_spec(name) is None]
FAMILIES = ("sam_med2d_b", "sam_vit_b", "sam_unet_r34", "litemedsam", "sam_med3d_turbo")
#: Seed of the tiny SAM-Med3D: its random decoder gives a non-empty mask on the bundled CT (seed 0 gives none).
SEED_3D = 1
CT = Path(data_path("totalseg_example", "ct.nii.gz"))
PNGS = sorted(Path(data_path("sam_med2d_demo", "images")).glob("*.png"))


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def tiny(name: str) -> torch.nn.Module:
    """The family's tiny random model (SAM-Med3D with :data:`SEED_3D`)."""
    return tiny_model(name, seed=SEED_3D if name == "sam_med3d_turbo" else 0)
