"""A LightningDataModule of 2D slices cut from one labelled volume, split into training and held-out slices.

It lets the 2D models train and be validated on the bundled CT (:mod:`zoo.data.slicer` does the slicing): every
``val_every``-th slice (from ``val_offset``) is held out for validation, the rest train. Batches have the 2D
format of :mod:`zoo.data.sa_med2d` (one mask per item) plus ``class_name``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Subset

from zoo.io.json_files import read_json
from zoo.data.sa_med2d import collate_2d
from zoo.data.slicer import Plane, SlicedVolumeDataset
from zoo.processors import Processor, processor_from_spec


class SlicedVolumeDataModule(pl.LightningDataModule):
    """2D samples (one per class and slice) of a NIfTI image/label pair, with held-out slices for validation.

    Args:
        image / label: the volume and its label map (same grid).
        label_names: label value -> name for every value in the label map, or a JSON file holding that mapping
            (under ``label_names_key`` if given, e.g. ``"present"`` for the bundled TotalSegmentator labels.json).
        classes: the class names to use as targets (default: all).
        plane: slicing plane.
        val_every / val_offset: slices with ``index % val_every == val_offset`` are validation and test slices.
        min_pixels: skip slices where the target has fewer pixels.
        window: intensity window (e.g. CT HU) mapped to 8 bits before the 2D preprocessing.
        intensity_rule: how the window becomes 8 bits (``rounded``, or ``medsam``: MedSAM's CT preparation,
            see :func:`zoo.data.slicer.to_uint8`).
        image_size: model input size; None keeps the processor's.
        processor: the model's 2D processor (type name, config dict or processor; ``zoo fit`` links it to the
            model), whose training geometry prepares each slice and its mask.
    """

    def __init__(
        self,
        image: str | Path,
        label: str | Path,
        label_names: dict[int, str] | str | Path,
        classes: list[str] | None = None,
        label_names_key: str | None = None,
        plane: Plane = "axial",
        val_every: int = 5,
        val_offset: int = 2,
        min_pixels: int = 20,
        window: tuple[float, float] | None = (-200.0, 300.0),
        intensity_rule: Literal["rounded", "medsam"] = "rounded",
        image_size: int | None = None,
        processor: Processor | dict[str, Any] | str = "sam_med2d",
        batch_size: int = 8,
        eval_batch_size: int = 8,
        seed: int = 0,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if val_every < 2 or not 0 <= val_offset < val_every:
            raise ValueError(f"need val_every >= 2 and 0 <= val_offset < val_every, got {val_every}, {val_offset}")
        self.image, self.label, self.plane = Path(image), Path(label), plane
        self.label_names = _read_label_names(label_names, label_names_key)
        unknown = sorted(set(classes or []) - set(self.label_names.values()))
        if unknown:
            raise ValueError(f"classes {unknown} are not among the label names of {label}")
        self.classes = sorted(classes) if classes else sorted(set(self.label_names.values()))
        self.val_every, self.val_offset, self.min_pixels, self.window = val_every, val_offset, min_pixels, window
        self.intensity_rule = intensity_rule
        self.processor = processor_from_spec(processor, **({} if image_size is None else {"image_size": image_size}))
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.seed, self.num_workers = seed, num_workers
        self.train_set: Subset | None = None
        self.val_set: Subset | None = None

    @property
    def class_names(self) -> list[str]:
        return list(self.classes)

    def setup(self, stage: str | None = None) -> None:
        dataset = SlicedVolumeDataset(
            self.image, self.label, self.label_names, self.plane, self.min_pixels, self.window, self.processor,
            self.intensity_rule,
        )
        wanted = set(self.classes)
        train, val = [], []
        for i, item in enumerate(dataset.slices):
            if item.class_name in wanted:
                (val if item.slice_index % self.val_every == self.val_offset else train).append(i)
        self.train_set, self.val_set = Subset(dataset, train), Subset(dataset, val)

    def _loader(self, dataset: Subset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() first")
        generator = torch.Generator().manual_seed(self.seed) if shuffle else None
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=shuffle,
            generator=generator,
            num_workers=self.num_workers,
            collate_fn=collate_2d,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self.val_dataloader()


def _read_label_names(label_names: dict[int, str] | str | Path, key: str | None) -> dict[int, str]:
    if isinstance(label_names, dict):
        return {int(k): str(v) for k, v in label_names.items()}
    mapping = read_json(label_names, "the label names JSON")
    if key is not None:
        if key not in mapping:
            raise KeyError(f"{label_names}: no {key!r} entry")
        mapping = mapping[key]
    return {int(k): str(v) for k, v in mapping.items()}
