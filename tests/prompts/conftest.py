"""Real masks for the prompt tests, from the repository's bundled data (data/)."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from PIL import Image

DATA = Path(__file__).resolve().parents[2] / "data"
# TotalSegmentator ids in data/totalseg_example/labels.nii.gz: kidney_right, gallbladder, stomach, colon.
CLASSES_3D = (2, 4, 6, 20)


@pytest.fixture(scope="session")
def label_map_3d() -> torch.Tensor:
    """The bundled CT's label map (122 x 101 x 30, file voxel order)."""
    return torch.from_numpy(np.asarray(nib.load(DATA / "totalseg_example" / "labels.nii.gz").dataobj).astype(np.int64))


@pytest.fixture(scope="session")
def targets_3d(label_map_3d: torch.Tensor) -> torch.Tensor:
    """B x X x Y x Z bool: a batch of real organ masks (kidney, gallbladder, stomach, colon)."""
    return torch.stack([label_map_3d == c for c in CLASSES_3D])


@pytest.fixture(scope="session")
def masks_2d() -> torch.Tensor:
    """B x 256 x 256 bool: real SAM-Med2D demo masks of amos_0006_90 (centre 256 crop).

    Aorta, liver, spleen, inferior vena cava, and aorta + vena cava together (two components, aorta larger).
    """
    names = ["aorta", "liver", "spleen", "inferior_vena_cava"]
    masks = [
        np.asarray(Image.open(DATA / "sam_med2d_demo" / "masks" / f"amos_0006_90_{n}_000.png"))[128:384, 128:384] > 0
        for n in names
    ]
    masks.append(masks[0] | masks[3])
    return torch.from_numpy(np.stack(masks))
