"""Interactive 3D predictor: embed a crop once, then answer each click with the light prompt/decoder path."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from zoo.inference.common import (
    InteractivePredictor,
    as_tensor,
    binarize,
    check_labels,
    check_points_inside,
    select_best_mask,
)


def upsample_logits(low_res_logits: Tensor, size: tuple[int, int, int]) -> Tensor:
    """Trilinear resize (``align_corners=False``) of ``B x M x d x h x w`` low-res logits to the crop size.

    This is what SAM-Med3D's inference code does; its ``Sam3D.postprocess_masks`` (bilinear on a 5-D tensor)
    raises and is deliberately not reproduced.
    """
    return F.interpolate(low_res_logits, size=size, mode="trilinear", align_corners=False)


@dataclass
class Prediction3D:
    """One mask for the current prompt set.

    Attributes:
        logits: ``1 x D x H x W`` logits at the crop size (trilinear upsampling of ``low_res_logits``).
        masks: ``1 x D x H x W`` bool, ``sigmoid(logits) > 0.5``.
        iou_predictions: ``1`` predicted IoU.
        low_res_logits: ``1 x d x h x w`` decoder logits; pass them back as ``mask_input`` on the next click.
    """

    logits: Tensor
    masks: Tensor
    iou_predictions: Tensor
    low_res_logits: Tensor


class SamMed3DPredictor(InteractivePredictor):
    """SAM-Med3D's interactive workflow around a :class:`zoo.models.SamMed3D`.

    The volume given to ``set_image`` is the model-ready crop (``D x H x W`` of the model's ``image_size``,
    already resampled and z-normalised); its embedding is cached, so each ``predict`` runs only the prompt
    encoder and mask decoder. Points are voxel indices in tensor-index order ``(dim0, dim1, dim2)`` of the crop.
    Upstream inference feeds the previous click's ``low_res_logits`` back as ``mask_input`` and, on the first
    click, an all-zero mask (:meth:`empty_mask_input`).

    ``precision``, ``compile_encoder`` and ``compile_decoder`` choose how the networks run
    (:class:`zoo.inference.runtime.ModelRuntime`).

    Example::

        predictor = SamMed3DPredictor(zoo.create_model("sam_med3d_turbo"))
        predictor.set_image(crop)  # 128 x 128 x 128, z-normalised
        first = predictor.predict([[64, 60, 70]], [1], mask_input=predictor.empty_mask_input())
        second = predictor.predict([[64, 60, 70], [40, 60, 70]], [1, 0], mask_input=first.low_res_logits)
    """

    @property
    def crop_shape(self) -> tuple[int, int, int]:
        return (self.image_size,) * 3

    def empty_mask_input(self) -> Tensor:
        """The all-zero low-res mask prompt that upstream feeds on the first click."""
        return torch.zeros(1, *self.model.prompt_encoder.mask_input_size, device=self.device)

    @torch.inference_mode()
    def set_image(self, volume) -> None:
        """Embed a ``D x H x W`` (or ``1 x D x H x W``, ``1 x 1 x D x H x W``) model-ready crop and cache it."""
        crop = as_tensor(volume, torch.float32)
        while crop.ndim > 3 and crop.shape[0] == 1:
            crop = crop[0]
        if tuple(crop.shape) != self.crop_shape:
            raise ValueError(
                f"expected a single-channel crop of shape {self.crop_shape} (crop or pad the volume first), "
                f"got shape {tuple(as_tensor(volume).shape)}"
            )
        self.features = self.runtime.encode_image(crop[None, None].to(self.device))

    @torch.inference_mode()
    def predict(
        self,
        point_coords=None,
        point_labels=None,
        mask_input=None,
        multimask_output: bool = False,
    ) -> Prediction3D:
        """Segment the current crop.

        Args:
            point_coords: ``N x 3`` voxel coordinates in tensor-index order of the crop.
            point_labels: ``N`` labels: 1 foreground, 0 background (-1 padding).
            mask_input: ``1 x d x h x w`` low-res logits (4x the embedding grid), e.g. the previous
                ``low_res_logits``; ``None`` uses the model's no-mask embedding.
            multimask_output: decode three candidates and keep the best by predicted IoU, or (False, as
                upstream's inference and training) the single-mask token.
        """
        if not self.is_image_set:
            raise RuntimeError("call set_image(...) before predict(...)")
        if point_coords is None and mask_input is None:
            raise ValueError("give point_coords with point_labels, mask_input, or both")
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        points = masks = None
        if point_coords is not None:
            coords = as_tensor(point_coords, torch.float32)
            labels = as_tensor(point_labels)
            if coords.ndim != 2:
                raise ValueError(f"point_coords must be N x 3, got shape {tuple(coords.shape)}")
            if labels.ndim != 1:
                raise ValueError(f"point_labels must have shape (N,), got {tuple(labels.shape)}")
            check_points_inside(coords, self.crop_shape, ("dim0", "dim1", "dim2"), "point")
            check_labels(labels, coords.shape[0])
            points = (coords[None].to(self.device), labels.to(torch.int64)[None].to(self.device))
        if mask_input is not None:
            masks = as_tensor(mask_input, torch.float32)
            expected = (1, *self.model.prompt_encoder.mask_input_size)
            if tuple(masks.shape) != expected:
                raise ValueError(f"mask_input must have shape {expected}, got {tuple(masks.shape)}")
            masks = masks[None].to(self.device)
        decoded = self.runtime.decode(
            self.model.decode, self.features, points, None, masks, multimask_output=multimask_output
        )
        low_res, iou = decoded.low_res_logits.float(), decoded.iou_predictions.float()
        if multimask_output:
            low_res, iou = select_best_mask(low_res, iou)
        logits = upsample_logits(low_res, self.crop_shape)
        return Prediction3D(
            logits=logits[0], masks=binarize(logits[0]), iou_predictions=iou[0], low_res_logits=low_res[0]
        )
