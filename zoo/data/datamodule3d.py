"""LightningDataModule over 3D NIfTI folders (nnU-Net or SAM-Med3D per-target layout)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from monai.transforms import Compose
from torch.utils.data import DataLoader

from zoo.data.dataset3d import TargetDataset
from zoo.data.layout3d import CaseFiles, Layout, TargetRecord, find_cases, list_targets
from zoo.data.sampling import SeededSampler
from zoo.data.transforms3d import CropCenter, Normalization, as_triple, build_transforms_3d
from zoo.processors import Processor, processor_from_spec

# SAM-Med3D's train.py: Dataset_Union_ALL(..., threshold=1000) drops targets with <= 1000 voxels at 1.5 mm.
UPSTREAM_MIN_TARGET_VOXELS = 1000


class NiftiDataModule3D(pl.LightningDataModule):
    """Binary 128^3 targets from a 3D dataset folder; batches as documented in :mod:`zoo.data.dataset3d`.

    Every loader uses a :class:`~zoo.data.sampling.SeededSampler`: the training order and each target's random
    crop and flips are functions of ``(seed, epoch, item)`` (a resumed run replays them), and with several
    processes each rank reads its own shard. After :meth:`setup`, :attr:`class_names` lists the dataset's classes.

    Args:
        root: dataset folder (``dataset.json`` + ``imagesTr``/``labelsTr``, or the per-target tree).
        layout: ``auto`` (nnU-Net if ``dataset.json`` exists), ``nnunet`` or ``per_target``.
        processor: the model's SAM-Med3D processor (type name, config dict or processor; ``zoo fit`` links it to
            the model), which gives the defaults of ``spacing``, ``crop_size`` and ``normalization``.
        spacing: target spacing in mm; None: the processor's (1.5 as upstream).
        crop_size: crop edge in voxels; None: the processor's (128 for the released model).
        normalization: ``zscore_positive`` (upstream), ``ct_window`` or ``none``; None: the processor's.
        ct_window: HU range mapped to [0, 1] by ``ct_window``.
        clip_range: optional clamp before normalisation (upstream clamps files named ``ct_*`` to (-1000, 1000)).
        train_crop: crop centre for training: ``random_foreground`` (a random target voxel, the paper's crop
            around the click) or ``label_bbox`` (what upstream's ``train.py`` does). Evaluation always uses
            ``label_bbox``.
        flips: random flips of each axis in training.
        min_target_voxels: training targets with at most this many voxels at ``spacing`` are skipped
            (upstream: 1000); evaluation keeps every target present.
        classes: restrict to these label values.
        val_fraction: share of ``Tr`` cases (not targets) held out for validation, chosen with ``split_seed``.
        val_classes: hold out classes instead of cases: these label values are validated on the training cases
            and never trained on (for a single scan, e.g. the bundled CT). Needs ``val_fraction=0``.
        channel: image channel (``_000c`` suffix) for the nnU-Net layout.
        seed: seed of the training order and of the random crops and flips.
    """

    def __init__(
        self,
        root: str | Path,
        layout: Layout = "auto",
        processor: Processor | dict[str, Any] | str = "sam_med3d",
        spacing: float | Sequence[float] | None = None,
        crop_size: int | None = None,
        normalization: Normalization | None = None,
        ct_window: tuple[float, float] = (-1000.0, 1000.0),
        clip_range: tuple[float, float] | None = None,
        train_crop: CropCenter = "random_foreground",
        flips: bool = True,
        min_target_voxels: float = UPSTREAM_MIN_TARGET_VOXELS,
        classes: list[int] | None = None,
        val_fraction: float = 0.2,
        val_classes: list[int] | None = None,
        split_seed: int = 0,
        channel: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if val_classes and val_fraction:
            raise ValueError("hold out either cases (val_fraction) or classes (val_classes), not both")
        if val_classes and classes and set(val_classes) & set(classes):
            raise ValueError(f"val_classes {sorted(set(val_classes) & set(classes))} are also training classes")
        self.val_classes = list(val_classes) if val_classes else None
        self.root, self.layout = Path(root), layout
        overrides: dict[str, Any] = {}
        if spacing is not None:
            overrides["target_spacing_mm"] = as_triple(spacing, "spacing")
        if crop_size is not None:
            overrides["image_size"] = int(crop_size)
        if normalization is not None:
            overrides["normalization"] = normalization
        self.processor = processor_from_spec(processor, **overrides)
        if self.processor.spatial_dims != 3:
            raise ValueError(f"NiftiDataModule3D needs a 3D processor, got {type(self.processor).__name__}")
        config = self.processor.config
        self.spacing = tuple(config.target_spacing_mm)
        self.crop_size, self.normalization = int(config.image_size), config.normalization
        self.ct_window, self.clip_range = ct_window, clip_range
        self.train_crop, self.flips = train_crop, flips
        self.min_target_voxels, self.classes = min_target_voxels, classes
        self.val_fraction, self.split_seed, self.channel = val_fraction, split_seed, channel
        self.batch_size, self.num_workers, self.seed = batch_size, num_workers, seed
        self._class_names: list[str] | None = None
        self.train_targets: list[TargetRecord] = []
        self.val_targets: list[TargetRecord] = []
        self.test_targets: list[TargetRecord] = []
        self.skipped_targets: list[TargetRecord] = []

    def _split_cases(self, cases: list[CaseFiles]) -> tuple[list[CaseFiles], list[CaseFiles]]:
        order = list(range(len(cases)))
        random.Random(self.split_seed).shuffle(order)
        num_val = int(round(self.val_fraction * len(cases)))
        if self.val_fraction > 0 and len(cases) > 1:
            num_val = max(1, min(num_val, len(cases) - 1))
        val_ids = set(order[:num_val])
        return [c for i, c in enumerate(cases) if i not in val_ids], [c for i, c in enumerate(cases) if i in val_ids]

    @property
    def class_names(self) -> list[str]:
        """Names of the classes the targets can have, after :meth:`setup`.

        nnU-Net layout: ``dataset.json``'s foreground labels in label-value order (restricted to ``classes``);
        per-target layout: the target folder names, sorted.
        """
        if self._class_names is None:
            raise RuntimeError("class_names is known after setup()")
        return list(self._class_names)

    @staticmethod
    def _names_of(cases: list[CaseFiles], classes: list[int] | None) -> list[str]:
        pairs = {(cid, name) for case in cases for cid, name in case.class_names.items()}
        wanted = sorted(p for p in pairs if classes is None or p[0] in classes)
        return list(dict.fromkeys(name for _, name in wanted))

    def setup(self, stage: str | None = None) -> None:
        all_train_cases = find_cases(self.root, self.layout, "Tr", self.channel)
        train_cases, val_cases = self._split_cases(all_train_cases)
        train_classes = self.classes
        if self.val_classes:
            val_cases = train_cases
            if train_classes is None:
                train_classes = sorted(set().union(*(c.class_names for c in train_cases)) - set(self.val_classes))
        self.train_targets, self.skipped_targets = list_targets(
            train_cases, self.spacing, self.min_target_voxels, train_classes
        )
        self.val_targets, _ = list_targets(val_cases, self.spacing, 0, self.val_classes or self.classes)
        test_cases = find_cases(self.root, self.layout, "Ts", self.channel)
        self.test_targets, _ = list_targets(test_cases, self.spacing, 0, self.val_classes or self.classes)
        named = None if self.classes is None and self.val_classes is None else [*(train_classes or []), *(self.val_classes or [])]
        self._class_names = self._names_of(all_train_cases + test_cases, named)

    def _transform(self, train: bool) -> Compose:
        return build_transforms_3d(
            train,
            spacing=self.spacing,
            crop_size=self.crop_size,
            crop_center=self.train_crop if train else "label_bbox",
            normalization=self.normalization,
            ct_window=self.ct_window,
            clip_range=self.clip_range,
            flips=self.flips,
        )

    def _loader(self, targets: list[TargetRecord], train: bool) -> DataLoader:
        dataset = TargetDataset(targets, self._transform(train))
        return DataLoader(
            dataset,
            batch_size=self.batch_size,
            sampler=SeededSampler(dataset, shuffle=train, seed=self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_targets, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_targets, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_targets, train=False)
