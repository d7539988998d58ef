"""One binary 3D target per item, preprocessed for SAM-Med3D, with what it takes to go back.

Batch format (``torch.utils.data.default_collate`` of :class:`Sample3D` dicts; ``B`` = batch size):

============================  ===========================  ==================================================
key                           type / shape                 meaning
============================  ===========================  ==================================================
``image``                     float32 ``B x 1 x S x S x S``  normalised crop (the model input; S = 128)
``target``                    bool ``B x 1 x S x S x S``     binary target in the crop
``class_id``                  int64 ``B``                  label value of the target in the label file
``class_name``                list[str]                    its name (dataset.json / target folder)
``case_id``                   list[str]                    case identifier
``image_path``/``label_path`` list[str]                    source files
``crop_affine``               float64 ``B x 4 x 4``        crop voxel index -> world (RAS mm)
``original_affine``           float64 ``B x 4 x 4``        file voxel index -> world (RAS mm)
``original_shape``            int64 ``B x 3``              file grid shape
``frame``                     list[ImageFrame]             evaluation: what maps the crop back (processor's
                                                           ``to_original``)
``original_masks``            list of bool ``1 x *file``   evaluation: the target on the file's grid
============================  ===========================  ==================================================

Batches are made by :func:`collate_3d` (``frame`` and ``original_masks`` stay lists). Invert with
:func:`~zoo.data.transforms3d.restore_to_original` (masks) and :func:`~zoo.data.transforms3d.crop_to_original_map`
(prompts), one sample at a time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypedDict

import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from zoo.errors import DataError
from zoo.data.layout3d import TargetRecord
from zoo.io.nifti import check_same_grid, load_label, load_stored
from zoo.data.sampling import SEED_BOUND, ItemKey, derive_seed
from zoo.geometry.index_map import IndexMap
from zoo.processors import ImageFrame
from zoo.data.transforms3d import IMAGE_KEY, LABEL_KEY, PATH_KEY


class Sample3D(TypedDict):
    """One item; see the module docstring for the batched form."""

    image: Tensor
    target: Tensor
    class_id: int
    class_name: str
    case_id: str
    image_path: str
    label_path: str
    crop_affine: Tensor
    original_affine: Tensor
    original_shape: Tensor


def _data_error_in(exc: BaseException) -> DataError | None:
    """MONAI wraps transform errors in RuntimeErrors; find a DataError in the chain."""
    current: BaseException | None = exc
    while current is not None:
        if isinstance(current, DataError):
            return current
        current = current.__cause__
    return None


#: Keys that stay lists in a batch (their shapes differ between cases, or they are not tensors).
RAGGED_KEYS_3D = frozenset({"frame", "original_masks"})


def collate_3d(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """``default_collate`` of the samples, with ``frame`` and ``original_masks`` kept as lists."""
    ragged = {key: [sample[key] for sample in samples] for key in RAGGED_KEYS_3D if key in samples[0]}
    batch = default_collate([{k: v for k, v in sample.items() if k not in RAGGED_KEYS_3D} for sample in samples])
    batch.update(ragged)
    return batch


class TargetDataset(Dataset[Sample3D]):
    """Loads, checks and preprocesses one :class:`~zoo.data.layout3d.TargetRecord` per index.

    Indexed with an :class:`~zoo.data.sampling.ItemKey` (what :class:`~zoo.data.sampling.SeededSampler` yields),
    the random transforms are seeded with the key's seed, so an item's crop and flips depend only on
    ``(seed, epoch, index)``. A plain ``int`` index seeds them from torch's global generator instead.

    ``min_crop_voxels``: SAM-Med3D's ``data_loader.py`` rule: an item whose target has at most this many voxels
    INSIDE its crop is replaced by another item drawn at random (deterministically from the key's seed here).
    ``keep_original``: add ``frame`` and ``original_masks`` (evaluation on the file's grid).
    """

    #: Redraws before an item is refused (every target of the set would have to be small for this to happen).
    max_redraws = 100

    def __init__(
        self,
        targets: Sequence[TargetRecord],
        transform: Compose,
        min_crop_voxels: float | None = None,
        keep_original: bool = False,
    ) -> None:
        self.targets = list(targets)
        self.transform = transform
        self.min_crop_voxels, self.keep_original = min_crop_voxels, keep_original

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: int | ItemKey) -> Sample3D:
        if isinstance(key, ItemKey):
            index, seed = key
        else:
            index, seed = key, int(torch.randint(0, SEED_BOUND, ()).item())
        sample = self._load(index, seed)
        if self.min_crop_voxels is None:
            return sample
        for attempt in range(self.max_redraws):
            if int(sample["target"].sum()) > self.min_crop_voxels:
                return sample
            redraw = derive_seed("redraw", seed, attempt)
            sample = self._load(redraw % len(self.targets), derive_seed("redraw-item", seed, attempt))
        if int(sample["target"].sum()) > self.min_crop_voxels:
            return sample
        raise DataError(
            self.targets[index].label_path,
            f"{self.max_redraws} redraws found no target with more than {self.min_crop_voxels:g} voxels in its crop",
        )

    def _load(self, index: int, seed: int) -> Sample3D:
        record = self.targets[index]
        image = load_stored(record.image_path)  # the voxel type the authors resample in
        label = load_label(record.label_path)
        check_same_grid(image, label)
        binary = torch.from_numpy(label.array == record.class_id).to(torch.uint8)
        if not bool(binary.any()):
            raise DataError(record.label_path, f"class {record.class_id} ({record.class_name}) is not in this label")
        affine = torch.from_numpy(image.affine)
        data = {
            IMAGE_KEY: MetaTensor(torch.from_numpy(image.array)[None], affine=affine),
            LABEL_KEY: MetaTensor(binary[None], affine=affine.clone()),
            PATH_KEY: str(record.image_path),
        }
        self.transform.set_random_state(seed=seed)
        try:
            out = self.transform(data)
        except Exception as exc:
            found = _data_error_in(exc)
            if found is not None:
                raise found from exc
            raise
        processed_image, processed_label = out[IMAGE_KEY], out[LABEL_KEY]
        sample = Sample3D(
            image=processed_image.as_tensor().to(torch.float32).contiguous(),
            target=(processed_label.as_tensor() > 0.5).contiguous(),
            class_id=record.class_id,
            class_name=record.class_name,
            case_id=record.case_id,
            image_path=str(record.image_path),
            label_path=str(record.label_path),
            crop_affine=processed_image.affine.to(torch.float64).clone(),
            original_affine=affine.clone(),
            original_shape=torch.tensor(image.shape, dtype=torch.int64),
        )
        if self.keep_original:
            crop_affine = sample["crop_affine"]
            crop_shape = tuple(sample["image"].shape[1:])
            to_model = IndexMap.from_affines(affine.numpy(), crop_affine.numpy(), image.shape, crop_shape)
            meta = {"crop_affine": crop_affine, "original_affine": affine.clone()}
            frame = ImageFrame(sample["image"], image.shape, to_model, meta)
            sample["frame"] = frame  # type: ignore[typeddict-unknown-key]
            sample["original_masks"] = binary.bool()[None]  # type: ignore[typeddict-unknown-key]
        return sample
