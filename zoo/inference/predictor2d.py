"""Interactive 2D predictor: embed an image once, then answer each click with the light prompt/decoder path."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from zoo.inference import sam_unet_processing as unet
from zoo.inference.common import (
    InteractivePredictor,
    as_tensor,
    binarize,
    check_labels,
    check_points_inside,
    select_best_mask,
)
from zoo.inference.preprocess2d import (
    ArrayLike,
    postprocess_for_predictor,
    preprocess_for_predictor,
    scale_boxes,
    scale_coords,
)

IMAGE_FORMATS = ("RGB", "BGR")


@dataclass
class Prediction2D:
    """One mask per prompt set (per box when several boxes are given).

    Attributes:
        logits: ``K x H x W`` mask logits at the original image size.
        masks: ``K x H x W`` bool, ``sigmoid(logits) > 0.5``.
        iou_predictions: ``K`` predicted IoU of each returned mask (None for models without an IoU head).
        low_res_logits: ``K x h x w`` decoder logits (4x the embedding grid); feed ``low_res_logits[i:i+1]``
            (through a sigmoid for SAM-Med2D, which was trained on probabilities) back as ``mask_input``.
    """

    logits: Tensor
    masks: Tensor
    iou_predictions: Tensor | None
    low_res_logits: Tensor


class SamMed2DPredictor(InteractivePredictor):
    """SAM-Med2D's interactive workflow (upstream ``SammedPredictor``) around a :class:`zoo.models.SamMed2D`.

    ``set_image`` preprocesses the image (normalise at the original size, nearest stretch to ``S x S``) and
    caches its embedding; every ``predict`` call then runs only the prompt encoder and mask decoder. Prompts
    are in original-image pixels ``(x, y)``. With ``multimask_output=True`` the decoder's three candidate
    masks are reduced to the one with the highest predicted IoU, as upstream.

    ``precision``, ``compile_encoder`` and ``compile_decoder`` choose how the networks run
    (:class:`zoo.inference.runtime.ModelRuntime`).

    Example::

        predictor = SamMed2DPredictor(zoo.create_model("sam_med2d_b"))
        predictor.set_image(rgb_uint8_hwc)
        result = predictor.predict(point_coords=[[120, 80]], point_labels=[1])
        result.masks.shape  # 1 x H x W
    """

    #: Upstream's predictor decodes three candidates and keeps the best by predicted IoU.
    default_multimask_output = True

    @property
    def pixel_mean(self) -> tuple[float, ...]:
        return tuple(self.model.config.pixel_mean)

    @property
    def pixel_std(self) -> tuple[float, ...]:
        return tuple(self.model.config.pixel_std)

    def reset_image(self) -> None:
        """Forget the current image and its cached embedding."""
        super().reset_image()
        self.original_size: tuple[int, int] | None = None

    @torch.inference_mode()
    def set_image(self, image: ArrayLike, image_format: str = "RGB") -> None:
        """Preprocess an ``H x W x 3`` image (``image_format`` gives its channel order) and cache its embedding."""
        if image_format not in IMAGE_FORMATS:
            raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
        pixels = as_tensor(image)
        if pixels.ndim != 3 or pixels.shape[-1] != 3:
            raise ValueError(f"expected an H x W x 3 image, got shape {tuple(pixels.shape)}")
        if image_format == "BGR":
            pixels = pixels.flip(-1)
        self.reset_image()  # a failure below leaves no image set, never the previous image's embedding
        features = self.runtime.encode_image(self._model_input(pixels).to(self.device))
        self.features, self.original_size = features, (int(pixels.shape[0]), int(pixels.shape[1]))

    # The model's image geometry; subclasses for models with other preprocessing override these four.

    def _model_input(self, pixels: Tensor) -> Tensor:
        """``1 x 3 x S x S`` model input from ``H x W x 3`` RGB pixels."""
        return preprocess_for_predictor(pixels, self.image_size, self.pixel_mean, self.pixel_std)

    def _scale_points(self, coords: Tensor) -> Tensor:
        """``... x 2`` original-pixel ``(x, y)`` to model-input pixels."""
        return scale_coords(coords, self.original_size, self.image_size)

    def _scale_boxes(self, boxes: Tensor) -> Tensor:
        """``K x 4`` original-pixel boxes to model-input pixels."""
        return scale_boxes(boxes, self.original_size, self.image_size)

    def _to_original(self, low_res_logits: Tensor) -> Tensor:
        """``K x 1 x h x w`` decoder logits to ``K x 1 x H x W`` logits at the original image size."""
        return postprocess_for_predictor(low_res_logits, self.image_size, self.original_size)

    def _prompts(
        self,
        point_coords: ArrayLike | None,
        point_labels: ArrayLike | None,
        box: ArrayLike | None,
        mask_input: ArrayLike | None,
    ) -> tuple[tuple[Tensor, Tensor] | None, Tensor | None, Tensor | None]:
        """Validate prompts in original pixels and map them into the model's input frame."""
        height, width = self.original_size
        if point_coords is None and box is None and mask_input is None:
            raise ValueError("give at least one prompt: point_coords with point_labels, box, or mask_input")
        if (point_coords is None) != (point_labels is None):
            raise ValueError("point_coords and point_labels must be given together")
        points = boxes = masks = None
        if point_coords is not None:
            coords = as_tensor(point_coords, torch.float64)
            labels = as_tensor(point_labels)
            if coords.ndim != 2:
                raise ValueError(f"point_coords must be N x 2 (x, y), got shape {tuple(coords.shape)}")
            if labels.ndim != 1:
                raise ValueError(f"point_labels must have shape (N,), got {tuple(labels.shape)}")
            check_points_inside(coords, (width, height), ("x", "y"), "point")
            check_labels(labels, coords.shape[0])
            scaled = self._scale_points(coords)
            points = (scaled[None].to(self.device), labels.to(torch.int32)[None].to(self.device))
        if box is not None:
            corners = as_tensor(box, torch.float64)
            corners = corners[None] if corners.ndim == 1 else corners
            if corners.ndim != 2 or corners.shape[-1] != 4:
                raise ValueError(f"box must be (4,) or K x 4 (x0, y0, x1, y1), got shape {tuple(corners.shape)}")
            check_points_inside(corners.reshape(-1, 2), (width, height), ("x", "y"), "box corner")
            if ((corners[:, 2] < corners[:, 0]) | (corners[:, 3] < corners[:, 1])).any():
                raise ValueError(f"box corners must satisfy x0 <= x1 and y0 <= y1, got {corners.tolist()}")
            boxes = self._scale_boxes(corners).to(self.device)
        if mask_input is not None:
            masks = as_tensor(mask_input, torch.float32)
            low_res = self.model.prompt_encoder.mask_input_size
            if masks.ndim != 3 or tuple(masks.shape[1:]) != tuple(low_res) or masks.shape[0] != 1:
                raise ValueError(f"mask_input must be 1 x {low_res[0]} x {low_res[1]}, got shape {tuple(masks.shape)}")
            masks = masks[None].to(self.device)
        return points, boxes, masks

    @torch.inference_mode()
    def predict(
        self,
        point_coords: ArrayLike | None = None,
        point_labels: ArrayLike | None = None,
        box: ArrayLike | None = None,
        mask_input: ArrayLike | None = None,
        multimask_output: bool | None = None,
    ) -> Prediction2D:
        """Segment the current image from prompts in original-image pixels.

        Args:
            point_coords: ``N x 2`` clicks ``(x, y)``.
            point_labels: ``N`` labels: 1 foreground, 0 background (-1 padding).
            box: ``(x0, y0, x1, y1)`` or ``K x 4``; several boxes give several masks (points and mask are shared).
            mask_input: ``1 x h x w`` low-res mask prompt (h, w = 4x the embedding grid).
            multimask_output: decode three candidates and keep the best by predicted IoU (True) or decode the
                single-mask token (False); None uses the model's upstream default (:attr:`default_multimask_output`).
        """
        if not self.is_image_set:
            raise RuntimeError("call set_image(...) before predict(...)")
        if multimask_output is None:
            multimask_output = self.default_multimask_output
        points, boxes, masks = self._prompts(point_coords, point_labels, box, mask_input)
        prompt_sets = boxes.shape[0] if boxes is not None else 1
        if prompt_sets > 1:
            if points is not None:
                points = (points[0].expand(prompt_sets, -1, -1), points[1].expand(prompt_sets, -1))
            if masks is not None:
                masks = masks.expand(prompt_sets, -1, -1, -1)
        decoded = self.runtime.decode(
            self.model.decode, self.features, points, boxes, masks, multimask_output=multimask_output
        )
        low_res = decoded.low_res_logits.float()
        iou = None if decoded.iou_predictions is None else decoded.iou_predictions.float()
        if multimask_output:
            low_res, iou = select_best_mask(low_res, iou)
        logits = self._to_original(low_res)[:, 0]
        return Prediction2D(
            logits=logits,
            masks=self._binarize(logits),
            iou_predictions=None if iou is None else iou[:, 0],
            low_res_logits=low_res[:, 0],
        )

    @staticmethod
    def _binarize(logits: Tensor) -> Tensor:
        return binarize(logits)


class SamUNetPredictor(SamMed2DPredictor):
    """SAM-UNet's inference (upstream ``SAM_UNET.infer``) around a :class:`zoo.models.SamUNet`, with the image side
    (ViT, ResNet branch and multi-scale features) computed once per image and cached.

    Preprocessing resizes the longest side to ``S``, normalises and zero-pads bottom/right; prompts (boxes, as
    the model was trained, or points) are in original-image pixels and scaled by the same factor; logits come
    back at the original size and masks are ``logits > 0``. SAM-UNet predicts one mask and no IoU, so
    ``multimask_output=True`` raises and ``iou_predictions`` is None.

    Example::

        predictor = SamUNetPredictor(zoo.create_model("sam_unet_r34"))
        predictor.set_image(rgb_uint8_hwc)
        result = predictor.predict(box=[40, 30, 120, 90])
    """

    default_multimask_output = False

    def _model_input(self, pixels: Tensor) -> Tensor:
        if pixels.dtype != torch.uint8:
            raise ValueError(f"SAM-UNet expects 8-bit (uint8) RGB images, got {pixels.dtype}")
        resized = torch.from_numpy(unet.resize_longest_side(pixels.cpu().numpy(), self.image_size))
        self.input_size = (int(resized.shape[0]), int(resized.shape[1]))
        channels_first = resized.permute(2, 0, 1)
        return unet.preprocess(channels_first, self.image_size, self.pixel_mean, self.pixel_std)[None]

    def _scale_points(self, coords: Tensor) -> Tensor:
        return unet.scale_coords(coords, self.original_size, self.image_size)

    def _scale_boxes(self, boxes: Tensor) -> Tensor:
        return unet.scale_boxes(boxes, self.original_size, self.image_size)

    def _to_original(self, low_res_logits: Tensor) -> Tensor:
        return unet.postprocess_masks(low_res_logits, self.input_size, self.original_size, self.image_size)

    @staticmethod
    def _binarize(logits: Tensor) -> Tensor:
        return unet.binarize(logits)
