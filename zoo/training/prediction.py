"""Prediction with user prompts: run a model on :mod:`zoo.data.predict` batches and write the masks to disk.

* :func:`predict_batch`: encode each image once, decode each object's prompts as the family's inference does,
  threshold. ``PromptableSegmentationModule.predict_step`` calls it.
* :class:`MaskWriter`: a Lightning prediction writer putting every mask back on its input's grid and writing it
  (``<stem>_mask.nii.gz`` with the input's affine, shape and header; ``<stem>_mask.png`` at the input's size).
* :func:`predict_masks`: the same without a Trainer, for Python users.

Per family (what each upstream inference does):

* SAM-Med3D: the object's points are replayed as clicks in the order given, all clicks so far fed each time
  with the previous low-res logits as mask prompt (zeros on the first click), single-mask output, trilinear
  upsampling to the crop, ``sigmoid > 0.5``; the crop mask goes back to the file grid by nearest resampling.
* SAM-Med2D (and SAM ViT-B): points and box in one decoder pass, three candidate masks of which the one with
  the highest predicted IoU is kept, logits resized bilinearly to the original size, then ``sigmoid > 0.5``.
* SAM-UNet: points and box in one pass, its single mask, logits resized to the original size, ``logits > 0``.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import nibabel as nib
import numpy as np
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from PIL import Image
from torch import Tensor, nn

from zoo.errors import DataError
from zoo.data.predict import PromptedImagesDataModule
from zoo.data.transforms3d import restore_to_original
from zoo.inference import common, sam_unet_processing
from zoo.inference.predictor3d import upsample_logits
from zoo.inference.preprocess2d import Letterbox, postprocess_for_evaluation
from zoo.prompts.convert import sam_med2d_prompts, sam_med3d_prompts
from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts

logger = logging.getLogger(__name__)

#: Families whose decoder has an IoU head and whose inference keeps the best of three masks.
MULTIMASK_FAMILIES = frozenset({"sam_med2d"})


# ---------------------------------------------------------------------------------------------- the model
def _one_sample(encoding: Any, index: int) -> Any:
    """Sample ``index`` of an image encoding (a tensor, or a dataclass of tensors such as SAM-UNet's)."""
    if isinstance(encoding, Tensor):
        return encoding[index : index + 1]
    fields = {f.name: getattr(encoding, f.name)[index : index + 1] for f in dataclasses.fields(encoding)}
    return dataclasses.replace(encoding, **fields)


def _check_batch(net: nn.Module, batch: dict[str, Any]) -> int:
    dims = int(batch["spatial_dims"])
    model_dims = int(net.prompt_encoder.spatial_dims)
    if dims != model_dims:
        raise ValueError(f"{type(net).__name__} segments {model_dims}D images but the batch holds {dims}D images")
    size = int(net.config.image_size)
    shape = tuple(batch["image"].shape[2:])
    if shape != (size,) * dims:
        setting = "crop_size" if dims == 3 else "image_size"
        raise ValueError(
            f"the model takes {(size,) * dims} inputs but the data module produced {shape}; set the data's "
            f"{setting} to {size}"
        )
    return size


def _predict_3d(net: nn.Module, features: Tensor, obj: dict[str, Any], size: int) -> Tensor:
    """Replay the points as clicks (SAM-Med3D's inference); returns the ``S^3`` bool crop mask."""
    grid = (size,) * 3
    coords, labels = obj["points"][None], obj["labels"][None]
    low_res = torch.zeros(1, 1, *net.prompt_encoder.mask_input_size, device=features.device)
    for clicks in range(1, coords.shape[1] + 1):
        points = PointPrompts(coords[:, :clicks], labels[:, :clicks], grid)
        prompts = sam_med3d_prompts(points=points, masks=MaskPrompts(low_res), image_size=grid)
        low_res = net.decode(features, **prompts, multimask_output=False).low_res_logits[:, :1]
    return common.binarize(upsample_logits(low_res, grid))[0, 0]


def _predict_2d(net: nn.Module, features: Any, obj: dict[str, Any], geometry: dict[str, Any], size: int) -> Tensor:
    """One decoder pass on the object's points and box; returns the bool mask at the original ``H x W``."""
    if int(geometry["image_size"]) != size:
        raise ValueError(f"the item was preprocessed for a {geometry['image_size']} input, the model takes {size}")
    grid = (size, size)
    points = boxes = None
    if obj["points"] is not None:
        points = PointPrompts(obj["points"][None], obj["labels"][None], grid)
    if obj["box"] is not None:
        box = obj["box"]
        boxes = BoxPrompts(box[0][None], box[1][None], torch.ones(1, dtype=torch.bool, device=box.device), grid)
    multimask = net.family in MULTIMASK_FAMILIES
    prompts = sam_med2d_prompts(points=points, boxes=boxes, image_size=size)
    out = net.decode(features, **prompts, multimask_output=multimask)
    low_res = out.low_res_logits
    if multimask:
        low_res, _ = common.select_best_mask(low_res, out.iou_predictions)
    original = tuple(int(s) for s in geometry["original_size"])
    if geometry["preprocessing"] == "sam_med2d":
        top, left = (int(v) for v in geometry["pad_offset"])
        letterbox = Letterbox(original, size, bool(geometry["padded"]), top, left)
        logits = postprocess_for_evaluation(low_res, letterbox)
    else:
        input_size = tuple(int(s) for s in geometry["input_size"])
        logits = sam_unet_processing.postprocess_masks(low_res, input_size, original, size)
    if net.family == "sam_unet":
        return sam_unet_processing.binarize(logits)[0, 0]
    return common.binarize(logits)[0, 0]


@torch.no_grad()
def predict_batch(net: nn.Module, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Masks for every object of a :func:`~zoo.data.predict.collate_prompted` batch.

    Returns one dict per object: ``image_path``, ``name``, ``output_name``, ``spatial_dims``, ``mask`` (bool, on
    the CPU; 3D: the ``S^3`` crop, which :class:`MaskWriter` resamples to the file grid; 2D: already at the
    original ``H x W``, because the 2D families resize logits, not masks) and ``geometry`` (the batch's, on the CPU).
    """
    size = _check_batch(net, batch)
    dims = int(batch["spatial_dims"])
    encoding = net.encode_image(batch["image"])
    results = []
    for index, (path, objects, geometry) in enumerate(zip(batch["image_path"], batch["objects"], batch["geometry"])):
        features = _one_sample(encoding, index)
        for obj in objects:
            if dims == 3:
                mask = _predict_3d(net, features, obj, size)
            else:
                mask = _predict_2d(net, features, obj, geometry, size)
            results.append(
                {
                    "image_path": path,
                    "name": obj["name"],
                    "output_name": obj["output_name"],
                    "spatial_dims": dims,
                    "mask": mask.cpu(),
                    "geometry": move_data_to_device(geometry, "cpu"),
                }
            )
    return results


# --------------------------------------------------------------------------------------------- the writer
def mask_on_original_grid(prediction: dict[str, Any]) -> np.ndarray:
    """The prediction's mask as uint8 0/1 on its input's grid (3D: file voxel order; 2D: ``H x W``)."""
    mask = prediction["mask"]
    if prediction["spatial_dims"] == 2:
        return mask.to(torch.uint8).numpy()
    geometry = prediction["geometry"]
    restored = restore_to_original(
        mask.to(torch.uint8)[None],
        geometry["crop_affine"],
        geometry["original_affine"],
        [int(s) for s in geometry["original_shape"]],
    )
    return restored[0].numpy()


def _nifti_like(source_path: Path, mask: np.ndarray, expected_affine: np.ndarray) -> nib.spatialimages.SpatialImage:
    """A uint8 image of ``mask`` with the source file's affine, shape and header (no intensity scaling)."""
    source = nib.load(str(source_path))
    if not np.array_equal(np.asarray(source.affine, dtype=np.float64), expected_affine):
        raise DataError(source_path, "the file's affine changed since it was read for prediction")
    header = source.header.copy()
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1.0, 0.0)
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    return type(source)(mask.astype(np.uint8).reshape(source.shape), source.affine, header)


def write_atomically(target: Path, save: Callable[[Path], None], overwrite: bool) -> None:
    """``save`` into a temporary file beside ``target``, flush it, then move it into place.

    Without ``overwrite`` the move is a hard link, which fails rather than replace a file that appeared in the
    meantime. The temporary file keeps ``target``'s suffix so writers that pick a format by name still work.
    """
    if target.exists() and not overwrite:
        raise FileExistsError(f"{target}: already exists; not overwriting it (pass overwrite=True to replace it)")
    suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".nii.gz") else target.suffix
    temporary = target.with_name(f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.partial{suffix}")
    try:
        save(temporary)
        with open(temporary, "rb+") as stream:
            os.fsync(stream.fileno())
        if overwrite:
            os.replace(temporary, target)
            return
        try:
            os.link(temporary, target)
        except FileExistsError as exc:
            raise FileExistsError(f"{target}: already exists; not overwriting it") from exc
        except OSError:  # no hard links on this filesystem: check, then rename
            if target.exists():
                raise FileExistsError(f"{target}: already exists; not overwriting it") from None
            os.replace(temporary, target)
    finally:
        temporary.unlink(missing_ok=True)


class MaskWriter(BasePredictionWriter):
    """Writes each predicted mask on its input's grid to ``output_dir``.

    3D: ``<stem>_mask.nii.gz``, uint8 0/1, with the input's affine, shape (voxel order as on disk) and header.
    2D: ``<stem>_mask.png``, 8-bit 0/255 at the input's size. Images with several objects get
    ``<stem>_<name or index>_mask.<ext>``. An existing file is an error unless ``overwrite``; each file is written
    to a temporary name and moved into place. At the end the writer reports where the masks went.

    Add it to a run with ``--trainer.callbacks+=zoo.training.prediction.MaskWriter
    --trainer.callbacks.output_dir=masks`` or in the recipe's ``trainer.callbacks``.
    """

    def __init__(self, output_dir: str | Path = "predictions", overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir).absolute()
        self.overwrite = overwrite
        self.written: list[Path] = []

    def check_targets(self, file_names: list[str]) -> None:
        """Fail before any model runs if one of the planned files already exists (and ``overwrite`` is off)."""
        if self.overwrite:
            return
        existing = [str(self.output_dir / name) for name in file_names if (self.output_dir / name).exists()]
        if existing:
            raise FileExistsError(
                f"{len(existing)} mask file(s) already exist and would be overwritten: {', '.join(existing)}; "
                "choose another output_dir, move them, or set overwrite: true"
            )

    def write(self, prediction: dict[str, Any]) -> Path:
        """Write one prediction of :func:`predict_batch`; returns the file."""
        target = self.output_dir / prediction["output_name"]
        mask = mask_on_original_grid(prediction)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        if prediction["spatial_dims"] == 3:
            expected = prediction["geometry"]["original_affine"].numpy()
            image = _nifti_like(Path(prediction["image_path"]), mask, expected)
            write_atomically(target, lambda path: nib.save(image, str(path)), self.overwrite)
        else:
            png = Image.fromarray((mask * 255).astype(np.uint8), mode="L")
            write_atomically(target, lambda path: png.save(path, format="PNG"), self.overwrite)
        self.written.append(target)
        logger.info("wrote %s", target)
        return target

    def report(self) -> str:
        """One line saying how many masks went where (also printed at the end of a run)."""
        return f"Wrote {len(self.written)} mask(s) to {self.output_dir}"

    # Lightning hooks ---------------------------------------------------------------------------------------
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.written = []
        planned = getattr(trainer.datamodule, "planned_outputs", None)
        if planned:
            self.check_targets(list(planned))

    def write_on_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        prediction: Any,
        batch_indices: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        for item in prediction:
            self.write(item)

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        message = self.report()
        if trainer.world_size > 1:
            message = f"rank {trainer.global_rank}: {message}"
        print(message, flush=True)
        shown = ", ".join(str(path) for path in self.written[:20])
        rank_zero_info(f"Masks: {shown}" + (" ..." if len(self.written) > 20 else ""))


# ----------------------------------------------------------------------------------------- Python API
def predict_masks(
    net: nn.Module, data: PromptedImagesDataModule, output_dir: str | Path, overwrite: bool = False
) -> list[Path]:
    """Segment every object of ``data`` with ``net`` and write the masks to ``output_dir``; returns the files.

    Example::

        import zoo
        from zoo.data.predict import PromptedImagesDataModule
        from zoo.training.prediction import predict_masks

        data = PromptedImagesDataModule(images="ct.nii.gz", points=[[60, 48, 15]])
        predict_masks(zoo.from_pretrained("<sam_med3d_turbo folder or repo>"), data, "masks")
        # -> [PosixPath('masks/ct_mask.nii.gz')]
    """
    writer = MaskWriter(output_dir, overwrite)
    data.setup("predict")
    writer.check_targets(data.planned_outputs)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        with torch.inference_mode():
            for batch in data.predict_dataloader():
                for prediction in predict_batch(net, move_data_to_device(batch, device)):
                    writer.write(prediction)
    finally:
        net.train(was_training)
    logger.info(writer.report())
    return writer.written
