"""LightningDataModule over 3D NIfTI folders (nnU-Net or SAM-Med3D per-target layout)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import lightning.pytorch as pl
from monai.transforms import Compose
from torch.utils.data import DataLoader

from zoo.data.dataset3d import TargetDataset
from zoo.data.layout3d import CaseFiles, Layout, TargetRecord, find_cases, list_targets
from zoo.data.transforms3d import CropCenter, Normalization, as_triple, build_transforms_3d

# SAM-Med3D's train.py: Dataset_Union_ALL(..., threshold=1000) drops targets with <= 1000 voxels at 1.5 mm.
UPSTREAM_MIN_TARGET_VOXELS = 1000


class NiftiDataModule3D(pl.LightningDataModule):
    """Binary 128^3 targets from a 3D dataset folder; batches as documented in :mod:`zoo.data.dataset3d`.

    Args:
        root: dataset folder (``dataset.json`` + ``imagesTr``/``labelsTr``, or the per-target tree).
        layout: ``auto`` (nnU-Net if ``dataset.json`` exists), ``nnunet`` or ``per_target``.
        spacing: target spacing in mm (1.5 as upstream).
        crop_size: crop edge in voxels (128 for the released model).
        normalization: ``zscore_positive`` (upstream), ``ct_window`` or ``none``.
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
        channel: image channel (``_000c`` suffix) for the nnU-Net layout.
    """

    def __init__(
        self,
        root: str | Path,
        layout: Layout = "auto",
        spacing: float | Sequence[float] = 1.5,
        crop_size: int = 128,
        normalization: Normalization = "zscore_positive",
        ct_window: tuple[float, float] = (-1000.0, 1000.0),
        clip_range: tuple[float, float] | None = None,
        train_crop: CropCenter = "random_foreground",
        flips: bool = True,
        min_target_voxels: float = UPSTREAM_MIN_TARGET_VOXELS,
        classes: list[int] | None = None,
        val_fraction: float = 0.2,
        split_seed: int = 0,
        channel: int = 0,
        batch_size: int = 1,
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        self.root, self.layout = Path(root), layout
        self.spacing = as_triple(spacing, "spacing")
        self.crop_size, self.normalization = crop_size, normalization
        self.ct_window, self.clip_range = ct_window, clip_range
        self.train_crop, self.flips = train_crop, flips
        self.min_target_voxels, self.classes = min_target_voxels, classes
        self.val_fraction, self.split_seed, self.channel = val_fraction, split_seed, channel
        self.batch_size, self.num_workers = batch_size, num_workers
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

    def setup(self, stage: str | None = None) -> None:
        train_cases, val_cases = self._split_cases(find_cases(self.root, self.layout, "Tr", self.channel))
        self.train_targets, self.skipped_targets = list_targets(
            train_cases, self.spacing, self.min_target_voxels, self.classes
        )
        self.val_targets, _ = list_targets(val_cases, self.spacing, 0, self.classes)
        test_cases = find_cases(self.root, self.layout, "Ts", self.channel)
        self.test_targets, _ = list_targets(test_cases, self.spacing, 0, self.classes)

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
        return DataLoader(
            TargetDataset(targets, self._transform(train)),
            batch_size=self.batch_size,
            shuffle=train,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_targets, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_targets, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_targets, train=False)
