"""What a benchmark evaluates: cases (a volume and its label map, or a 2D image and its object masks) and their
targets, found in the zoo's dataset layouts and checked before any model runs.

* NIfTI folders in the nnU-Net or SAM-Med3D per-target layout (:mod:`zoo.data.layout3d`): one case per image/label
  pair, one target per class; a selected class missing from a case's label is skipped, with the reason kept for the
  report. Image and label must share their grid (the error names both files).
* SA-Med2D-style 2D sets (:mod:`zoo.data.sa_med2d`, a ``label2image`` JSON): one case per image, one target per
  mask file; an empty mask file is skipped likewise.

:func:`load_case` reads what the models need: the stored volume (3D models), the windowed 8-bit slices in display
orientation (2D models on volumes, :mod:`zoo.data.slicer`), the label on the file's grid and its spacing.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import nibabel as nib
import numpy as np

from zoo.data.layout3d import find_cases
from zoo.data.sa_med2d import class_name_of, read_label2image
from zoo.data.slicer import extract_slice, to_ras, to_uint8
from zoo.errors import DataError
from zoo.evaluation.protocols import CaseKind
from zoo.io.nifti import Volume, check_same_grid, load_image, load_label, load_stored, read_header
from zoo.io.png import read_image, read_mask

IntensityRule = Literal["rounded", "medsam"]
Plane = Literal["axial", "coronal", "sagittal"]


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset of a benchmark config.

    Attributes:
        name: its name in reports.
        kind: ``nifti`` (a folder in the nnU-Net or SAM-Med3D layout) or ``sa_med2d`` (a ``label2image`` JSON).
        root: nifti: the dataset folder.
        layout: nifti: ``auto``, ``nnunet`` or ``per_target``.
        split: nifti: ``Tr`` or ``Ts``.
        json: sa_med2d: the ``label2image_<split>.json`` file.
        path_root: sa_med2d: what the JSON's relative paths are relative to (default: its folder).
        classes: only these classes (names, or label values for volumes); default all the dataset names.
        cases: only these case ids (default all).
        max_cases: at most this many cases (in name order).
        window: 2D models on volumes: the intensity window of the 8-bit slices (e.g. CT ``[-160, 240]``); default
            the volume's 0.5-99.5 percentiles.
        intensity_rule: 2D models on volumes: ``medsam`` (MedSAM's ``pre_CT_MR.py``: clip, min-max, truncate) or
            ``rounded``.
        plane: 2D models on volumes: the slicing plane.
        slab: only display slices ``[start, stop)`` along ``plane``: every model then gets this slab of the volume
            (a shorter run; the 3D models see the slab too, so all are scored on the same voxels).
    """

    name: str
    kind: Literal["nifti", "sa_med2d"] = "nifti"
    root: str | None = None
    layout: Literal["auto", "nnunet", "per_target"] = "auto"
    split: Literal["Tr", "Ts"] = "Tr"
    json: str | None = None
    path_root: str | None = None
    classes: tuple[str | int, ...] | None = None
    cases: tuple[str, ...] | None = None
    max_cases: int | None = None
    window: tuple[float, float] | None = None
    intensity_rule: IntensityRule = "medsam"
    plane: Plane = "axial"
    slab: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if self.slab is not None and not 0 <= self.slab[0] < self.slab[1]:
            raise ValueError(f"dataset {self.name}: slab must be [start, stop) with 0 <= start < stop, got {self.slab}")
        if self.kind == "nifti" and not self.root:
            raise ValueError(f"dataset {self.name}: a nifti dataset needs root (its folder)")
        if self.kind == "sa_med2d" and not self.json:
            raise ValueError(f"dataset {self.name}: an sa_med2d dataset needs json (its label2image file)")
        if self.kind not in ("nifti", "sa_med2d"):
            raise ValueError(f"dataset {self.name}: kind must be 'nifti' or 'sa_med2d', got {self.kind!r}")
        if self.intensity_rule not in ("rounded", "medsam"):
            raise ValueError(f"dataset {self.name}: intensity_rule must be 'rounded' or 'medsam'")


@dataclass(frozen=True)
class Target:
    """One object of a case: a class of a label map (``class_id``) or one mask file (``mask_path``).

    ``name`` is unique within the case (the class name; for 2D sets the mask's name after the image's, e.g.
    ``hip_right_001``)."""

    name: str
    class_name: str
    class_id: int | None = None
    mask_path: str | None = None


@dataclass(frozen=True)
class Case:
    """One image with its targets (and the targets skipped, with why)."""

    dataset: str
    case_id: str
    kind: CaseKind
    image_path: str
    label_path: str | None
    targets: tuple[Target, ...]
    skipped: tuple[tuple[str, str], ...] = ()
    window: tuple[float, float] | None = None
    intensity_rule: IntensityRule = "medsam"
    plane: Plane = "axial"
    slab: tuple[int, int] | None = None

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.case_id}"

    def files(self) -> list[str]:
        """Every file the case reads."""
        found = [self.image_path] + ([self.label_path] if self.label_path else [])
        return found + [t.mask_path for t in self.targets if t.mask_path]

    def fingerprint(self) -> str:
        """sha256 of the case's files and its slicing settings: a cached result is reused only for the same data."""
        settings = (self.key, self.kind, self.window, self.intensity_rule, self.plane, self.slab)
        digest = hashlib.sha256(repr(settings).encode())
        digest.update(repr([(t.name, t.class_id) for t in self.targets]).encode())
        for path in self.files():
            digest.update(file_sha256(path).encode())
        return digest.hexdigest()


_FILE_HASHES: dict[tuple[str, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """sha256 of a file's bytes (remembered per path, size and modification time within a process)."""
    file = Path(path)
    stat = file.stat()
    key = (str(file.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha256()
        with file.open("rb") as stream:
            for block in iter(lambda: stream.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def _wanted(selection: Sequence[str | int] | None, class_id: int | None, name: str) -> bool:
    if selection is None:
        return True
    return name in selection or (class_id is not None and class_id in selection) or (
        class_id is not None and str(class_id) in selection
    )


def find_dataset_cases(spec: DatasetSpec) -> list[Case]:
    """The dataset's cases and targets, every image checked against its label (grid, sizes) before any model runs."""
    cases = _nifti_cases(spec) if spec.kind == "nifti" else _image_cases(spec)
    if spec.cases is not None:
        unknown = sorted(set(spec.cases) - {c.case_id for c in cases})
        if unknown:
            raise DataError(spec.root or spec.json or spec.name, f"no case named {unknown} in dataset {spec.name}")
        cases = [c for c in cases if c.case_id in spec.cases]
    cases = sorted(cases, key=lambda c: c.case_id)
    return cases[: spec.max_cases] if spec.max_cases is not None else cases


def _nifti_cases(spec: DatasetSpec) -> list[Case]:
    assert spec.root is not None
    found = []
    for files in find_cases(spec.root, spec.layout, spec.split):
        label = load_label(files.label_path)
        check_same_grid(read_header(files.image_path), label)  # names both files when they differ
        where = files.label_path.name
        if spec.slab is not None:
            label = slab_of(label, spec.plane, spec.slab)
            where += f" (display slices {spec.slab[0]}..{spec.slab[1] - 1})"
        present = {int(v) for v in np.unique(label.array) if v != 0}
        targets, skipped = [], []
        for class_id, name in sorted(files.class_names.items()):
            if not _wanted(spec.classes, class_id, name):
                continue
            if class_id in present:
                targets.append(Target(name, name, class_id=class_id))
            else:
                skipped.append((name, f"class {name} (label {class_id}) is empty in {where}"))
        found.append(
            Case(spec.name, files.case_id, "volume", str(files.image_path), str(files.label_path), tuple(targets),
                 tuple(skipped), _window(spec.window), spec.intensity_rule, spec.plane,
                 None if spec.slab is None else (int(spec.slab[0]), int(spec.slab[1])))
        )
    return found


_NORMAL = {"axial": 2, "coronal": 1, "sagittal": 0}


def slab_of(volume: Volume, plane: Plane, slab: Sequence[int]) -> Volume:
    """Display slices ``[start, stop)`` along ``plane`` of a volume, as a volume on its own grid: the file's voxels
    of those slices, with the affine moved to the slab's first voxel (no resampling)."""
    orientation = nib.orientations.io_orientation(volume.affine)
    axis = int(np.nonzero(orientation[:, 0] == _NORMAL[plane])[0][0])
    size = volume.shape[axis]
    start, stop = int(slab[0]), min(int(slab[1]), size)
    if start >= stop:
        raise DataError(volume.path, f"the slab [{slab[0]}, {slab[1]}) holds none of the {size} {plane} slices")
    if orientation[axis, 1] < 0:  # the file runs against RAS along this axis
        start, stop = size - stop, size - start
    index = [slice(None)] * 3
    index[axis] = slice(start, stop)
    offset = np.zeros(3)
    offset[axis] = start
    affine = volume.affine.copy()
    affine[:3, 3] = volume.affine[:3, :3] @ offset + volume.affine[:3, 3]
    return Volume(np.ascontiguousarray(volume.array[tuple(index)]), affine, volume.path)


def _window(window: Sequence[float] | None) -> tuple[float, float] | None:
    return None if window is None else (float(window[0]), float(window[1]))


def _image_cases(spec: DatasetSpec) -> list[Case]:
    assert spec.json is not None
    by_image: dict[Path, list[Path]] = defaultdict(list)
    for image, mask in read_label2image(spec.json, spec.path_root):
        by_image[image].append(mask)
    found = []
    for image_path, mask_paths in sorted(by_image.items()):
        size = read_image(image_path).shape[:2]
        targets, skipped = [], []
        for mask_path in sorted(mask_paths):
            class_name = class_name_of(image_path, mask_path)
            name = _target_name(image_path, mask_path)
            if not _wanted(spec.classes, None, class_name):
                continue
            try:
                mask = read_mask(mask_path)
            except DataError as err:
                if "empty" not in err.problem:
                    raise
                skipped.append((name, f"{mask_path.name} is empty"))
                continue
            if mask.shape != size:
                raise DataError([image_path, mask_path], f"image size {size} and mask size {mask.shape} differ")
            targets.append(Target(name, class_name, mask_path=str(mask_path)))
        found.append(Case(spec.name, image_path.stem, "image", str(image_path), None, tuple(targets), tuple(skipped)))
    return found


def _target_name(image_path: Path, mask_path: Path) -> str:
    name = mask_path.stem
    return name[len(image_path.stem):].lstrip("_-") if name.startswith(image_path.stem) else name


# ------------------------------------------------------------------------------------------------ loading
@dataclass
class LoadedCase:
    """A case's data as the models and the scores need them.

    Attributes:
        case: the case.
        labels: per target, the bool mask on the scoring grid (the file's voxels, or the image's pixels).
        spacing: the scoring grid's spacing (mm per voxel axis; 1 per pixel for 2D images).
        image: 2D: the ``H x W x 3`` uint8 image.
        volume: 3D: the stored volume (what SAM-Med3D's processor reads), loaded on first use.
        affine: 3D: the file's affine.
    """

    case: Case
    labels: dict[str, np.ndarray]
    spacing: tuple[float, ...]
    image: np.ndarray | None = None
    affine: np.ndarray | None = None
    _volume: Volume | None = None
    _slices: np.ndarray | None = field(default=None, repr=False)

    @property
    def volume(self) -> Volume:
        if self._volume is None:
            self._volume = self._slab(load_stored(self.case.image_path))
        return self._volume

    def _slab(self, volume: Volume) -> Volume:
        return volume if self.case.slab is None else slab_of(volume, self.case.plane, self.case.slab)

    def display_slices(self) -> np.ndarray:
        """``D x H x W`` uint8: the volume's slices along the case's plane, as 2D models see them (RAS, displayed:
        :func:`zoo.data.slicer.extract_slice`; intensities by the case's window and rule)."""
        if self._slices is None:
            assert self.affine is not None
            intensities = self._slab(load_image(self.case.image_path))
            grey = to_uint8(to_ras(intensities), self.case.window, rule=self.case.intensity_rule)
            self._slices = stack_display(grey, self.case.plane)
        return self._slices

    def display(self, mask: np.ndarray) -> np.ndarray:
        """A bool mask on the file's grid as ``D x H x W`` display slices (the inverse of :meth:`from_display`)."""
        assert self.affine is not None
        return stack_display(to_ras(Volume(np.asarray(mask), self.affine, Path(self.case.image_path))), self.case.plane)

    def display_slice(self, mask: np.ndarray, index: int) -> np.ndarray:
        """Display slice ``index`` of a mask on the file's grid."""
        assert self.affine is not None
        ras = to_ras(Volume(np.asarray(mask), self.affine, Path(self.case.image_path)))
        return extract_slice(ras, self.case.plane, index)

    def from_display(self, slices: np.ndarray) -> np.ndarray:
        """``D x H x W`` display slices back on the file's grid (:func:`zoo.data.slicer.assemble_volume`)."""
        from zoo.data.slicer import assemble_volume

        assert self.affine is not None
        label = Volume(np.zeros(self.labels_shape, dtype=bool), self.affine, Path(self.case.image_path))
        return np.ascontiguousarray(assemble_volume({z: slices[z] for z in range(len(slices))}, self.case.plane, label))

    @property
    def labels_shape(self) -> tuple[int, ...]:
        return next(iter(self.labels.values())).shape if self.labels else ()


def stack_display(ras: np.ndarray, plane: Plane) -> np.ndarray:
    """Every slice of a RAS volume along ``plane``, displayed (:func:`zoo.data.slicer.extract_slice`)."""
    axis = {"axial": 2, "coronal": 1, "sagittal": 0}[plane]
    return np.stack([extract_slice(ras, plane, z) for z in range(ras.shape[axis])])


def load_case(case: Case) -> LoadedCase:
    """Read a case's label(s) (and, for 2D images, the image)."""
    if case.kind == "image":
        image = read_image(case.image_path)
        labels = {t.name: read_mask(t.mask_path) for t in case.targets if t.mask_path}
        return LoadedCase(case, labels, (1.0, 1.0), image=image)
    assert case.label_path is not None
    label = load_label(case.label_path)
    if case.slab is not None:
        label = slab_of(label, case.plane, case.slab)
    spacing = tuple(float(s) for s in np.sqrt((label.affine[:3, :3] ** 2).sum(axis=0)))
    labels = {t.name: label.array == t.class_id for t in case.targets}
    return LoadedCase(case, labels, spacing, affine=label.affine)


__all__ = ["Case", "DatasetSpec", "LoadedCase", "Target", "file_sha256", "find_dataset_cases", "load_case"]
