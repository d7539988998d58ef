"""The prompts file of ``zoo predict`` and the image files it names: finding images, parsing the JSON, matching
entries to images, output file names, and turning one written object into prompt containers.

Prompts JSON schema
-------------------
A JSON object mapping each image to one object or a list of objects to segment::

    {
      "ct.nii.gz": {"points": [[60, 48, 15], [75, 50, 15]], "labels": [1, 0], "name": "liver"},
      "abdomen/mr.nii.gz": {"points": [[-20.5, 12.0, 40.0]], "space": "world"},
      "slice.png": [
        {"box": [120, 80, 200, 160], "name": "kidney"},
        {"points": [[300, 240]], "labels": [1], "name": "liver"}
      ]
    }

Image keys: without ``images``, each key is a path (absolute, or relative to the JSON file's folder) and the
keys are the images. With ``images``, each key names one of those images, by path (absolute or relative to the
JSON file's folder) or by file name; every image needs an entry and every entry must name exactly one image.

Object fields:

* ``points``: list of points. 3D ``voxel``: ``[i, j, k]``, indices into the array as stored on disk (what
  ``nibabel.load(path).get_fdata()[i, j, k]`` reads); ``world``: ``[x, y, z]`` in mm, RAS+ (NIfTI affines map to
  RAS: x grows to the patient's right, y to anterior, z to superior; 3D Slicer shows RAS); ``world_lps``: ``[x, y, z]`` in mm, LPS+ (DICOM, ITK, SimpleITK). 2D: ``[x, y]`` pixels (column, row), as SAM.
  Coordinates are continuous; an integer is the centre of that voxel/pixel, and a point must fall on a voxel/pixel
  of the image (``-0.5 <= c <= size - 0.5`` on every axis).
* ``labels``: one per point, 1 foreground or 0 background (default: all 1).
* ``space``: ``voxel`` (default; ``pixel`` is a synonym), ``world`` or ``world_lps``; world spaces are 3D only.
* ``box`` (2D only): ``[x0, y0, x1, y1]`` pixel corners, ``0 <= x0 <= x1 <= width`` and ``0 <= y0 <= y1 <= height``
  (SAM-Med2D and SAM-UNet make boxes from masks with ``x1`` one past the last column; LiteMedSAM with the last
  column). SAM-Med3D has no box prompt.
* ``name`` (optional): the object's name (letters, digits, ``.``, ``_``, ``-``), used in the output file name.

Every object needs points or a box, and only the prompt kinds its model takes (checked by the model's processor).
"""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.errors import DataError, PromptError
from zoo.io.coordinates import world_to_voxel
from zoo.io.json_files import read_json
from zoo.prompts.types import Prompts
from zoo.prompts.validate import boxes_from_user, points_from_user

NIFTI_SUFFIXES = (".nii.gz", ".nii")
IMAGE_2D_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_SUFFIX = {3: ".nii.gz", 2: ".png"}
_OBJECT_FIELDS = {"points", "labels", "space", "box", "name"}
_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_GLOB_CHARACTERS = set("*?[")


# ------------------------------------------------------------------------------------------ image discovery
def spatial_dims_of(path: Path) -> int:
    """3 for NIfTI files, 2 for 2D image files; anything else is an error."""
    name = path.name.lower()
    if name.endswith(NIFTI_SUFFIXES):
        return 3
    if name.endswith(IMAGE_2D_SUFFIXES):
        return 2
    expected = f"NIfTI ({', '.join(NIFTI_SUFFIXES)}) or a 2D image ({', '.join(IMAGE_2D_SUFFIXES)})"
    raise DataError(path, f"unsupported image type; expected {expected}")


def image_stem(path: Path) -> str:
    """File name without its image suffix (``ct.nii.gz`` -> ``ct``)."""
    name = path.name
    for suffix in (*NIFTI_SUFFIXES, *IMAGE_2D_SUFFIXES):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _is_image_file(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith((*NIFTI_SUFFIXES, *IMAGE_2D_SUFFIXES))


def find_images(images: str | Path | Sequence[str | Path]) -> list[Path]:
    """Image files from a list of files, a folder (its image files, sorted) or a glob pattern (sorted matches)."""
    if isinstance(images, (str, Path)):
        text = str(images)
        if _GLOB_CHARACTERS & set(text) and not Path(text).exists():
            found = sorted(Path(p) for p in glob.glob(text, recursive=True) if _is_image_file(Path(p)))
            if not found:
                raise DataError(text, "the pattern matches no NIfTI or 2D image file")
            return found
        path = Path(text)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if _is_image_file(p))
            if not found:
                raise DataError(path, "the folder holds no NIfTI or 2D image file")
            return found
        images = [path]
    paths = [Path(p) for p in images]
    if not paths:
        raise ValueError("no images given")
    for path in paths:
        if not path.is_file():
            raise DataError(path, "file not found")
        spatial_dims_of(path)
    return paths


# ------------------------------------------------------------------------------------------ prompts as written
@dataclass(frozen=True)
class ObjectSpec:
    """One object to segment, as the user wrote it (original image coordinates, not yet checked)."""

    name: str | None
    points: Any
    labels: Any
    space: str
    box: Any
    source: str  # where it came from, for messages (e.g. "'ct.nii.gz', object 0")


def _object_from_json(entry: Any, source: str, where: Path | str) -> ObjectSpec:
    if not isinstance(entry, Mapping):
        raise DataError(where, f"{source}: expected an object {{'points': ..., 'box': ...}}, got {entry!r}")
    unknown = sorted(set(entry) - _OBJECT_FIELDS)
    if unknown:
        raise DataError(where, f"{source}: unknown fields {unknown}; known fields: {sorted(_OBJECT_FIELDS)}")
    return ObjectSpec(
        name=entry.get("name"),
        points=entry.get("points"),
        labels=entry.get("labels"),
        space=entry.get("space", "voxel"),
        box=entry.get("box"),
        source=source,
    )


def read_prompts(prompts: str | Path | Mapping[str, Any]) -> tuple[dict[str, list[ObjectSpec]], Path, Path | str]:
    """Parse a prompts JSON file (or its content as a dict).

    Returns image key -> objects, the folder relative keys resolve against (the file's folder; the working
    directory for a dict) and what error messages name as the source.
    """
    if isinstance(prompts, Mapping):
        content, folder, where = prompts, Path.cwd(), "prompts"
    else:
        where = Path(prompts)
        folder = where.parent
        content = read_json(where, "the prompts JSON")
    if not isinstance(content, Mapping) or not content:
        raise DataError(where, "expected a non-empty JSON object {image: object or [objects]}")
    parsed = {}
    for key, value in content.items():
        entries = value if isinstance(value, list) else [value]
        if not entries:
            raise DataError(where, f"{key!r}: the list of objects is empty")
        parsed[str(key)] = [_object_from_json(entry, f"{key!r}, object {i}", where) for i, entry in enumerate(entries)]
    return parsed, folder, where


def match_prompts(
    images: list[Path], parsed: dict[str, list[ObjectSpec]], folder: Path, where: Path | str
) -> dict[Path, list[ObjectSpec]]:
    """Pair each image with its prompt entry (see the module docstring for the matching rules)."""
    by_resolved = {p.resolve(): p for p in images}
    matched: dict[Path, list[ObjectSpec]] = {}
    for key, objects in parsed.items():
        key_path = (Path(key) if Path(key).is_absolute() else folder / key).resolve()
        hits = [by_resolved[key_path]] if key_path in by_resolved else []
        if not hits and Path(key).name == key:
            hits = [p for p in images if p.name == key]
        if len(hits) != 1:
            problem = "names none of the images" if not hits else f"matches several images: {[str(p) for p in hits]}"
            raise DataError(where, f"prompt entry {key!r} {problem} (give its path to disambiguate)")
        if hits[0] in matched:
            raise DataError(where, f"two prompt entries name the same image {hits[0]}")
        matched[hits[0]] = objects
    missing = [str(p) for p in images if p not in matched]
    if missing:
        raise DataError(where, f"no prompts for image(s) {missing}")
    return matched


def output_names(stem: str, objects: list[ObjectSpec], spatial_dims: int, where: Path | str) -> list[str]:
    """``<stem>_mask<ext>`` for a lone unnamed object, ``<stem>_<name or index>_mask<ext>`` otherwise."""
    suffix = MASK_SUFFIX[spatial_dims]
    if len(objects) == 1:
        name = objects[0].name
        return [f"{stem}_{name}_mask{suffix}" if name else f"{stem}_mask{suffix}"]
    parts = [obj.name if obj.name is not None else str(i) for i, obj in enumerate(objects)]
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise DataError(where, f"objects of {stem!r} share the names {repeated}; give each a distinct name")
    return [f"{stem}_{part}_mask{suffix}" for part in parts]




def check_name(obj: ObjectSpec, where: Path | str) -> None:
    """An object name must be usable in a file name."""
    if obj.name is not None and (not isinstance(obj.name, str) or not _NAME_PATTERN.match(obj.name)):
        raise DataError(where, f"{obj.source}: object name {obj.name!r} must be letters, digits, '.', '_' or '-'")


def object_prompts(obj: ObjectSpec, shape: Sequence[int], affine: np.ndarray | None, where: Path | str) -> Prompts:
    """One written object as prompt containers on its image's grid (index order; world points converted to voxels).

    Shapes and values are checked here (:class:`~zoo.errors.DataError` naming ``where``); whether the prompts lie
    inside the image and suit the model is the processor's check.
    """
    dims = len(shape)
    space = "voxel" if obj.space == "pixel" else obj.space
    if space not in ("voxel", "world", "world_lps"):
        expected = "'voxel' ('pixel'), 'world' (RAS mm) or 'world_lps' (LPS mm)"
        raise DataError(where, f"{obj.source}: unknown coordinate space {obj.space!r}; expected {expected}")
    if dims == 2 and space != "voxel":
        raise DataError(where, f"{obj.source}: 2D images have no world coordinates; give pixels [x, y]")
    if obj.points is None and obj.box is None:
        raise DataError(where, f"{obj.source}: give 'points', a 'box' or both")
    if obj.points is None and obj.labels is not None:
        raise DataError(where, f"{obj.source}: 'labels' given without 'points'")
    try:
        points = boxes = None
        if obj.points is not None:
            coords = obj.points
            if space != "voxel":
                if affine is None:
                    raise DataError(where, f"{obj.source}: world coordinates need the image's affine")
                coords = world_to_voxel(np.asarray(coords, dtype=np.float64).reshape(-1, 3), affine, space)
            points = points_from_user(coords, obj.labels, shape, "xy" if dims == 2 else "index")
        if obj.box is not None:
            if dims != 2:
                raise PromptError("3D images take points only (SAM-Med3D has no box prompt)")
            boxes = boxes_from_user(obj.box, shape)
            if boxes.batch_size != 1:
                raise PromptError(f"an object has one box [x0, y0, x1, y1], got {obj.box!r}")
    except PromptError as err:
        raise DataError(where, f"{obj.source}: {err.problem}") from None
    return Prompts(points, boxes)
