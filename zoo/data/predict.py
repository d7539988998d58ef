"""Images with user prompts and no label, for ``zoo predict``: every image and prompt goes through the model's processor.

Prompts come from a JSON file (or the same content as a dict; schema in :mod:`zoo.data.prompt_files`), or, for a
single image, from init arguments. Every prompt is checked in :meth:`PromptedImagesDataModule.setup`, before any
model runs, by the processor's one validator (inside the image, a kind the model takes); a 3D object whose
points do not fit one crop is refused when its item loads.

Batch format (:func:`collate_prompted`; ``B`` items; an item is one object (3D: each object gets its own crop) or
one image with all its objects (2D: they share one image embedding))
================  ==========================  ======================================================================
key               type                        meaning
================  ==========================  ======================================================================
``image``         float32 ``B x C x *S``      model inputs
``image_path``    list[str]                   source images
``frames``        list[ImageFrame]            what maps each item back to its image's grid
``objects``       list of lists of dicts      per item, its objects: ``name``, ``output_name`` (the mask's file
                                              name), ``prompts`` (:class:`~zoo.prompts.types.Prompts` on the
                                              model-input grid)
================  ==========================  ======================================================================
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from zoo.errors import DataError, PromptError
from zoo.io.nifti import load_image, load_stored, read_header
from zoo.io.png import read_image
from zoo.data.prompt_files import (
    ObjectSpec,
    check_name,
    find_images,
    image_stem,
    match_prompts,
    object_prompts,
    output_names,
    read_prompts,
    spatial_dims_of,
)
from zoo.data.slicer import _PLANES, extract_slice, from_ras, insert_slice, to_ras, to_uint8
from zoo.processors import Processor, processor_from_spec
from zoo.prompts.types import Prompts
from zoo.prompts.validate import check_kinds

CoordinateSpace = str  # "voxel" | "pixel" | "world" | "world_lps"


@dataclass(frozen=True)
class PlannedObject:
    """One object to segment: as written, where it came from, and its output file name."""

    spec: ObjectSpec
    where: str
    output_name: str

    @property
    def source(self) -> str:
        return f"{self.where}: {self.spec.source}" if self.spec.source != "prompt" else self.where


@dataclass(frozen=True)
class PredictItem:
    """One dataset item: an image and the objects segmented from it (3D: exactly one)."""

    path: Path
    objects: list[PlannedObject]
    spatial_dims: int


def _image_shape(path: Path, dims: int) -> tuple[tuple[int, ...], Any]:
    """The image's spatial shape (and 3D affine) from its header, without decoding the pixels."""
    if dims == 3:
        header = read_header(path)
        return tuple(header.shape[:3]), header.affine
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Exception as exc:  # PIL raises many types for unreadable files
        raise DataError(path, f"cannot read the image ({type(exc).__name__}: {exc})") from exc
    return (int(height), int(width)), None


class PromptedImagesDataset(Dataset[dict[str, Any]]):
    """Loads one :class:`PredictItem` per index and prepares it with the processor (prompts in model space)."""

    def __init__(self, items: Sequence[PredictItem], processor: Processor) -> None:
        self.items = list(items)
        self.processor = processor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        if item.spatial_dims == 3:
            volume = load_stored(item.path)
            shape, affine, image = volume.shape, volume.affine, volume
        else:
            image = read_image(item.path)
            shape, affine = (int(image.shape[0]), int(image.shape[1])), None
        prompts = [object_prompts(obj.spec, shape, affine, obj.where) for obj in item.objects]
        # 3D items hold one object, whose points decide the crop; 2D objects share the image.
        frame = self.processor.prepare(image, prompts[0] if item.spatial_dims == 3 else None, str(item.path))
        objects = []
        for obj, original in zip(item.objects, prompts):
            try:
                on_model = self.processor.to_model_space(original, frame, obj.source)
            except PromptError as err:
                raise DataError(item.path, str(err)) from None
            objects.append({"name": obj.spec.name or "", "output_name": obj.output_name, "prompts": on_model})
        return {
            "image": frame.model_input,
            "image_path": str(item.path),
            "frame": frame,
            "objects": objects,
            "spatial_dims": item.spatial_dims,
        }


def collate_prompted(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the model inputs; keep paths, frames and objects as per-item lists."""
    dims = {s["spatial_dims"] for s in samples}
    if len(dims) != 1:
        raise ValueError("a batch mixes 2D and 3D items")
    return {
        "image": torch.stack([s["image"] for s in samples]),
        "image_path": [s["image_path"] for s in samples],
        "frames": [s["frame"] for s in samples],
        "objects": [s["objects"] for s in samples],
        "spatial_dims": dims.pop(),
    }


class PromptedImagesDataModule(pl.LightningDataModule):
    """Unlabelled images with user prompts for ``zoo predict`` (``predict_dataloader`` only).

    Args:
        images: image files (a list), a folder (its NIfTI / 2D image files) or a glob pattern. Optional with a
            ``prompts`` file or dict: then its keys are the images.
        prompts: prompts JSON file, or its content as a dict (schema in :mod:`zoo.data.prompt_files`).
        points, point_labels, box, coordinate_space, object_name: prompts for a single image given directly
            (one object), instead of ``prompts``; same meaning as the JSON fields.
        processor: the model's processor (a :class:`~zoo.processors.Processor`, a processor config dict, or a
            processor type such as ``"sam_unet"``). ``zoo predict`` links it to the model, so the weights choose
            it; ``zoo.training.prediction.predict_masks`` fills it from the model when it is None.

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
        processor: Processor | dict[str, Any] | str | None = None,
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
        self.processor = None if processor is None else processor_from_spec(processor)
        self.batch_size, self.num_workers = batch_size, num_workers
        self.items: list[PredictItem] = []

    def setup(self, stage: str | None = None) -> None:
        """Find the images, read, pair and check the prompts, and plan the output file names."""
        if self.processor is None:
            raise ValueError("PromptedImagesDataModule needs the model's processor (processor=...) before setup")
        if self.direct is not None:
            paths = find_images(self.images)
            if len(paths) != 1:
                raise ValueError(
                    f"points=/box= prompt a single image, but images= gives {len(paths)}; "
                    "use a prompts JSON file for several images"
                )
            self.items = self._plan({paths[0]: [self.direct]}, str(paths[0]))
            return
        parsed, folder, where = read_prompts(self.prompts)
        if self.images is None:
            matched = {(Path(k) if Path(k).is_absolute() else folder / k): v for k, v in parsed.items()}
            for path in matched:
                if not path.is_file():
                    raise DataError(where, f"prompt entry names a missing image: {path}")
        else:
            matched = match_prompts(find_images(self.images), parsed, folder, where)
        self.items = self._plan(matched, str(where))

    def _plan(self, matched: Mapping[Path, list[ObjectSpec]], where: str) -> list[PredictItem]:
        assert self.processor is not None
        dims = {spatial_dims_of(p) for p in matched}
        if len(dims) != 1:
            raise ValueError(f"the images mix 2D and 3D files: {[str(p) for p in matched]}")
        spatial_dims = dims.pop()
        if spatial_dims != self.processor.spatial_dims:
            kind = "NIfTI volumes" if spatial_dims == 3 else "2D images"
            raise DataError(
                where if self.direct is None else list(map(str, matched)),
                f"{self.processor.model_name} segments {self.processor.spatial_dims}D images, these are {kind}",
            )
        items, writers = [], {}
        for path, objects in matched.items():
            for obj in objects:
                check_name(obj, where)
            names = output_names(image_stem(path), objects, spatial_dims, where)
            for name in names:
                if name in writers:
                    raise DataError([writers[name], path], f"both images would write {name}; rename one of them")
                writers[name] = path
            shape, affine = _image_shape(path, spatial_dims)
            planned = [PlannedObject(obj, where, name) for obj, name in zip(objects, names)]
            for obj in planned:
                given = (("points", obj.spec.points), ("boxes", obj.spec.box))
                kinds = {kind for kind, value in given if value is not None}
                check_kinds(kinds, self.processor.prompt_kinds, self.processor.model_name, obj.source)
                prompts = object_prompts(obj.spec, shape, affine, obj.where)
                self.processor.validate(prompts, shape, obj.source)
            if spatial_dims == 3:
                items += [PredictItem(path, [obj], 3) for obj in planned]
            else:
                items.append(PredictItem(path, planned, 2))
        return items

    @property
    def planned_outputs(self) -> list[str]:
        """File names of every mask this run will write (after :meth:`setup`)."""
        return [obj.output_name for item in self.items for obj in item.objects]

    def objects_by_image(self) -> list[tuple[Path, str, int, list[tuple[str | None, str, Prompts]]]]:
        """After :meth:`setup`, per image in order: its path, file stem, spatial dims and objects as
        ``(name, mask file name, prompts on the image's grid)`` (what :func:`zoo.inference.objects.predict_to_folder`
        takes; 3D objects, one item each here, are grouped back by image)."""
        grouped: dict[Path, list[PlannedObject]] = {}
        dims: dict[Path, int] = {}
        for item in self.items:
            grouped.setdefault(item.path, []).extend(item.objects)
            dims[item.path] = item.spatial_dims
        out = []
        for path, objects in grouped.items():
            shape, affine = _image_shape(path, dims[path])
            prompts = [(obj.spec.name, obj.output_name, object_prompts(obj.spec, shape, affine, obj.where))
                       for obj in objects]
            out.append((path, image_stem(path), dims[path], prompts))
        return out

    def predict_dataset(self) -> PromptedImagesDataset:
        if not self.items:
            self.setup("predict")
        assert self.processor is not None
        return PromptedImagesDataset(self.items, self.processor)

    def predict_dataloader(self) -> DataLoader:
        return DataLoader(
            self.predict_dataset(),
            batch_size=self.batch_size,
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=collate_prompted,
        )


# ------------------------------------------------------------------------------------------ volumes for 2D models
@dataclass(frozen=True)
class VolumeSlices:
    """A NIfTI volume as the 2D slices a 2D model segments, and the way back to the file's grid.

    The slices are :mod:`zoo.data.slicer`'s: the volume reoriented to RAS by axis permutations and flips only (every
    pixel is one voxel), shown in the radiological convention (axial: patient right on the image's left, anterior
    at the top), 8-bit by :func:`~zoo.data.slicer.to_uint8` (MedSAM's rule: clip to the window, min-max of the
    clipped volume, truncate; without a window the volume's 0.5 and 99.5 percentiles).

    Attributes:
        path: the NIfTI file.
        plane: ``"axial"``, ``"coronal"`` or ``"sagittal"``.
        images: ``D x H x W`` uint8, ``images[z]`` the ``z``-th slice along the plane's axis (inferior to superior,
            posterior to anterior, right to left).
        affine, shape: the file's affine and voxel shape.
    """

    path: Path
    plane: str
    images: np.ndarray
    affine: np.ndarray
    shape: tuple[int, int, int]

    def display_index(self, voxels: np.ndarray) -> np.ndarray:
        """``N x 3`` voxel indices ``(i, j, k)`` of the file -> ``(column, row, slice)`` of :attr:`images`."""
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(self.affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
        )
        voxels = np.asarray(voxels, dtype=np.float64).reshape(-1, 3)
        ras = np.zeros_like(voxels)
        ras_shape = [0, 0, 0]
        for axis, (target, flip) in enumerate(transform):
            size = self.shape[axis]
            ras[:, int(target)] = size - 1 - voxels[:, axis] if flip == -1 else voxels[:, axis]
            ras_shape[int(target)] = size
        sliced, row_axis, col_axis = _PLANES[self.plane]
        rows = ras_shape[row_axis] - 1 - ras[:, row_axis]
        cols = ras_shape[col_axis] - 1 - ras[:, col_axis]
        return np.stack([cols, rows, ras[:, sliced]], axis=1)

    def box_on_slices(self, box3d: Sequence[float]) -> tuple[float, ...]:
        """A box of voxel indices of the file ``(i0, j0, k0, i1, j1, k1)`` (max inclusive) as
        ``(x_min, y_min, z_min, x_max, y_max, z_max)`` of :attr:`images` (column, row, slice; max inclusive), the
        3D box :func:`zoo.inference.propagate_box` takes."""
        if len(box3d) != 6:
            raise DataError(self.path, f"a 3D box is six numbers i0 j0 k0 i1 j1 k1, got {list(box3d)}")
        lo, hi = np.asarray(box3d[:3], dtype=np.float64), np.asarray(box3d[3:], dtype=np.float64)
        if (hi < lo).any() or (lo < 0).any() or (hi > np.asarray(self.shape) - 1).any():
            raise DataError(self.path, f"the box {list(box3d)} is not inside the volume's voxels "
                                       f"0..{self.shape[0] - 1}, 0..{self.shape[1] - 1}, 0..{self.shape[2] - 1}")
        corners = np.array([[(lo, hi)[b][a] for a, b in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        shown = self.display_index(corners)
        low, high = np.floor(shown.min(axis=0) + 1e-6), np.ceil(shown.max(axis=0) - 1e-6)
        return (*low.tolist(), *high.tolist())

    def to_file(self, masks: np.ndarray) -> np.ndarray:
        """``D x H x W`` slice masks back on the file's voxel grid (the exact inverse of the slicing)."""
        ras = np.zeros(tuple(self._ras_shape()), dtype=np.asarray(masks).dtype)
        for index, section in enumerate(np.asarray(masks)):
            insert_slice(ras, self.plane, index, section)  # type: ignore[arg-type]
        return from_ras(ras, self.affine)

    def _ras_shape(self) -> list[int]:
        transform = nib.orientations.ornt_transform(
            nib.orientations.io_orientation(self.affine), nib.orientations.axcodes2ornt(("R", "A", "S"))
        )
        shape = [0, 0, 0]
        for axis, (target, _) in enumerate(transform):
            shape[int(target)] = self.shape[axis]
        return shape


def read_volume_slices(
    path: str | Path, plane: str = "axial", window: tuple[float, float] | None = None
) -> VolumeSlices:
    """A NIfTI volume's slices for a 2D model (see :class:`VolumeSlices`); ``window`` in the file's units (CT: HU,
    e.g. the abdomen window ``(-160, 240)``)."""
    if plane not in _PLANES:
        raise ValueError(f"unknown plane {plane!r}; expected one of {sorted(_PLANES)}")
    volume = load_image(path)
    grey = to_uint8(to_ras(volume), window, rule="medsam")
    sliced_axis = _PLANES[plane][0]
    images = np.stack([extract_slice(grey, plane, z) for z in range(grey.shape[sliced_axis])])  # type: ignore[arg-type]
    return VolumeSlices(Path(path), plane, np.ascontiguousarray(images), volume.affine, volume.shape)
