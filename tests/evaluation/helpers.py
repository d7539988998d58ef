"""Small synthetic datasets and tiny-model loaders for the evaluation tests (no fixtures, no network).

The volume's affine permutes and flips the axes (file order I, L, A: the axial axis is the FIRST file axis, running
inferior), so a slicing or stacking mistake cannot hide behind an identity orientation.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from tiny_models import TINY, mark_whole_input, tiny_model
from zoo.evaluation.benchmark import LoadedModel
from zoo.evaluation.config import ModelSpec, config_from_dict

SHAPE = (10, 20, 16)  # file axes: inferior (axial slices), left, anterior
AFFINE = np.array(
    [[0.0, -2.0, 0.0, 20.0], [0.0, 0.0, 3.0, -30.0], [-3.0, 0.0, 0.0, 12.0], [0.0, 0.0, 0.0, 1.0]]
)
SPACING = (3.0, 2.0, 3.0)  # voxel size along each file axis
CLASSES = {"background": 0, "organ": 1, "vessel": 2, "absent": 3}


def label_volume(shape: tuple[int, int, int] = SHAPE) -> np.ndarray:
    label = np.zeros(shape, dtype=np.uint8)
    label[2:7, 4:13, 3:11] = 1  # a box on axial slices 2..6
    label[3:9, 14:18, 5:9] = 2  # another, on axial slices 3..8
    label[5, 6:9, 4:7] = 0
    return label


def write_dataset(root: Path, cases: int = 1, affine: np.ndarray = AFFINE) -> Path:
    """An nnU-Net raw dataset folder with ``cases`` cases (different intensities, the same labels)."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    (root / "dataset.json").write_text(json.dumps({"labels": CLASSES, "file_ending": ".nii.gz"}), encoding="utf-8")
    label = label_volume()
    for index in range(cases):
        rng = np.random.default_rng(index)
        image = (rng.integers(50, 400, size=SHAPE) + 300 * (label > 0)).astype(np.int16)
        nib.save(nib.Nifti1Image(image, affine), str(root / "imagesTr" / f"case{index}_0000.nii.gz"))
        nib.save(nib.Nifti1Image(label, affine), str(root / "labelsTr" / f"case{index}.nii.gz"))
    return root


def tiny_loader(spec: ModelSpec) -> LoadedModel:
    """``spec.create`` at its tiny size (``tests/tiny_models.py``), seeded with ``init_seed``; a name starting with
    ``whole`` gets a decoder whose every mask is the whole model input."""
    model = tiny_model(spec.create, seed=spec.init_seed)
    if spec.name.startswith("whole"):
        model = mark_whole_input(model, +1.0)
    return LoadedModel(model, f"tiny {spec.create}, random (seed {spec.init_seed})", None, random_weights=True)


def tiny_spec(name: str, create: str, seed: int = 0) -> dict[str, Any]:
    """A config entry that the command line's loader also builds (create + the tiny overrides)."""
    return {"name": name, "create": create, "overrides": dict(TINY[create]), "init_seed": seed}


def config(output_dir: Path, root: Path, models: list[dict[str, Any]], protocols: list[Any], **extra: Any) -> Any:
    values = {
        "name": "test",
        "seed": 7,
        "output_dir": str(output_dir),
        "models": models,
        "datasets": [{"name": "synthetic", "kind": "nifti", "root": str(root), "window": [0.0, 800.0]}],
        "protocols": protocols,
        "metrics": {"nsd_tolerance_mm": 2.0},
        "runtime": {"progress": False, "num_threads": 1},
    }
    values.update(extra)
    return config_from_dict(values)
