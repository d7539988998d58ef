"""Prediction with user prompts: run a model on :mod:`zoo.data.predict` batches through its processor and write the
masks on each input's grid.

* :func:`predict_batch`: encode each image once, segment each object by the family's inference rule (the
  processor's ``segment``: SAM-Med3D replays its points as clicks, the 2D families decode once), and bring the mask
  back to the original grid (the processor's ``to_original``).
* :class:`MaskWriter`: a Lightning prediction writer; all of a run's masks appear together or not at all
  (:class:`zoo.io.masks.MaskSet`).
* :func:`predict_masks`: the same without a Trainer, for Python users.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from zoo.data.predict import PromptedImagesDataModule
from zoo.io.masks import MaskSet
from zoo.processors import Processor, processor_for

logger = logging.getLogger(__name__)


def one_sample(encoding: Any, index: int) -> Any:
    """Sample ``index`` of an image encoding (a tensor, or a dataclass of tensors such as SAM-UNet's)."""
    if isinstance(encoding, Tensor):
        return encoding[index : index + 1]
    fields = {f.name: getattr(encoding, f.name)[index : index + 1] for f in dataclasses.fields(encoding)}
    return dataclasses.replace(encoding, **fields)


@torch.no_grad()
def predict_batch(net: nn.Module, processor: Processor, batch: dict[str, Any]) -> list[dict[str, Any]]:
    """Masks for every object of a :func:`~zoo.data.predict.collate_prompted` batch.

    Returns one dict per object: ``image_path``, ``name``, ``output_name`` and ``mask`` (uint8 0/1 numpy array on
    the original grid).
    """
    processor.check_model(net)
    if int(batch["spatial_dims"]) != processor.spatial_dims:
        raise ValueError(
            f"{processor.model_name} segments {processor.spatial_dims}D images but the batch holds "
            f"{batch['spatial_dims']}D images"
        )
    encoding = net.encode_image(batch["image"])
    device = batch["image"].device
    results = []
    for index, (path, objects, frame) in enumerate(zip(batch["image_path"], batch["objects"], batch["frames"])):
        features = one_sample(encoding, index)
        for obj in objects:
            decoded = processor.segment(net, features, obj["prompts"].to(device))
            mask = processor.to_original(decoded.low_res_logits, frame).mask
            results.append(
                {
                    "image_path": path,
                    "name": obj["name"],
                    "output_name": obj["output_name"],
                    "mask": mask.reshape(frame.original_shape).to(torch.uint8).cpu().numpy(),
                }
            )
    return results


class MaskWriter(BasePredictionWriter):
    """Writes each predicted mask on its input's grid to ``output_dir``; a run's files appear together or not at all.

    3D: ``<stem>_mask.nii.gz``, uint8 0/1, with the input's affine, shape (voxel order as on disk) and header.
    2D: ``<stem>_mask.png``, 8-bit 0/255 at the input's size. Named objects, and images with several objects, get
    ``<stem>_<name or index>_mask.<ext>``. An existing file is an error unless ``overwrite``.
    """

    def __init__(self, output_dir: str | Path = "predictions", overwrite: bool = False) -> None:
        super().__init__(write_interval="batch")
        self.output_dir = Path(output_dir).absolute()
        self.overwrite = overwrite
        self.masks = MaskSet(self.output_dir, overwrite)

    @property
    def written(self) -> list[Path]:
        return self.masks.written

    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        planned = getattr(trainer.datamodule, "planned_outputs", None)
        if planned:
            self.masks.check_targets(list(planned))
        self.masks.__enter__()

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
            self.masks.add(item["output_name"], item["mask"], Path(item["image_path"]))

    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.masks.__exit__(None, None, None)
        message = self.masks.report()
        if trainer.world_size > 1:
            message = f"rank {trainer.global_rank}: {message}"
        print(message, flush=True)
        shown = ", ".join(str(path) for path in self.written[:20])
        rank_zero_info(f"Masks: {shown}" + (" ..." if len(self.written) > 20 else ""))

    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if self.masks._staging is not None:  # a failed run leaves nothing behind
            self.masks.__exit__(type(exception), exception, None)


def predict_masks(
    net: nn.Module,
    data: PromptedImagesDataModule,
    output_dir: str | Path,
    overwrite: bool = False,
    processor: Processor | None = None,
) -> list[Path]:
    """Segment every object of ``data`` with ``net`` and write the masks to ``output_dir``; returns the files.

    The processor is ``net``'s own (:func:`zoo.processors.processor_for`) unless given.

    Example::

        import zoo
        from zoo.data.predict import PromptedImagesDataModule
        from zoo.training.prediction import predict_masks

        data = PromptedImagesDataModule(images="ct.nii.gz", points=[[60, 48, 15]])
        predict_masks(zoo.from_pretrained("<sam_med3d_turbo folder or repo>"), data, "masks")
        # -> [PosixPath('masks/ct_mask.nii.gz')]
    """
    processor = processor or data.processor or processor_for(net)
    data.processor = processor
    data.setup("predict")
    masks = MaskSet(output_dir, overwrite)
    masks.check_targets(data.planned_outputs)
    device = next(net.parameters()).device
    was_training = net.training
    net.eval()
    try:
        with masks, torch.inference_mode():
            for batch in data.predict_dataloader():
                for prediction in predict_batch(net, processor, move_data_to_device(batch, device)):
                    masks.add(prediction["output_name"], prediction["mask"], Path(prediction["image_path"]))
    finally:
        net.train(was_training)
    logger.info(masks.report())
    return masks.written


__all__ = ["MaskWriter", "predict_batch", "predict_masks"]
