"""Several objects per image, segmented with one :class:`~zoo.inference.Predictor` and written as one mask per
object plus one multi-label file per image (:mod:`zoo.io.labels`: ``<stem>_labels.nii.gz``/``.png`` and
``<stem>_labels.json``; where objects overlap the later object wins).

2D images are embedded once for all their objects; each 3D object gets the authors' crop around its own points
(an encoding at the same crop position is reused), and with ``large_object="follow_mask"`` further crops where
its mask reaches a crop's border. Every file of a run appears together or not at all, and an existing file is
replaced only with ``overwrite`` (:class:`zoo.io.masks.MaskSet`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.inference.large_objects import LargeObjects
from zoo.inference.predictor import Predictor
from zoo.io.labels import OVERLAP_RULE, label_file_names, label_map, label_table
from zoo.io.masks import MaskSet
from zoo.io.nifti import load_stored
from zoo.io.png import read_image
from zoo.processors import Processor
from zoo.prompts.types import Prompts

#: One image to segment: its path, file stem, spatial dims and objects ``(name, mask file name, prompts on the
#: image's grid)`` in order (:meth:`zoo.data.predict.PromptedImagesDataModule.objects_by_image` gives these).
ImageObjects = tuple[Path, str, int, Sequence[tuple[str | None, str, Prompts]]]


@dataclass
class ObjectOutcome:
    """One object written: where, and (3D) which large-object strategy ran over how many crops."""

    image: Path
    name: str | None
    file: Path
    strategy: str | None = None
    crops: int = 1
    complete: bool = True


@dataclass
class FolderPrediction:
    """What a run wrote: every file, per object its outcome, and the label maps."""

    written: list[Path] = field(default_factory=list)
    objects: list[ObjectOutcome] = field(default_factory=list)
    label_maps: list[Path] = field(default_factory=list)


def planned_files(images: Sequence[ImageObjects], label_maps: bool = True) -> list[str]:
    """Every file name a run will write: the masks, and per image with several objects its label map and table."""
    names = []
    for _, stem, dims, objects in images:
        names += [file_name for _, file_name, _ in objects]
        if label_maps and len(objects) > 1:
            names += list(label_file_names(stem, dims))
    return names


def predict_to_folder(
    model: nn.Module,
    images: Sequence[ImageObjects],
    output_dir: str | Path,
    overwrite: bool = False,
    processor: Processor | None = None,
    large_object: str | LargeObjects | None = None,
    label_maps: bool = True,
) -> FolderPrediction:
    """Segment every object of every image and write the masks (and label maps) to ``output_dir``."""
    files = MaskSet(output_dir, overwrite)
    files.check_targets(planned_files(images, label_maps))  # before any model runs
    predictor = Predictor(model, processor, large_object=large_object)
    outcome = FolderPrediction()
    with files:
        for path, stem, dims, objects in images:
            image: Any = read_image(path) if dims == 2 else load_stored(path)
            predictor.set_image(image, str(path))
            masks, names = [], []
            for name, file_name, prompts in objects:
                prediction = predictor.predict_prompts(prompts, new_crop=True)
                mask = prediction.masks[0].to(torch.uint8).cpu().numpy()
                target = files.add(file_name, mask, Path(path))
                outcome.objects.append(ObjectOutcome(Path(path), name, target, prediction.strategy,
                                                     len(prediction.crops or [None]), prediction.complete))
                masks.append(mask)
                names.append(name)
            if label_maps and len(objects) > 1:
                labels_name, table_name = label_file_names(stem, dims)
                outcome.label_maps.append(files.add_labels(labels_name, label_map(masks), Path(path)))
                files.add_json(table_name, label_table(names))
    outcome.written = list(files.written)
    return outcome


__all__ = ["OVERLAP_RULE", "FolderPrediction", "ImageObjects", "ObjectOutcome", "planned_files",
           "predict_to_folder"]
