"""Paths to the bundled real data (the repository's data/ folder) and helpers that arrange copies of it.

Layouts are built in temporary folders from copies; the bundled files themselves are only ever read.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np

DATA = Path(__file__).resolve().parents[2] / "data"
TOTALSEG = DATA / "totalseg_example"
CT, LABELS, MR = TOTALSEG / "ct.nii.gz", TOTALSEG / "labels.nii.gz", TOTALSEG / "mr.nii.gz"
SAM_MED2D_DEMO = DATA / "sam_med2d_demo"
KIDNEY_RIGHT = 2  # fits a 128^3 crop at 1.5 mm


def class_names() -> dict[int, str]:
    """TotalSegmentator ids -> names of every class the bundled CT's labels may hold."""
    return {int(k): v for k, v in json.loads((TOTALSEG / "labels.json").read_text())["all"].items()}


def names(*paths: Path, problem: str) -> str:
    """Regex for a DataError message: the file(s), then the problem (itself a regex)."""
    return re.escape(" vs ".join(str(p) for p in paths) + ": ") + problem


def digests(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``: proof that nothing was modified."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def write_dataset_json(root: Path, names: dict[int, str], version: int = 2) -> None:
    if version == 2:
        labels = {"background": 0, **{name: cid for cid, name in names.items()}}
    else:
        labels = {"0": "background", **{str(cid): name for cid, name in names.items()}}
    (root / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))


def make_nnunet(root: Path, cases: dict[str, tuple[Path, Path]], version: int = 2) -> Path:
    """An nnU-Net raw folder with ``imagesTr/<case>_0000.nii.gz`` and ``labelsTr/<case>.nii.gz``."""
    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    for case, (image, label) in cases.items():
        shutil.copy(image, root / "imagesTr" / f"{case}_0000.nii.gz")
        shutil.copy(label, root / "labelsTr" / f"{case}.nii.gz")
    write_dataset_json(root, class_names(), version)
    return root


def reoriented_copy(source: Path, destination: Path, axcodes: tuple[str, str, str]) -> Path:
    """The same volume stored with another voxel order (axis permutation + flips; same anatomy)."""
    image = nib.load(source)
    transform = nib.orientations.ornt_transform(
        nib.orientations.io_orientation(image.affine), nib.orientations.axcodes2ornt(axcodes)
    )
    reoriented = image.as_reoriented(transform)
    nib.save(nib.Nifti1Image(np.asarray(reoriented.dataobj), reoriented.affine), destination)
    return destination
