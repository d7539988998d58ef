"""LightningDataModule over 3D NIfTI folders (nnU-Net or SAM-Med3D per-target layout)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
from monai.transforms import Compose
from torch.utils.data import DataLoader

from typing import Literal

from zoo.data.dataset3d import TargetDataset, collate_3d
from zoo.data.layout3d import CaseFiles, Layout, TargetRecord, find_cases, list_targets
from zoo.data.sampling import SeededSampler, distributed_world
from zoo.data.transforms3d import CropCenter, Normalization, as_triple, build_transforms_3d, zscore_positive_pooled
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
        clip_scope: where ``clip_range`` applies: ``all`` images, or ``train_ct_paths``: training images whose path
            contains ``/ct_`` (SAM-Med3D's ``data_loader.py``; its inference does not clamp).
        normalization_scope: ``crop`` (each crop's own statistics; upstream inference) or ``batch`` (training
            crops share the micro-batch's statistics: upstream ``train.py`` normalises the squeezed batch).
            Evaluation always normalises each crop.
        train_crop: crop centre for training: ``random_foreground`` (a random target voxel, the paper's crop
            around the click) or ``label_bbox`` (what upstream's ``train.py`` does). Evaluation always uses
            ``label_bbox``.
        eval_crop: crop centre for evaluation: ``label_bbox`` (upstream ``infer_utils.py``) or
            ``random_foreground`` (the SAM-Med3D paper's evaluation: the patch around the first point).
        flips: random flips of each axis in training.
        min_target_voxels: training targets with at most this many voxels are left out or redrawn, as
            ``small_target_rule`` says (upstream: 1000); evaluation keeps every target present.
        small_target_rule: ``crop_redraw`` (upstream ``data_loader.py``: the voxels inside the training crop are
            counted and a small item is replaced by a random other one) or ``volume`` (targets whose whole volume at
            ``spacing`` is small are left out before training).
        classes: restrict to these label values.
        val_fraction: share of ``Tr`` cases (not targets) held out for validation, chosen with ``split_seed``.
        val_root: a separate dataset folder to validate on (its ``Tr`` and ``Ts`` cases), as SAM-Med3D's authors
            validate on datasets they do not train on. Needs ``val_fraction=0``.
        val_classes: hold out classes instead of cases: these label values are validated on the training cases
            and never trained on (for a single scan, e.g. the bundled CT). Needs ``val_fraction=0``.
        channel: image channel (``_000c`` suffix) for the nnU-Net layout.
        batch_size: crops per device and step.
        total_batch_size: crops per step over all devices instead (``batch_size`` = this / number of devices,
            which must divide it).
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
        clip_scope: Literal["all", "train_ct_paths"] = "all",
        normalization_scope: Literal["crop", "batch"] = "crop",
        train_crop: CropCenter = "random_foreground",
        eval_crop: CropCenter = "label_bbox",
        flips: bool = True,
        min_target_voxels: float = UPSTREAM_MIN_TARGET_VOXELS,
        small_target_rule: Literal["volume", "crop_redraw"] = "volume",
        classes: list[int] | None = None,
        val_fraction: float = 0.2,
        val_classes: list[int] | None = None,
        val_root: str | Path | None = None,
        split_seed: int = 0,
        channel: int = 0,
        batch_size: int = 1,
        total_batch_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if sum(bool(v) for v in (val_classes, val_fraction, val_root)) > 1:
            raise ValueError("validate on held-out cases (val_fraction), classes (val_classes) or a separate "
                             "dataset (val_root): one of them")
        for name, value, allowed in (
            ("clip_scope", clip_scope, ("all", "train_ct_paths")),
            ("normalization_scope", normalization_scope, ("crop", "batch")),
            ("small_target_rule", small_target_rule, ("volume", "crop_redraw")),
        ):
            if value not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        if total_batch_size is not None and total_batch_size < 1:
            raise ValueError(f"total_batch_size must be >= 1, got {total_batch_size}")
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
        self.ct_window, self.clip_range, self.clip_scope = ct_window, clip_range, clip_scope
        self.normalization_scope = normalization_scope
        if normalization_scope == "batch" and self.normalization != "zscore_positive":
            raise ValueError("normalization_scope='batch' pools the z-score statistics: it needs zscore_positive")
        self.train_crop, self.eval_crop, self.flips = train_crop, eval_crop, flips
        self.min_target_voxels, self.small_target_rule, self.classes = min_target_voxels, small_target_rule, classes
        self.val_fraction, self.split_seed, self.channel = val_fraction, split_seed, channel
        self.val_root = Path(val_root) if val_root is not None else None
        self.batch_size, self.total_batch_size = batch_size, total_batch_size
        self.num_workers, self.seed = num_workers, seed
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
        if self.val_root is not None:
            val_cases = [*find_cases(self.val_root, self.layout, "Tr", self.channel),
                         *find_cases(self.val_root, self.layout, "Ts", self.channel)]
        static_minimum = self.min_target_voxels if self.small_target_rule == "volume" else 0
        self.train_targets, self.skipped_targets = list_targets(
            train_cases, self.spacing, static_minimum, train_classes
        )
        self.val_targets, _ = list_targets(val_cases, self.spacing, 0, self.val_classes or self.classes)
        test_cases = find_cases(self.root, self.layout, "Ts", self.channel)
        self.test_targets, _ = list_targets(test_cases, self.spacing, 0, self.val_classes or self.classes)
        named = None
        if self.classes is not None or self.val_classes is not None:
            named = [*(train_classes or []), *(self.val_classes or [])]
        named_cases = all_train_cases + test_cases + (val_cases if self.val_root is not None else [])
        self._class_names = self._names_of(named_cases, named)

    def _transform(self, train: bool) -> Compose:
        clip = self.clip_range if (self.clip_scope == "all" or train) else None
        pooled = train and self.normalization_scope == "batch"
        return build_transforms_3d(
            train,
            spacing=self.spacing,
            crop_size=self.crop_size,
            crop_center=self.train_crop if train else self.eval_crop,
            normalization="none" if pooled else self.normalization,
            ct_window=self.ct_window,
            clip_range=clip,
            flips=self.flips,
            clip_path_pattern="/ct_" if self.clip_scope == "train_ct_paths" else None,
        )

    def per_device_batch_size(self) -> int:
        """``batch_size``, or ``total_batch_size`` shared out over the devices."""
        if self.total_batch_size is None:
            return self.batch_size
        trainer = getattr(self, "trainer", None)
        world = trainer.world_size if trainer is not None else distributed_world()[0]
        if self.total_batch_size % world:
            raise ValueError(f"total_batch_size {self.total_batch_size} does not divide over {world} devices")
        return self.total_batch_size // world

    def _loader(self, targets: list[TargetRecord], train: bool) -> DataLoader:
        minimum = self.min_target_voxels if train and self.small_target_rule == "crop_redraw" else None
        dataset = TargetDataset(targets, self._transform(train), min_crop_voxels=minimum, keep_original=not train)
        pooled = train and self.normalization_scope == "batch"
        return DataLoader(
            dataset,
            batch_size=self.per_device_batch_size(),
            sampler=SeededSampler(dataset, shuffle=train, seed=self.seed),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_pooled if pooled else collate_3d,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_targets, train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_targets, train=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.test_targets, train=False)


def collate_pooled(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """:func:`~zoo.data.dataset3d.collate_3d`, then SAM-Med3D's training z-normalisation over the whole batch."""
    batch = collate_3d(samples)
    batch["image"] = zscore_positive_pooled(batch["image"])
    return batch

