"""2D data in the SA-Med2D layout: PNG images, one PNG per object mask, linked by JSON files.

* ``image2label_<split>.json``: ``{image_path: [mask_path, ...]}`` (SAM-Med2D's training set);
* ``label2image_<split>.json``: ``{mask_path: image_path}`` (its test set, one sample per mask).

Relative paths resolve against ``path_root`` (default: the JSON file's folder).

Mask files are named ``<image stem>_<class>_<nnn>.png`` (e.g. ``amos_0004_75_aorta_000.png``); the class name is
what lies between the image's stem and the trailing instance number (:func:`class_name_of`).

Batch format (:func:`collate_2d`; ``B`` samples, ``N`` masks per sample, ``S`` = 256):

=====================  ===========================  =============================================================
key                    type / shape                 meaning
=====================  ===========================  =============================================================
``image``              float32 ``B x 3 x S x S``    the processor's model input (its training geometry)
``masks``              bool ``B x N x 1 x S x S``   object masks on the input grid (N = masks_per_image in
                                                    training, 1 per sample in evaluation)
``mask_paths``         list of ``N``-lists of str   source mask files
``class_name``         list of ``N``-lists of str   training: the class of each drawn mask
                       list[str]                    evaluation: the class of the sample's mask
``image_path``         list[str]                    source image
``original_size``      int64 ``B x 2``              ``(H, W)`` of the original image
``frame``              list[ImageFrame]             what maps each input back to its original image
``original_masks``     list of bool ``N x H x W``   the masks at the original size (metrics; SAM-UNet's boxes)
=====================  ===========================  =============================================================
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from zoo.errors import DataError
from zoo.io.json_files import read_json
from zoo.io.png import read_image, read_mask
from zoo.data.sampling import SEED_BOUND, ItemKey, SeededSampler
from zoo.processors import ImageFrame, Processor, processor_from_spec


def _resolve(json_path: Path, root: Path, relative: Any) -> Path:
    if not isinstance(relative, str):
        raise DataError(json_path, f"expected a path string, got {relative!r}")
    path = Path(relative)
    path = path if path.is_absolute() else root / path
    if not path.is_file():
        raise DataError(json_path, f"references a missing file: {path} (set path_root if paths are relative elsewhere)")
    return path


def class_name_of(image_path: Path, mask_path: Path) -> str:
    """The class in a mask's file name ``<image stem>_<class>_<nnn>.png`` (``--`` separators work too).

    The image's stem is removed from the front when present, then separators, then a trailing ``_<nnn>``
    instance number; what remains is the class (the mask's own stem if nothing remains).
    """
    name = mask_path.stem
    if name.startswith(image_path.stem):
        name = name[len(image_path.stem) :]
    name = re.sub(r"_\d{3}$", "", name.lstrip("_-"))
    return name or mask_path.stem


def _key_parts(key: int | ItemKey) -> tuple[int, int]:
    """``(index, seed)``; a plain index draws its seed from torch's global generator."""
    if isinstance(key, ItemKey):
        return key.index, key.seed
    return key, int(torch.randint(0, SEED_BOUND, ()).item())


def read_image2label(json_path: str | Path, path_root: str | Path | None = None) -> list[tuple[Path, list[Path]]]:
    """``(image, [masks])`` pairs from an ``image2label`` JSON; every referenced file must exist."""
    file = Path(json_path)
    root = Path(path_root) if path_root is not None else file.parent
    content = read_json(file)
    if not isinstance(content, dict):
        raise DataError(file, "expected a JSON object {image_path: [mask_path, ...]}")
    pairs = []
    for image, masks in content.items():
        if not isinstance(masks, list) or not masks:
            raise DataError(file, f"image {image!r} must map to a non-empty list of mask paths, got {masks!r}")
        pairs.append((_resolve(file, root, image), [_resolve(file, root, m) for m in masks]))
    return pairs


def read_label2image(json_path: str | Path, path_root: str | Path | None = None) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs from a ``label2image`` JSON; every referenced file must exist."""
    file = Path(json_path)
    root = Path(path_root) if path_root is not None else file.parent
    content = read_json(file)
    if not isinstance(content, dict):
        raise DataError(file, "expected a JSON object {mask_path: image_path}")
    return [(_resolve(file, root, image), _resolve(file, root, mask)) for mask, image in content.items()]


def load_image_with_masks(image_path: Path, mask_paths: Sequence[Path]) -> tuple[np.ndarray, list[np.ndarray]]:
    """Read an image and its masks, checking every mask has the image's size."""
    image = read_image(image_path)
    masks = []
    for mask_path in mask_paths:
        mask = read_mask(mask_path)
        if mask.shape != image.shape[:2]:
            raise DataError(
                [image_path, mask_path], f"image size {image.shape[:2]} and mask size {mask.shape} differ"
            )
        masks.append(mask)
    return image, masks


ChannelOrder = Literal["rgb", "bgr"]


def make_sample_2d(
    image_path: Path,
    mask_paths: Sequence[Path],
    processor: Processor,
    keep_original_masks: bool,
    channel_order: ChannelOrder = "rgb",
) -> dict[str, Any]:
    """One sample in the documented format from files on disk, prepared by ``processor``'s training geometry.

    ``channel_order="bgr"`` hands the processor the channels reversed, as SAM-Med2D's ``DataLoader.py`` reads images
    with ``cv2.imread`` (BGR) and normalises them with SAM's RGB mean and std (identical for grey images).
    """
    if channel_order not in ("rgb", "bgr"):
        raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    image, masks = load_image_with_masks(image_path, mask_paths)
    if channel_order == "bgr":
        image = np.ascontiguousarray(image[..., ::-1])
    frame, prepared = processor.prepare_with_masks(image, masks, source=str(image_path))
    sample = sample_dict_2d(frame, prepared, str(image_path), [str(p) for p in mask_paths])
    if keep_original_masks:
        sample["original_masks"] = torch.from_numpy(np.stack(masks))
    return sample


def sample_dict_2d(frame: ImageFrame, masks: torch.Tensor, image_path: str, mask_paths: list[str]) -> dict[str, Any]:
    """The documented sample dict from a prepared frame and its masks."""
    return {
        "image": frame.model_input,
        "masks": masks,
        "mask_paths": mask_paths,
        "image_path": image_path,
        "original_size": torch.tensor(frame.original_shape, dtype=torch.int64),
        "frame": frame,
    }


# Keys that stay lists even when their shapes happen to agree, so their type does not depend on the batch.
RAGGED_KEYS = frozenset({"original_masks", "mask_paths", "frame"})


def collate_2d(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack tensors of equal shape, and bools/ints, into tensors; keep paths and original-size masks as lists."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        if key in RAGGED_KEYS:
            batch[key] = values
        elif all(isinstance(v, torch.Tensor) for v in values) and len({tuple(v.shape) for v in values}) == 1:
            batch[key] = torch.stack(values)
        elif all(isinstance(v, bool) for v in values):
            batch[key] = torch.tensor(values, dtype=torch.bool)
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            batch[key] = torch.tensor(values, dtype=torch.int64)
        else:
            batch[key] = values
    return batch


class ImageMasksDataset(Dataset[dict[str, Any]]):
    """SAM-Med2D training samples: per image, ``masks_per_image`` masks drawn with replacement.

    Upstream draws with ``random.choices``; here the draw uses a ``torch.Generator`` seeded with the
    :class:`~zoo.data.sampling.ItemKey`'s seed, so it depends only on ``(seed, epoch, index)`` (a plain ``int``
    index seeds it from torch's global generator).
    """

    def __init__(
        self,
        json_path: str | Path,
        processor: Processor,
        masks_per_image: int = 5,
        path_root: str | Path | None = None,
        channel_order: ChannelOrder = "rgb",
    ) -> None:
        if masks_per_image < 1:
            raise ValueError(f"masks_per_image must be >= 1, got {masks_per_image}")
        self.items = read_image2label(json_path, path_root)
        self.masks_per_image, self.processor, self.channel_order = masks_per_image, processor, channel_order

    def __len__(self) -> int:
        return len(self.items)

    @property
    def class_names(self) -> list[str]:
        """Sorted names of every class a mask of this set has."""
        return sorted({class_name_of(image, mask) for image, masks in self.items for mask in masks})

    def __getitem__(self, key: int | ItemKey) -> dict[str, Any]:
        index, seed = _key_parts(key)
        image_path, mask_paths = self.items[index]
        generator = torch.Generator().manual_seed(seed)
        draws = torch.randint(0, len(mask_paths), (self.masks_per_image,), generator=generator)
        chosen = [mask_paths[i] for i in draws]
        # The original masks travel too: SAM-UNet's authors box the original mask (the processor decides).
        sample = make_sample_2d(image_path, chosen, self.processor, True, self.channel_order)
        sample["class_name"] = [class_name_of(image_path, mask) for mask in chosen]
        return sample


class MaskImageDataset(Dataset[dict[str, Any]]):
    """SAM-Med2D evaluation samples: one per mask of a ``label2image`` JSON, with the original-size mask."""

    def __init__(
        self,
        json_path: str | Path,
        processor: Processor,
        path_root: str | Path | None = None,
        channel_order: ChannelOrder = "rgb",
    ) -> None:
        self.items = read_label2image(json_path, path_root)
        self.processor, self.channel_order = processor, channel_order

    def __len__(self) -> int:
        return len(self.items)

    @property
    def class_names(self) -> list[str]:
        """Sorted names of every class a mask of this set has."""
        return sorted({class_name_of(image, mask) for image, mask in self.items})

    def __getitem__(self, key: int | ItemKey) -> dict[str, Any]:
        index, _ = _key_parts(key)
        image_path, mask_path = self.items[index]
        sample = make_sample_2d(image_path, [mask_path], self.processor, True, self.channel_order)
        sample["class_name"] = class_name_of(image_path, mask_path)
        return sample


class SAMed2DDataModule(pl.LightningDataModule):
    """SA-Med2D-layout folder: training from ``image2label_train.json``, evaluation from ``label2image_test.json``.

    Every loader uses a :class:`~zoo.data.sampling.SeededSampler`: the training order and the masks drawn per
    image are functions of ``(seed, epoch, item)`` (a resumed run replays them), and with several processes each
    rank reads its own shard. After :meth:`setup`, :attr:`class_names` lists the classes of both sets' masks.

    Args:
        root: folder holding the JSON files.
        train_json / eval_json: file names inside ``root`` (the evaluation file serves validation and test).
        path_root: folder the JSON paths are relative to (default ``root``).
        masks_per_image: masks drawn per training image (upstream ``mask_num=5``).
        image_size: model input size; None keeps the processor's (256 for the released models).
        processor: the model's processor (type name, config dict or processor; ``zoo fit`` links it to the model),
            whose training geometry prepares images and masks.
        channel_order: ``bgr`` reverses the image channels before the processor, as SAM-Med2D's ``DataLoader.py``
            (``cv2.imread``, then SAM's RGB mean); ``rgb`` for every other family (SAM-UNet converts to RGB).
        seed: seed of the training order and of the masks drawn per image.
    """

    def __init__(
        self,
        root: str | Path,
        train_json: str = "image2label_train.json",
        eval_json: str = "label2image_test.json",
        path_root: str | Path | None = None,
        masks_per_image: int = 5,
        image_size: int | None = None,
        processor: Processor | dict[str, Any] | str = "sam_med2d",
        batch_size: int = 2,
        eval_batch_size: int = 1,
        num_workers: int = 0,
        channel_order: ChannelOrder = "rgb",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if channel_order not in ("rgb", "bgr"):
            raise ValueError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
        self.channel_order = channel_order
        self.root = Path(root)
        self.train_json, self.eval_json, self.path_root = train_json, eval_json, path_root
        self.masks_per_image, self.image_size = masks_per_image, image_size
        self.processor = processor_from_spec(processor, **({} if image_size is None else {"image_size": image_size}))
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.seed = seed
        self._class_names: list[str] | None = None
        self.train_set: ImageMasksDataset | None = None
        self.eval_set: MaskImageDataset | None = None

    @property
    def class_names(self) -> list[str]:
        """Sorted class names of the training and evaluation masks (from their file names), after :meth:`setup`.

        Both JSON files count whatever the stage, so the list (and a class's position in it) is the same for
        ``fit``, ``validate`` and ``test``.
        """
        if self._class_names is None:
            raise RuntimeError("class_names is known after setup()")
        return list(self._class_names)

    def setup(self, stage: str | None = None) -> None:
        root = self.path_root if self.path_root is not None else self.root
        train_file = self.root / self.train_json
        train_set = (
            ImageMasksDataset(train_file, self.processor, self.masks_per_image, root, self.channel_order)
            if train_file.exists()
            else None
        )
        if stage in (None, "fit"):
            self.train_set = train_set
        self.eval_set = MaskImageDataset(self.root / self.eval_json, self.processor, root, self.channel_order)
        train_names = train_set.class_names if train_set is not None else []
        self._class_names = sorted({*self.eval_set.class_names, *train_names})

    def _loader(self, dataset: Dataset | None, batch_size: int, shuffle: bool) -> DataLoader:
        if dataset is None:
            raise RuntimeError("call setup() first (and check the JSON file exists)")
        return DataLoader(
            dataset,
            batch_size=batch_size,
            sampler=SeededSampler(dataset, shuffle=shuffle, seed=self.seed),
            num_workers=self.num_workers,
            collate_fn=collate_2d,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set, self.eval_batch_size, shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader(self.eval_set, self.eval_batch_size, shuffle=False)
