"""Images with user prompts and no label, preprocessed exactly like evaluation, for ``zoo predict``.

Prompts come from a JSON file (or the same content as a dict), or, for a single image, from init arguments.

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
  RAS: x grows to the patient's right, y to anterior, z to superior; 3D Slicer shows RAS); ``world_lps``: ``[x, y, z]``
  in mm, LPS+ (DICOM, ITK, SimpleITK). 2D: ``[x, y]`` pixels (column, row), as SAM. Coordinates are continuous;
  an integer is the centre of that voxel/pixel, and a point must lie between the first and last centre
  (``0 <= c <= size - 1`` on every axis).
* ``labels``: one per point, 1 foreground or 0 background (default: all 1).
* ``space``: ``voxel`` (default; ``pixel`` is a synonym), ``world`` or ``world_lps``; world spaces are 3D only.
* ``box`` (2D only): ``[x0, y0, x1, y1]`` pixel edges with ``x1``/``y1`` exclusive (the box of a mask whose
  columns are ``x0 .. x1 - 1``), inside the image: ``0 <= x0 < x1 <= width``. SAM-Med3D has no box prompt.
* ``name`` (optional): the object's name (letters, digits, ``.``, ``_``, ``-``), used in the output file name.

Every object needs points or a box. 3D: each object is segmented in its own crop, and all its points must fit in
that crop. 2D: an image's objects share one image embedding.

Preprocessing
-------------
3D: the evaluation pipeline of :func:`~zoo.data.transforms3d.build_transforms_3d` (RAS, resampling to
``spacing``, ``crop_size`` crop, intensity normalisation); with no label to centre on, the crop is centred on the
bounding box of the object's points, through the same crop transform. 2D: SAM-Med2D's evaluation preprocessing
(``preprocessing_2d="sam_med2d"``: centred padding or nearest stretch, :mod:`zoo.data.transforms2d`) or SAM-UNet's
(``"sam_unet"``: longest side resized, bottom/right padding). Prompts move into model-input space through the same
geometry (:class:`~zoo.geometry.index_map.IndexMap`); a prompt outside the image or the crop is an error naming the
file and the point, never clipped.

Batch format (:func:`collate_prompted`; ``B`` items; an item is one object (3D) or one image (2D))
------------------------------------------------------------------------------------------------------
=================  ==============================  ================================================================
key                type / shape                    meaning
=================  ==============================  ================================================================
``image``          float32 ``B x C x *S``          model input (3D: ``1 x S^3`` crop; 2D: ``3 x S x S``)
``image_path``     list[str]                       source image
``objects``        list of lists of dicts          per item, its objects: ``name`` (str), ``output_name`` (the
                                                   mask's file name), ``points`` (``N x D`` float32 model-input
                                                   coordinates in tensor-index order, or None), ``labels`` (``N``
                                                   int64 or None), ``box`` (``2 x D`` float32 ``[lo, hi)`` on the
                                                   model-input grid, or None)
``geometry``       list of dicts                   what inverts the preprocessing: 3D ``crop_affine``,
                                                   ``original_affine`` (float64 ``4 x 4``), ``original_shape``
                                                   (int64 ``3``); 2D ``original_size`` (int64 ``2``),
                                                   ``preprocessing`` and its parameters (see ``_geometry_2d``)
``spatial_dims``   int                             2 or 3
=================  ==============================  ================================================================
"""

from __future__ import annotations

import glob
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from zoo.data.dataset3d import _data_error_in
from zoo.errors import DataError
from zoo.io.json_files import read_json
from zoo.io.nifti import load_image, read_header
from zoo.io.png import read_image
from zoo.data.transforms2d import SAM_PIXEL_MEAN, SAM_PIXEL_STD, letterbox_index_map, prepare_image_and_masks
from zoo.data.transforms3d import (
    IMAGE_KEY,
    LABEL_KEY,
    PATH_KEY,
    CropOrPadAroundTargetd,
    Normalization,
    as_triple,
    build_transforms_3d,
    crop_to_original_map,
)
from zoo.inference import sam_unet_processing
from zoo.geometry.index_map import IndexMap
from zoo.prompts.types import BACKGROUND_LABEL, FOREGROUND_LABEL, BoxPrompts, PointPrompts

CoordinateSpace = Literal["voxel", "pixel", "world", "world_lps"]
Preprocessing2D = Literal["sam_med2d", "sam_unet"]

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


def _match_prompts(
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


# --------------------------------------------------------------------------------------- checked prompts
@dataclass(frozen=True)
class CheckedObject:
    """One object whose prompts passed every check that needs no preprocessing.

    ``points`` are continuous element indices of the original image in tensor-index order (3D: file voxel
    ``i, j, k``; 2D: ``row, col``); ``box`` is ``[lo, hi)`` per axis in the same order (2D only).
    """

    name: str | None
    source: str
    points: np.ndarray | None
    labels: np.ndarray | None
    box: np.ndarray | None
    output_name: str


def _as_array(values: Any, what: str, obj: ObjectSpec, where: Path | str) -> np.ndarray:
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise DataError(where, f"{obj.source}: {what} must be numbers, got {values!r}") from exc
    if not np.isfinite(array).all():
        raise DataError(where, f"{obj.source}: {what} contain NaN or infinite values: {values!r}")
    return array


def _check_name(obj: ObjectSpec, where: Path | str) -> None:
    if obj.name is not None and (not isinstance(obj.name, str) or not _NAME_PATTERN.match(obj.name)):
        raise DataError(where, f"{obj.source}: object name {obj.name!r} must be letters, digits, '.', '_' or '-'")


def _check_space(obj: ObjectSpec, dims: int, where: Path | str) -> str:
    space = "voxel" if obj.space == "pixel" else obj.space
    if space not in ("voxel", "world", "world_lps"):
        expected = "'voxel' ('pixel'), 'world' (RAS mm) or 'world_lps' (LPS mm)"
        raise DataError(where, f"{obj.source}: unknown coordinate space {obj.space!r}; expected {expected}")
    if dims == 2 and space != "voxel":
        raise DataError(where, f"{obj.source}: 2D images have no world coordinates; give pixels [x, y]")
    return space


def _points_and_labels(obj: ObjectSpec, dims: int, where: Path | str) -> tuple[np.ndarray, np.ndarray] | None:
    if obj.points is None:
        if obj.labels is not None:
            raise DataError(where, f"{obj.source}: 'labels' given without 'points'")
        return None
    coords = _as_array(obj.points, "points", obj, where)
    if coords.ndim != 2 or coords.shape[1] != dims or len(coords) == 0:
        layout = "[[i, j, k], ...] (or [[x, y, z], ...] in world space)" if dims == 3 else "[[x, y], ...]"
        problem = f"points of a {dims}D image must be a non-empty list {layout}, got {obj.points!r}"
        raise DataError(where, f"{obj.source}: {problem}")
    labels = np.ones(len(coords)) if obj.labels is None else _as_array(obj.labels, "labels", obj, where)
    if labels.shape != (len(coords),):
        raise DataError(where, f"{obj.source}: {len(coords)} points but labels {obj.labels!r}")
    if not np.isin(labels, (BACKGROUND_LABEL, FOREGROUND_LABEL)).all():
        raise DataError(where, f"{obj.source}: labels must be 1 (foreground) or 0 (background), got {obj.labels!r}")
    return coords, labels.astype(np.int64)


def world_to_voxel(points: np.ndarray, affine: np.ndarray, space: str) -> np.ndarray:
    """``N x 3`` world points (RAS, or LPS for ``world_lps``) -> continuous voxel indices of the file."""
    ras = points * np.array([-1.0, -1.0, 1.0]) if space == "world_lps" else points
    homogeneous = np.concatenate([ras, np.ones((len(ras), 1))], axis=1)
    return np.linalg.solve(affine, homogeneous.T).T[:, :3]


def _check_inside(
    indices: np.ndarray,
    written: np.ndarray,
    shape: Sequence[int],
    axis_names: Sequence[str],
    space: str,
    obj: ObjectSpec,
    path: Path,
) -> None:
    """Every point (``indices``, axes as in ``shape``) must lie between the first and last element centre."""
    outside = (indices < 0) | (indices > np.asarray(shape, dtype=np.float64) - 1)
    if outside.any():
        row = int(np.nonzero(outside.any(axis=1))[0][0])
        given = f"{written[row].tolist()} ({space})"
        if space.startswith("world"):
            given += f", voxel {np.round(indices[row], 3).tolist()}"
        bounds = ", ".join(f"{n} in [0, {int(s) - 1}]" for n, s in zip(axis_names, shape))
        raise DataError(path, f"{obj.source}: point {row} at {given} lies outside the image ({bounds})")


def _check_3d(obj: ObjectSpec, path: Path, where: Path | str, output_name: str) -> CheckedObject:
    space = _check_space(obj, 3, where)
    if obj.box is not None:
        raise DataError(where, f"{obj.source}: 3D images take points only (SAM-Med3D has no box prompt)")
    parsed = _points_and_labels(obj, 3, where)
    if parsed is None:
        raise DataError(where, f"{obj.source}: a 3D object needs 'points'")
    written, labels = parsed
    header = read_header(path)
    voxels = written if space == "voxel" else world_to_voxel(written, header.affine, space)
    _check_inside(voxels, written, header.shape[:3], ("i", "j", "k"), space, obj, path)
    return CheckedObject(obj.name, obj.source, voxels, labels, None, output_name)


def _image_size_2d(path: Path) -> tuple[int, int]:
    """``(height, width)`` from the file header, without decoding the pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as exc:  # PIL raises many types for unreadable files
        raise DataError(path, f"cannot read the image ({type(exc).__name__}: {exc})") from exc
    return int(height), int(width)


def _check_2d(obj: ObjectSpec, path: Path, where: Path | str, output_name: str) -> CheckedObject:
    _check_space(obj, 2, where)
    parsed = _points_and_labels(obj, 2, where)
    if parsed is None and obj.box is None:
        raise DataError(where, f"{obj.source}: give 'points', a 'box' or both")
    height, width = _image_size_2d(path)
    rows_cols = labels = box = None
    if parsed is not None:
        xy, labels = parsed
        _check_inside(xy, xy, (width, height), ("x", "y"), "pixel", obj, path)
        rows_cols = np.ascontiguousarray(xy[:, ::-1])
    if obj.box is not None:
        corners = _as_array(obj.box, "box", obj, where)
        if corners.shape != (4,):
            raise DataError(where, f"{obj.source}: a box is [x0, y0, x1, y1], got {obj.box!r}")
        x0, y0, x1, y1 = corners.tolist()
        if not (0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height):
            bounds = f"0 <= x0 < x1 <= {width}, 0 <= y0 < y1 <= {height}"
            raise DataError(path, f"{obj.source}: box {obj.box} is not a box inside the image ({bounds})")
        box = np.array([[y0, x0], [y1, x1]])
    return CheckedObject(obj.name, obj.source, rows_cols, labels, box, output_name)


def _output_names(stem: str, objects: list[ObjectSpec], spatial_dims: int, where: Path | str) -> list[str]:
    """``<stem>_mask<ext>`` for a lone object, ``<stem>_<name or index>_mask<ext>`` when there are several."""
    suffix = MASK_SUFFIX[spatial_dims]
    if len(objects) == 1:
        return [f"{stem}_mask{suffix}"]
    parts = [obj.name if obj.name is not None else str(i) for i, obj in enumerate(objects)]
    repeated = sorted({p for p in parts if parts.count(p) > 1})
    if repeated:
        raise DataError(where, f"objects of {stem!r} share the names {repeated}; give each a distinct name")
    return [f"{stem}_{part}_mask{suffix}" for part in parts]


# ------------------------------------------------------------------------------------------------------ 3D
class PromptCrop3D:
    """The evaluation pipeline with the crop centred on prompts instead of a label.

    ``build_transforms_3d(train=False)`` is split at its crop: the steps before it (orientation, resampling) run
    on the image (with a placeholder label); the crop and the steps after it run with a marker label holding the
    prompts' voxels on the resampled grid, so the crop centres on the bounding box of the prompts exactly as
    evaluation centres on the label's.
    """

    def __init__(
        self,
        spacing: float | Sequence[float],
        crop_size: int | Sequence[int],
        normalization: Normalization,
        ct_window: tuple[float, float],
        clip_range: tuple[float, float] | None,
    ) -> None:
        pipeline = build_transforms_3d(
            train=False,
            spacing=spacing,
            crop_size=crop_size,
            crop_center="label_bbox",
            normalization=normalization,
            ct_window=ct_window,
            clip_range=clip_range,
            flips=False,
        )
        steps = list(pipeline.transforms)
        split = next(i for i, step in enumerate(steps) if isinstance(step, CropOrPadAroundTargetd))
        self.resample, self.crop_and_normalise = Compose(steps[:split]), Compose(steps[split:])
        self.crop_shape = tuple(int(s) for s in as_triple(crop_size, "crop_size"))

    def __call__(self, path: Path, obj: CheckedObject) -> tuple[Tensor, Tensor, np.ndarray]:
        """Model-input crop ``1 x S^3``, its affine, and the object's points in crop coordinates (``N x 3``)."""
        volume = load_image(path)
        affine = torch.from_numpy(volume.affine)
        data = {
            IMAGE_KEY: MetaTensor(torch.from_numpy(volume.array)[None], affine=affine),
            # A placeholder for the label key the resampling steps expect; replaced before the crop, so one voxel.
            LABEL_KEY: MetaTensor(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), affine=affine.clone()),
            PATH_KEY: str(path),
        }
        resampled = self._run(self.resample, data)
        grid = tuple(resampled[IMAGE_KEY].shape[1:])
        voxels = torch.from_numpy(obj.points)[None]
        marked = IndexMap.from_affines(affine, resampled[IMAGE_KEY].affine, volume.shape, grid).map_coords(voxels)[0]
        # The marker only decides the crop centre; the prompts keep their exact coordinates. A point on the last
        # voxel centre can map a hair past the resampled grid, hence the clamp, for the marker alone.
        marker_voxels = torch.minimum(torch.round(marked).long().clamp(min=0), torch.tensor(grid) - 1)
        marker = torch.zeros(1, *grid, dtype=torch.uint8)
        marker[0, marker_voxels[:, 0], marker_voxels[:, 1], marker_voxels[:, 2]] = 1
        resampled[LABEL_KEY] = MetaTensor(marker, affine=resampled[IMAGE_KEY].affine.clone())
        crop = self._run(self.crop_and_normalise, resampled)[IMAGE_KEY]
        crop_affine = crop.affine.to(torch.float64).clone()
        to_crop = crop_to_original_map(crop_affine, affine, self.crop_shape, volume.shape).inverse()
        in_crop = to_crop.map_coords(voxels)[0].numpy()
        outside = (in_crop < -0.5) | (in_crop > np.asarray(self.crop_shape) - 0.5)
        if outside.any():
            row = int(np.nonzero(outside.any(axis=1))[0][0])
            extent = np.ptp(marked.numpy(), axis=0)
            problem = (
                f"point {row} (voxel {np.round(obj.points[row], 3).tolist()}) falls outside the {self.crop_shape} "
                f"crop centred on the object's points: they span {np.round(extent, 1).tolist()} voxels after "
                "resampling; split them into objects that each fit one crop"
            )
            raise DataError(path, f"{obj.source}: {problem}")
        return crop.as_tensor().to(torch.float32).contiguous(), crop_affine, in_crop

    @staticmethod
    def _run(transform: Compose, data: dict[str, Any]) -> dict[str, Any]:
        try:
            return transform(data)
        except Exception as exc:
            found = _data_error_in(exc)
            if found is not None:
                raise found from exc
            raise


# ------------------------------------------------------------------------------------------------------ 2D
def _geometry_2d(
    image: np.ndarray,
    image_size: int,
    preprocessing: Preprocessing2D,
    pixel_mean: Sequence[float],
    pixel_std: Sequence[float],
) -> tuple[Tensor, IndexMap, dict[str, Any]]:
    """Model input ``3 x S x S``, the original -> input index map, and the geometry that inverts it.

    Geometry: ``original_size``, ``preprocessing``, ``image_size``; for ``sam_med2d`` also ``padded`` (bool) and
    ``pad_offset`` (top, left); for ``sam_unet`` ``input_size`` (the resized image's ``h x w`` before padding).
    """
    original = (int(image.shape[0]), int(image.shape[1]))
    geometry: dict[str, Any] = {
        "original_size": torch.tensor(original, dtype=torch.int64),
        "preprocessing": preprocessing,
        "image_size": image_size,
    }
    if preprocessing == "sam_med2d":
        model_input, _, letterbox = prepare_image_and_masks(image, [], image_size, pixel_mean, pixel_std)
        geometry["padded"] = letterbox.padded
        geometry["pad_offset"] = torch.tensor((letterbox.top, letterbox.left), dtype=torch.int64)
        return model_input, letterbox_index_map(letterbox), geometry
    if preprocessing == "sam_unet":
        resized = sam_unet_processing.resize_longest_side(image, image_size)
        channels_first = torch.from_numpy(np.ascontiguousarray(resized)).permute(2, 0, 1)
        model_input = sam_unet_processing.preprocess(channels_first, image_size, pixel_mean, pixel_std)
        input_size = (int(resized.shape[0]), int(resized.shape[1]))
        geometry["input_size"] = torch.tensor(input_size, dtype=torch.int64)
        index_map = IndexMap.resize(original, input_size, convention="nearest_floor").then(
            IndexMap.crop_or_pad(input_size, (0, 0), (image_size, image_size))
        )
        return model_input, index_map, geometry
    raise ValueError(f"unknown 2D preprocessing {preprocessing!r}; expected 'sam_med2d' or 'sam_unet'")


# ------------------------------------------------------------------------------------------------- dataset
@dataclass(frozen=True)
class PredictItem:
    """One dataset item: an image and the objects segmented from it (3D: exactly one)."""

    path: Path
    objects: list[CheckedObject]
    spatial_dims: int


class PromptedImagesDataset(Dataset[dict[str, Any]]):
    """Loads and preprocesses one :class:`PredictItem` per index and moves its prompts into model-input space."""

    def __init__(
        self,
        items: Sequence[PredictItem],
        crop_3d: PromptCrop3D | None = None,
        image_size_2d: int = 256,
        preprocessing_2d: Preprocessing2D = "sam_med2d",
        pixel_mean: Sequence[float] = SAM_PIXEL_MEAN,
        pixel_std: Sequence[float] = SAM_PIXEL_STD,
    ) -> None:
        self.items = list(items)
        self.crop_3d, self.image_size_2d, self.preprocessing_2d = crop_3d, image_size_2d, preprocessing_2d
        self.pixel_mean, self.pixel_std = tuple(pixel_mean), tuple(pixel_std)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if item.spatial_dims == 3:
            image, objects, geometry = self._item_3d(item)
        else:
            image, objects, geometry = self._item_2d(item)
        return {
            "image": image,
            "image_path": str(item.path),
            "objects": objects,
            "geometry": geometry,
            "spatial_dims": item.spatial_dims,
        }

    def _item_3d(self, item: PredictItem) -> tuple[Tensor, list[dict[str, Any]], dict[str, Any]]:
        if self.crop_3d is None:
            raise ValueError("3D items need a PromptCrop3D")
        (obj,) = item.objects
        image, crop_affine, in_crop = self.crop_3d(item.path, obj)
        entry = _entry(obj, torch.from_numpy(in_crop).to(torch.float32), None)
        header = read_header(item.path)
        geometry = {
            "crop_affine": crop_affine,
            "original_affine": torch.from_numpy(header.affine).to(torch.float64),
            "original_shape": torch.tensor(header.shape[:3], dtype=torch.int64),
        }
        return image, [entry], geometry

    def _item_2d(self, item: PredictItem) -> tuple[Tensor, list[dict[str, Any]], dict[str, Any]]:
        pixels = read_image(item.path)
        size = (int(pixels.shape[0]), int(pixels.shape[1]))
        image, to_input, geometry = _geometry_2d(
            pixels, self.image_size_2d, self.preprocessing_2d, self.pixel_mean, self.pixel_std
        )
        entries = []
        for obj in item.objects:
            points = box = None
            if obj.points is not None:
                original = PointPrompts(
                    torch.from_numpy(obj.points).to(torch.float32)[None], torch.from_numpy(obj.labels)[None], size
                )
                points = original.mapped(to_input).coords[0]
            if obj.box is not None:
                lo, hi = torch.from_numpy(obj.box).to(torch.float32)
                moved = BoxPrompts(lo[None], hi[None], torch.ones(1, dtype=torch.bool), size).mapped(to_input)
                box = torch.stack([moved.lo[0], moved.hi[0]])
            entries.append(_entry(obj, points, box))
        return image, entries, geometry


def _entry(obj: CheckedObject, points: Tensor | None, box: Tensor | None) -> dict[str, Any]:
    return {
        "name": obj.name or "",
        "output_name": obj.output_name,
        "points": points,
        "labels": None if points is None else torch.from_numpy(obj.labels),
        "box": box,
    }


def collate_prompted(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the model inputs; keep paths, objects and geometry as per-item lists."""
    dims = {s["spatial_dims"] for s in samples}
    if len(dims) != 1:
        raise ValueError("a batch mixes 2D and 3D items")
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "image_path": [s["image_path"] for s in samples],
        "objects": [s["objects"] for s in samples],
        "geometry": [s["geometry"] for s in samples],
        "spatial_dims": dims.pop(),
    }


# --------------------------------------------------------------------------------------------- data module
class PromptedImagesDataModule(pl.LightningDataModule):
    """Unlabelled images with user prompts for ``zoo predict`` (``predict_dataloader`` only).

    Every prompt is checked in :meth:`setup`, before any model runs, except whether a 3D object's points fit one
    crop, which is known only after resampling (checked when the item loads).

    Args:
        images: image files (a list), a folder (its NIfTI / 2D image files) or a glob pattern. Optional with a
            ``prompts`` file or dict: then its keys are the images.
        prompts: prompts JSON file, or its content as a dict (schema in the module docstring).
        points, point_labels, box, coordinate_space, object_name: prompts for a single image given directly
            (one object), instead of ``prompts``; same meaning as the JSON fields.
        spacing, crop_size, normalization, ct_window, clip_range: the 3D evaluation preprocessing
            (:class:`~zoo.data.datamodule3d.NiftiDataModule3D`'s arguments); ``crop_size`` must equal the model's
            ``image_size``.
        image_size: 2D model input size (the model's ``image_size``).
        preprocessing_2d: ``sam_med2d`` (SAM-Med2D's evaluation geometry, also what the 2D training data uses) or
            ``sam_unet`` (SAM-UNet's: longest side resized, bottom/right padding).
        pixel_mean, pixel_std: 2D normalisation (SAM's ImageNet statistics on 0..255).

    Example (3D, one object, prompt in world coordinates)::

        data = PromptedImagesDataModule(images="ct.nii.gz", points=[[-20.5, 12.0, 40.0]], coordinate_space="world")
    """

    def __init__(
        self,
        images: str | list[str] | None = None,
        prompts: str | dict[str, Any] | None = None,
        points: list[list[float]] | None = None,
        point_labels: list[int] | None = None,
        box: list[float] | None = None,
        coordinate_space: CoordinateSpace = "voxel",
        object_name: str | None = None,
        spacing: float | tuple[float, float, float] = 1.5,
        crop_size: int = 128,
        normalization: Normalization = "zscore_positive",
        ct_window: tuple[float, float] = (-1000.0, 1000.0),
        clip_range: tuple[float, float] | None = None,
        image_size: int = 256,
        preprocessing_2d: Preprocessing2D = "sam_med2d",
        pixel_mean: tuple[float, float, float] = SAM_PIXEL_MEAN,
        pixel_std: tuple[float, float, float] = SAM_PIXEL_STD,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        direct = points is not None or box is not None
        if prompts is not None and direct:
            raise ValueError("give prompts either as a prompts file/dict or as points/box arguments, not both")
        if prompts is None and not direct:
            raise ValueError("no prompts: give a prompts JSON file (prompts=...) or points=/box= for one image")
        if direct and images is None:
            raise ValueError("points=/box= prompt a single image: give it with images=...")
        if point_labels is not None and points is None:
            raise ValueError("point_labels given without points")
        self.images, self.prompts = images, prompts
        self.direct = ObjectSpec(object_name, points, point_labels, coordinate_space, box, "prompt") if direct else None
        self.spacing, self.crop_size, self.normalization = spacing, crop_size, normalization
        self.ct_window, self.clip_range = ct_window, clip_range
        self.image_size, self.preprocessing_2d = image_size, preprocessing_2d
        self.pixel_mean, self.pixel_std = pixel_mean, pixel_std
        self.batch_size, self.num_workers = batch_size, num_workers
        self.items: list[PredictItem] = []

    def setup(self, stage: str | None = None) -> None:
        """Find the images, read, pair and check the prompts, and plan the output file names."""
        if self.direct is not None:
            paths = find_images(self.images)
            if len(paths) != 1:
                raise ValueError(
                    f"points=/box= prompt a single image, but images= gives {len(paths)}; "
                    "use a prompts JSON file for several images"
                )
            # Errors in prompts given directly name the image they were given for.
            self.items = self._plan({paths[0]: [self.direct]}, paths[0])
            return
        parsed, folder, where = read_prompts(self.prompts)
        if self.images is None:
            matched = {(Path(k) if Path(k).is_absolute() else folder / k): v for k, v in parsed.items()}
            for path in matched:
                if not path.is_file():
                    raise DataError(where, f"prompt entry names a missing image: {path}")
        else:
            matched = _match_prompts(find_images(self.images), parsed, folder, where)
        self.items = self._plan(matched, where)

    @staticmethod
    def _plan(matched: Mapping[Path, list[ObjectSpec]], where: Path | str) -> list[PredictItem]:
        dims = {spatial_dims_of(p) for p in matched}
        if len(dims) != 1:
            raise ValueError(f"the images mix 2D and 3D files: {[str(p) for p in matched]}")
        spatial_dims = dims.pop()
        check = _check_3d if spatial_dims == 3 else _check_2d
        items, writers = [], {}
        for path, objects in matched.items():
            for obj in objects:
                _check_name(obj, where)
            names = _output_names(image_stem(path), objects, spatial_dims, where)
            for name in names:
                if name in writers:
                    raise DataError([writers[name], path], f"both images would write {name}; rename one of them")
                writers[name] = path
            checked = [check(obj, path, where, name) for obj, name in zip(objects, names)]
            if spatial_dims == 3:
                items += [PredictItem(path, [obj], 3) for obj in checked]
            else:
                items.append(PredictItem(path, checked, 2))
        return items

    @property
    def planned_outputs(self) -> list[str]:
        """File names of every mask this run will write (after :meth:`setup`)."""
        return [obj.output_name for item in self.items for obj in item.objects]

    def predict_dataset(self) -> PromptedImagesDataset:
        if not self.items:
            self.setup("predict")
        crop = None
        if self.items[0].spatial_dims == 3:
            crop = PromptCrop3D(self.spacing, self.crop_size, self.normalization, self.ct_window, self.clip_range)
        return PromptedImagesDataset(
            self.items, crop, self.image_size, self.preprocessing_2d, self.pixel_mean, self.pixel_std
        )

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.predict_dataset(),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_prompted,
        )
