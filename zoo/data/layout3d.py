"""Finding image/label pairs and their targets in the two 3D folder layouts.

* **nnU-Net** (``root/dataset.json``, ``root/imagesTr/<case>_0000.nii.gz``, ``root/labelsTr/<case>.nii.gz``,
  optionally ``imagesTs``/``labelsTs``): multi-label maps; ``dataset.json`` names the labels, in the v2 form
  ``{"labels": {"background": 0, "liver": 1}}`` or the v1 form ``{"labels": {"0": "background", "1": "liver"}}``.
* **SAM-Med3D per-target** (``root/<target>/<dataset>/imagesTr/<case>.nii.gz`` + ``labelsTr/<case>.nii.gz``, as
  written by upstream's ``prepare_data_from_nnUNet.py``): one binary label per file; the target's name is the
  first folder below ``root`` (or ``root``'s own name when ``root`` holds ``labelsTr`` directly).

A *target* is one (case, class) pair: the unit SAM-Med3D trains and evaluates on.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from zoo.errors import DataError
from zoo.io.json_files import read_json
from zoo.io.nifti import check_same_grid, load_label, read_header

logger = logging.getLogger(__name__)

Layout = Literal["auto", "nnunet", "per_target"]
NIFTI_ENDING = ".nii.gz"


@dataclass(frozen=True)
class CaseFiles:
    """One image/label pair. ``class_names`` maps the label values this file may hold to names."""

    case_id: str
    image_path: Path
    label_path: Path
    class_names: dict[int, str]


@dataclass(frozen=True)
class TargetRecord:
    """One binary target: voxels of ``label_path`` equal to ``class_id``.

    ``num_voxels`` counts them in the file; ``num_voxels_at_spacing`` estimates the count after resampling to
    the pipeline's spacing (file voxel volume / target voxel volume), which the size threshold uses.
    """

    case_id: str
    image_path: Path
    label_path: Path
    class_id: int
    class_name: str
    num_voxels: int
    num_voxels_at_spacing: float


def read_dataset_json(path: str | Path) -> tuple[dict[int, str], str]:
    """Foreground label values -> names, and the file ending, from an nnU-Net ``dataset.json`` (v1 or v2)."""
    file = Path(path)
    meta = read_json(file, "dataset.json")
    labels = meta.get("labels") if isinstance(meta, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise DataError(file, "dataset.json has no 'labels' mapping")
    names: dict[int, str] = {}
    for key, value in labels.items():
        if str(key).isdigit():  # v1: "1": "liver"
            names[int(key)] = str(value)
        elif isinstance(value, int) and not isinstance(value, bool):  # v2: "liver": 1
            names[value] = str(key)
        else:
            raise DataError(
                file,
                f"label entry {key!r}: {value!r} is neither 'id: name' nor 'name: id' "
                "(region labels are not supported)",
            )
    names.pop(0, None)
    return names, str(meta.get("file_ending", NIFTI_ENDING))


def _case_id(label_path: Path, ending: str) -> str:
    return label_path.name[: -len(ending)] if label_path.name.endswith(ending) else label_path.stem


def find_nnunet_cases(root: str | Path, split: Literal["Tr", "Ts"] = "Tr", channel: int = 0) -> list[CaseFiles]:
    """Cases of an nnU-Net raw dataset folder; image channel ``channel`` (the ``_000c`` suffix) is used."""
    folder = Path(root)
    class_names, ending = read_dataset_json(folder / "dataset.json")
    labels_dir = folder / f"labels{split}"
    if not labels_dir.is_dir():
        return []
    cases = []
    for label_path in sorted(labels_dir.glob(f"*{ending}")):
        case_id = _case_id(label_path, ending)
        image_path = folder / f"images{split}" / f"{case_id}_{channel:04d}{ending}"
        if not image_path.is_file():
            raise DataError([label_path, image_path], "label has no matching image (expected the second path)")
        cases.append(CaseFiles(case_id, image_path, label_path, class_names))
    return cases


def find_per_target_cases(root: str | Path, split: Literal["Tr", "Ts", "Val"] = "Tr") -> list[CaseFiles]:
    """Cases of SAM-Med3D's per-target layout under ``root`` (binary labels; value 1 is the target)."""
    base = Path(root)
    cases = []
    for labels_dir in sorted(p for p in base.rglob(f"labels{split}") if p.is_dir()):
        relative = labels_dir.parent.relative_to(base)
        target = relative.parts[0] if relative.parts else base.name
        for label_path in sorted(labels_dir.glob(f"*{NIFTI_ENDING}")):
            image_path = labels_dir.parent / f"images{split}" / label_path.name
            if not image_path.is_file():
                raise DataError([label_path, image_path], "label has no matching image (expected the second path)")
            case_id = "/".join([*relative.parts, _case_id(label_path, NIFTI_ENDING)])
            cases.append(CaseFiles(case_id, image_path, label_path, {1: target}))
    return cases


def find_cases(
    root: str | Path, layout: Layout = "auto", split: Literal["Tr", "Ts"] = "Tr", channel: int = 0
) -> list[CaseFiles]:
    """Cases in either layout; ``auto`` picks nnU-Net when ``root/dataset.json`` exists."""
    folder = Path(root)
    if not folder.is_dir():
        raise DataError(folder, "dataset folder not found")
    chosen = ("nnunet" if (folder / "dataset.json").is_file() else "per_target") if layout == "auto" else layout
    if chosen == "nnunet":
        return find_nnunet_cases(folder, split, channel)
    if chosen == "per_target":
        return find_per_target_cases(folder, split)
    raise ValueError(f"unknown layout {layout!r}; expected 'auto', 'nnunet' or 'per_target'")


def list_targets(
    cases: list[CaseFiles],
    spacing: tuple[float, float, float] = (1.5, 1.5, 1.5),
    min_voxels: float = 0,
    classes: list[int] | None = None,
) -> tuple[list[TargetRecord], list[TargetRecord]]:
    """Every (case, class) present, split into kept targets and targets skipped for size.

    Reads each label (checked: readable, same grid as its image, not empty, values named by the dataset) and
    counts voxels per class. A target is skipped, like upstream's ``label.sum() <= threshold``, when its voxel
    count at ``spacing`` is ``<= min_voxels``; the skips are logged with their count. ``classes`` restricts the
    class ids considered.
    """
    target_volume = float(np.prod(spacing))
    kept: list[TargetRecord] = []
    skipped: list[TargetRecord] = []
    for case in cases:
        label = load_label(case.label_path)
        check_same_grid(read_header(case.image_path), label)
        values, counts = np.unique(label.array, return_counts=True)
        present = {int(v): int(c) for v, c in zip(values, counts) if v != 0}
        if not present:
            raise DataError(case.label_path, "label is empty (no foreground voxel)")
        unknown = sorted(set(present) - set(case.class_names))
        if unknown:
            raise DataError(
                case.label_path, f"label values {unknown} are not in the dataset's labels {sorted(case.class_names)}"
            )
        voxel_volume = abs(float(np.linalg.det(label.affine[:3, :3])))
        for class_id, count in sorted(present.items()):
            if classes is not None and class_id not in classes:
                continue
            record = TargetRecord(
                case.case_id, case.image_path, case.label_path, class_id, case.class_names[class_id], count,
                count * voxel_volume / target_volume,
            )
            (kept if record.num_voxels_at_spacing > min_voxels else skipped).append(record)
    if skipped:
        logger.warning(
            "skipped %d of %d targets with <= %g voxels at spacing %s mm",
            len(skipped), len(kept) + len(skipped), min_voxels, spacing,
        )
    return kept, skipped
