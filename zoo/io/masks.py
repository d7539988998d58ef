"""Writing predicted masks: NIfTI with the input's geometry, PNG at the input's size, and all of one run's files
appearing together or not at all.

:class:`MaskSet` stages every file of a run in a hidden folder inside the output folder and moves them into place
only when all were written; a failure removes the staged files, so a rerun finds nothing half-written and no
"already exists" from a run that failed. An existing output is replaced only with ``overwrite``.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from zoo.errors import DataError

STAGING_PREFIX = ".zoo-staging-"


def nifti_like(
    source_path: Path, mask: np.ndarray, expected_affine: np.ndarray | None = None, dtype: type = np.uint8
) -> nib.Nifti1Image:
    """An integer image of ``mask`` (uint8 by default; a label map may need uint16) with the source file's affine,
    shape and header (no intensity scaling; display range 0 .. max(1, largest value))."""
    source = nib.load(str(source_path))
    if expected_affine is not None and not np.allclose(np.asarray(source.affine, dtype=np.float64), expected_affine):
        raise DataError(source_path, "the file's affine changed since it was read for prediction")
    header = source.header.copy()
    header.set_data_dtype(dtype)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, float(max(1, int(mask.max(initial=0))))
    return type(source)(mask.astype(dtype).reshape(source.shape), source.affine, header)


def save_mask(path: Path, mask: np.ndarray, source_image: Path) -> None:
    """Write one mask: ``.nii.gz`` with ``source_image``'s geometry, or an 8-bit 0/255 PNG."""
    if path.name.endswith((".nii.gz", ".nii")):
        nib.save(nifti_like(source_image, mask), str(path))
    else:
        Image.fromarray((mask.astype(np.uint8) * 255), mode="L").save(path, format="PNG")
    _sync(path)


def save_label_map(path: Path, labels: np.ndarray, source_image: Path) -> None:
    """Write a label map (value ``k`` = the ``k``-th object, 0 background): ``.nii.gz`` with ``source_image``'s
    geometry (uint8, uint16 above 255 objects), or a PNG holding the values themselves (8-bit, at most 255)."""
    if path.name.endswith((".nii.gz", ".nii")):
        dtype = np.uint8 if int(labels.max(initial=0)) <= 255 else np.uint16
        nib.save(nifti_like(source_image, labels, dtype=dtype), str(path))
    else:
        if int(labels.max(initial=0)) > 255:
            raise DataError(path, "a PNG label map holds at most 255 objects")
        Image.fromarray(labels.astype(np.uint8), mode="L").save(path, format="PNG")
    _sync(path)


def _sync(path: Path) -> None:
    with open(path, "rb+") as stream:
        os.fsync(stream.fileno())


class MaskSet:
    """The files of one run in ``output_dir``, written all together or not at all.

    Use as a context manager: :meth:`add` writes each mask into a staging folder; leaving the block without an
    error moves them all into place (checking again that none appeared meanwhile unless ``overwrite``); an error
    removes the staging folder and leaves ``output_dir`` as it was.
    """

    def __init__(self, output_dir: str | Path, overwrite: bool = False) -> None:
        self.output_dir = Path(output_dir).absolute()
        self.overwrite = overwrite
        self.staged: list[Path] = []
        self.written: list[Path] = []
        self._staging: Path | None = None

    def check_targets(self, file_names: list[str]) -> None:
        """Fail before any model runs if one of the planned files already exists (and ``overwrite`` is off)."""
        if self.overwrite:
            return
        existing = [str(self.output_dir / name) for name in file_names if (self.output_dir / name).exists()]
        if existing:
            raise FileExistsError(
                f"{len(existing)} mask file(s) already exist: {', '.join(existing[:5])}"
                + (" ..." if len(existing) > 5 else "")
                + "; choose another output folder, move them, or pass --overwrite"
            )

    def __enter__(self) -> MaskSet:
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self._staging = self.output_dir / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
        self._staging.mkdir()
        self.staged, self.written = [], []
        return self

    def add(self, file_name: str, mask: np.ndarray, source_image: Path) -> Path:
        """Stage one mask; returns where it will appear."""
        if self._staging is None:
            raise RuntimeError("use MaskSet as a context manager")
        if Path(file_name).name != file_name:
            raise ValueError(f"mask file name {file_name!r} must not contain a folder")
        save_mask(self._staging / file_name, mask, source_image)
        self.staged.append(self._staging / file_name)
        return self.output_dir / file_name

    def add_labels(self, file_name: str, labels: np.ndarray, source_image: Path) -> Path:
        """Stage one label map (:func:`save_label_map`); returns where it will appear."""
        return self.add_file(file_name, lambda path: save_label_map(path, labels, source_image))

    def add_json(self, file_name: str, content: Any) -> Path:
        """Stage one JSON file (e.g. a label table); returns where it will appear."""

        def write(path: Path) -> None:
            path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
            _sync(path)

        return self.add_file(file_name, write)

    def add_file(self, file_name: str, write: Callable[[Path], None]) -> Path:
        """Stage one file written by ``write(path)``; returns where it will appear."""
        if self._staging is None:
            raise RuntimeError("use MaskSet as a context manager")
        if Path(file_name).name != file_name:
            raise ValueError(f"output file name {file_name!r} must not contain a folder")
        write(self._staging / file_name)
        self.staged.append(self._staging / file_name)
        return self.output_dir / file_name

    def __exit__(self, exc_type, exc, traceback) -> None:
        staging, self._staging = self._staging, None
        assert staging is not None
        try:
            if exc_type is None:
                self._commit()
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _commit(self) -> None:
        self.check_targets([path.name for path in self.staged])
        for path in self.staged:
            target = self.output_dir / path.name
            os.replace(path, target)
            self.written.append(target)

    def report(self) -> str:
        """One line saying how many masks went where."""
        return f"Wrote {len(self.written)} mask(s) to {self.output_dir}"
