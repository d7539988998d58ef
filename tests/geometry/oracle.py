"""torchio / SimpleITK as test oracles for :mod:`zoo.geometry.grid3d` (the product never imports them).

Random cases, the authors' pipeline steps run through torchio 0.23.1 and the fixture folder lookup.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from zoo.geometry.grid3d import torchio_resample_grid

REPO_ROOT = Path(__file__).resolve().parents[2]
PENDING_ENV = "ZOO_PARITY_PENDING_DIR"
IN_CI = os.environ.get("CI", "").lower() == "true"


def require(module: str):
    """Import an oracle package; skip without it, except under ``CI=true`` where it must be installed."""
    try:
        return __import__(module)
    except ImportError:
        if IN_CI:
            raise
        pytest.skip(f"{module} (a test oracle in the dev extra) is not installed")


def pending_root() -> Path:
    configured = os.environ.get(PENDING_ENV)
    return Path(configured).expanduser().resolve() if configured else REPO_ROOT.parent / "shared" / "parity-pending"


def pipeline_cases() -> list[Path]:
    """SAM-Med3D pipeline fixture folders: ``sam_med3d_pipeline*/case.json`` under the pending root."""
    root = pending_root()
    return sorted(p.parent for p in root.glob("sam_med3d_pipeline*/case.json")) if root.is_dir() else []


def case_image(case_dir: Path, name: str) -> Path | None:
    """The fixture's input image: next to the case, in ``<root>/../data`` or in the repo's ``data/``."""
    for base in (case_dir, case_dir.parent.parent / "data", REPO_ROOT / "data"):
        if (base / name).is_file():
            return base / name
    return None


def ground_truth_voxel(spec: dict, click_original_voxel: np.ndarray) -> tuple[int, int, int]:
    """The one-voxel ground truth of a pipeline case: from its description, else the voxel under the click."""
    text = str(spec.get("inputs", {}).get("ground_truth", ""))
    found = re.search(r"at \[(\d+),\s*(\d+),\s*(\d+)\]", text)
    if found:
        return tuple(int(v) for v in found.groups())  # type: ignore[return-value]
    return tuple(int(v) for v in np.floor(click_original_voxel + 0.5))  # type: ignore[return-value]


# ------------------------------------------------------------------------------------------- random cases
@dataclass(frozen=True)
class Case:
    seed: int
    shape: tuple[int, int, int]
    affine: np.ndarray
    target: float | tuple[float, float, float]
    kind: str

    def __repr__(self) -> str:
        return f"Case(seed={self.seed}, kind={self.kind}, shape={self.shape}, target={self.target})"


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def random_case(seed: int, kind: str, max_voxels: int = 120_000) -> Case:
    """A small random volume geometry. ``kind``: ``axis`` (signed axis permutation), ``oblique`` (a rotated
    permutation), ``tie`` (spacings whose ratio to the target is 1/2, 1 or 2 or 3: voxel centres halfway between
    the other grid's)."""
    rng = np.random.default_rng(seed)
    while True:
        shape = tuple(int(n) for n in rng.integers(5, 81, 3))
        if kind == "tie":
            target: float | tuple[float, float, float] = 1.5
            spacing = rng.choice([0.75, 1.5, 3.0, 4.5], 3)
        else:
            target = [1.5, 1.5, 1.0, 2.0, 3.0, (1.5, 1.0, 2.5), (0.8, 2.0, 1.2)][int(rng.integers(7))]
            spacing = rng.uniform(0.5, 5.0, 3)
            if rng.random() < 0.4:
                spacing = np.maximum(np.round(spacing * 4) / 4, 0.5)
        perm = rng.permutation(3)
        matrix = np.zeros((3, 3))
        matrix[perm, np.arange(3)] = rng.choice([-1.0, 1.0], 3)
        if kind == "oblique":
            matrix = _rotation(rng) @ matrix if rng.random() < 0.5 else _small_tilt(rng) @ matrix
        affine = np.eye(4)
        affine[:3, :3] = matrix * spacing
        origin = rng.uniform(-150, 150, 3)
        affine[:3, 3] = np.round(origin, 2) if kind != "oblique" else origin
        grid = torchio_resample_grid(shape, affine, target)
        if 0 < np.prod(grid.shape) <= max_voxels and min(grid.shape) >= 2:
            return Case(seed, shape, affine, target, kind)


def _small_tilt(rng: np.random.Generator) -> np.ndarray:
    axis = rng.normal(size=3)
    axis /= np.linalg.norm(axis)
    angle = rng.uniform(-0.35, 0.35)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + np.sin(angle) * k + (1 - np.cos(angle)) * k @ k


def random_image(case: Case, dtype) -> np.ndarray:
    rng = np.random.default_rng(case.seed + 1)
    smooth = np.cumsum(np.cumsum(rng.normal(0, 40, case.shape), axis=0), axis=2) / 4
    if np.dtype(dtype).kind == "f":
        return smooth.astype(dtype)
    info = np.iinfo(dtype)
    return np.clip(smooth, info.min, info.max).astype(dtype)


def random_label(case: Case) -> np.ndarray:
    """A blob of label 1 (and a few voxels of label 2) somewhere in the volume."""
    rng = np.random.default_rng(case.seed + 2)
    grid = np.indices(case.shape).astype(float)
    centre = [rng.uniform(0, n - 1) for n in case.shape]
    radius = [max(1.0, rng.uniform(0.1, 0.4) * n) for n in case.shape]
    inside = sum(((g - c) / r) ** 2 for g, c, r in zip(grid, centre, radius)) <= 1
    label = inside.astype(np.uint8)
    label[tuple(int(round(c)) for c in centre)] = 2
    return label


# ------------------------------------------------------------------------------------------- torchio runs
def torchio_resample_canonical(image: np.ndarray, label: np.ndarray, affine: np.ndarray, target):
    """``tio.Resample(target)`` then ``tio.ToCanonical()`` of an image + label subject (upstream's steps 1-2)."""
    tio = require("torchio")
    subject = tio.Subject(
        image=tio.ScalarImage(tensor=image[None], affine=affine),
        label=tio.LabelMap(tensor=label[None], affine=affine),
    )
    return tio.ToCanonical()(tio.Resample(target)(subject))


def torchio_crop_or_pad(subject, size):
    """``tio.CropOrPad(size, mask_name='label')`` (upstream's step 3), warnings about empty masks silenced."""
    tio = require("torchio")
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return tio.CropOrPad(size, mask_name="label")(subject)


def torchio_paste_back(mask: np.ndarray, crop_affine: np.ndarray, shape, affine: np.ndarray) -> np.ndarray:
    """Upstream's ``data_postprocess``: a float32 ``LabelMap`` resampled onto a reference ``ScalarImage``."""
    tio = require("torchio")
    torch = require("torch")
    crop = tio.LabelMap(tensor=torch.from_numpy(mask.astype(np.float32))[None], affine=crop_affine)
    reference = tio.ScalarImage(tensor=torch.zeros((1, *shape)), affine=affine)
    pasted = tio.Resample(target=reference, image_interpolation="nearest")(crop)
    return pasted.data[0].numpy()
