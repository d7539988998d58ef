"""The interactive predictor for every family: embed an image once, then answer each prompt set with the light prompt
encoder + mask decoder path. Everything family-specific (preprocessing, prompt mapping, decode policy, the way back
to the original grid) is the model's processor (:func:`zoo.processors.processor_for`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.errors import PromptError
from zoo.inference.large_objects import LargeObjects, crop_start, follow_mask
from zoo.inference.runtime import ModelRuntime
from zoo.io.nifti import Volume, load_stored
from zoo.processors import ImageFrame, Processor, processor_for
from zoo.prompts.types import MaskPrompts, PointPrompts, Prompts
from zoo.prompts.validate import boxes_from_user, check_kinds, points_from_user


@dataclass
class Prediction:
    """One mask per prompt set (per box when several boxes are given), on the original image grid.

    Attributes:
        masks: ``K x *original`` bool masks (2D ``H x W``; 3D the file's voxel order).
        logits: ``K x H x W`` logits at the original size for the 2D families (which resize logits); ``None`` for
            SAM-Med3D, which pastes a binary crop mask back.
        iou_predictions: ``K`` predicted IoU of each mask (``None`` for models without an IoU head).
        low_res_logits: ``K x *low_res`` decoder logits; pass ``low_res_logits[i:i+1]`` back as ``mask_input`` on
            the next call (the processor feeds it as the family's authors do: probabilities for SAM-Med2D).
            With several crops (3D, ``"follow_mask"``), the first crop's.
        strategy: 3D: the large-object strategy that ran (:mod:`zoo.inference.large_objects`); None for 2D.
        crops: 3D: the first voxel of each crop on the resampled grid, in the order they ran.
        complete: False when the large-object strategy stopped at its size limit with the mask still at a border.
    """

    masks: Tensor
    logits: Tensor | None
    iou_predictions: Tensor | None
    low_res_logits: Tensor
    strategy: str | None = None
    crops: list[tuple[int, int, int]] | None = None
    complete: bool = True


class Predictor:
    """Interactive segmentation with any zoo model.

    2D models: ``set_image`` takes an ``H x W x 3`` uint8 RGB image (or ``H x W`` grey); points are ``(x, y)``
    pixels and boxes ``(x0, y0, x1, y1)``. 3D models: ``set_image`` takes a NIfTI path (read as the authors read
    it, :func:`zoo.io.nifti.load_stored`) or a volume object; points are voxel indices ``(i, j, k)`` of the file. SAM-Med3D crops around its
    points, so its image embedding is computed on the first ``predict`` and reused while later points stay in the
    crop (and for several points replays them as clicks, as its authors' inference does).

    ``precision``, ``compile_encoder`` and ``compile_decoder`` choose how the networks run
    (:class:`zoo.inference.runtime.ModelRuntime`). ``large_object`` (3D): ``"single_crop"`` (the authors' one
    crop, the default) or ``"follow_mask"`` / a :class:`~zoo.inference.large_objects.LargeObjects` (further crops
    where the mask reaches a crop's border, blended; the result says which ran).

    Example::

        predictor = Predictor(zoo.from_pretrained("litemedsam"))
        predictor.set_image(rgb_uint8_hwc)
        result = predictor.predict(box=[40, 30, 120, 90])
        refined = predictor.predict(box=[40, 30, 120, 90], point_coords=[[70, 60]], point_labels=[0],
                                    mask_input=result.low_res_logits)
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Processor | None = None,
        precision: str = "fp32",
        compile_encoder: bool = False,
        compile_decoder: bool = False,
        large_object: str | LargeObjects | None = None,
    ) -> None:
        self.model = model.eval()
        self.processor = processor if processor is not None else processor_for(model)
        self.processor.check_model(self.model)
        self.runtime = ModelRuntime(self.model, precision, compile_encoder, compile_decoder)
        self.large_object = LargeObjects.of(large_object)
        warn_if_random(self.model)
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reset_image(self) -> None:
        """Forget the current image and its cached embedding."""
        self.image: Any = None
        self.source = "image"
        self.frame: ImageFrame | None = None
        self.features: Any = None
        self.crop_cache: dict[tuple[int, int, int], tuple[ImageFrame, Any]] = {}  # 3D: encoded crops by position

    @property
    def is_image_set(self) -> bool:
        return self.image is not None

    @property
    def original_shape(self) -> tuple[int, ...]:
        if self.image is None:
            raise RuntimeError("call set_image(...) first")
        return tuple(self.image.shape[:2]) if self.processor.spatial_dims == 2 else tuple(self.image.shape)

    @torch.inference_mode()
    def set_image(self, image: Any, source: str | None = None, features: Any = None) -> None:
        """Take an image (2D array) or a volume (NIfTI path or ``Volume``) and, for 2D models, embed it now
        (``features``: an embedding of this image computed before, e.g. by a saved session, used instead)."""
        self.reset_image()  # a failure below leaves no image set, never the previous image's embedding
        if self.processor.spatial_dims == 3:
            volume = image if isinstance(image, Volume) else load_stored(Path(image))
            self.image, self.source = volume, source or str(volume.path)
            return
        frame = self.processor.prepare(image, source=source or "image")
        self.features = self._encode(frame) if features is None else features
        self.image = np.asarray(image) if not isinstance(image, Tensor) else image
        self.frame, self.source = frame, source or "image"

    def _encode(self, frame: ImageFrame) -> Any:
        return self.runtime.encode_image(frame.model_input[None].to(self.device))

    def prompts(
        self, point_coords: Any = None, point_labels: Any = None, box: Any = None, mask_input: Any = None
    ) -> Prompts:
        """User prompts (original coordinates) as the shared containers; shapes checked, bounds checked later."""
        if point_coords is None and box is None and mask_input is None:
            raise PromptError("give at least one prompt: point_coords with point_labels, box, or mask_input")
        if point_coords is None and point_labels is not None:
            raise PromptError("point_labels given without point_coords")
        given = {"points": point_coords, "boxes": box, "masks": mask_input}
        kinds = {kind for kind, value in given.items() if value is not None}
        check_kinds(kinds, self.processor.prompt_kinds, self.processor.model_name, self.source)
        shape = self.original_shape
        order = "xy" if self.processor.spatial_dims == 2 else "index"
        points = (
            None if point_coords is None
            else points_from_user(point_coords, point_labels, shape, order, self.source)
        )
        boxes = None if box is None else boxes_from_user(box, shape, self.source)
        masks = None
        if mask_input is not None:
            logits = torch.as_tensor(np.asarray(mask_input) if not isinstance(mask_input, Tensor) else mask_input)
            logits = logits.to(torch.float32)
            while logits.ndim < 2 + self.processor.spatial_dims:
                logits = logits[None]
            masks = self.processor.feedback(logits)  # fed as the family's authors feed a previous mask
        return Prompts(points, boxes, masks)

    @torch.inference_mode()
    def predict(
        self, point_coords: Any = None, point_labels: Any = None, box: Any = None, mask_input: Any = None
    ) -> Prediction:
        """Segment the current image from prompts in original coordinates.

        Args:
            point_coords: ``N x 2`` clicks ``(x, y)`` (2D) or ``N x 3`` voxel indices ``(i, j, k)`` (3D).
            point_labels: ``N`` labels: 1 foreground, 0 background (default: all foreground).
            box: ``(x0, y0, x1, y1)`` or ``K x 4``; several boxes give several masks (points and mask are shared).
            mask_input: a previous prediction's ``low_res_logits`` (``1 x *low_res``).
        """
        if not self.is_image_set:
            raise RuntimeError("call set_image(...) before predict(...)")
        return self.predict_prompts(self.prompts(point_coords, point_labels, box, mask_input))

    @torch.inference_mode()
    def predict_prompts(self, prompts: Prompts, new_crop: bool = False) -> Prediction:
        """:meth:`predict` for prompt containers on the original grid (index order). ``new_crop`` (3D): crop
        around these points even if the current crop holds them (each object of ``zoo predict`` gets the authors'
        crop around its own points; an encoding at the same position is reused)."""
        if not self.is_image_set:
            raise RuntimeError("call set_image(...) before predict(...)")
        processor = self.processor
        if processor.spatial_dims == 3:
            if new_crop:
                self.frame, self.features = None, None
            self._ensure_crop(prompts)
        assert self.frame is not None
        on_model = processor.to_model_space(prompts, self.frame, self.source)
        sets = on_model.batch_size
        if sets > 1:  # several boxes: the points and mask prompt are shared by every box
            on_model = _broadcast(on_model, sets)
        decoded = processor.segment(self.model, self.features, on_model.to(self.device), self._decoder)
        if processor.spatial_dims == 3:
            large = follow_mask(processor, self.image, self.frame, decoded.low_res_logits, prompts.points,
                                self.segment_crop, self.large_object, self.source)
            iou = None if decoded.iou_predictions is None else decoded.iou_predictions[:, 0]
            return Prediction(large.mask[None], None, iou, decoded.low_res_logits[:, 0], large.strategy, large.crops,
                              large.complete)
        results = [processor.to_original(decoded.low_res_logits[i : i + 1], self.frame) for i in range(sets)]
        logits = None if results[0].logits is None else torch.cat([r.logits[:, 0] for r in results])
        masks = torch.cat([r.mask.reshape(1, *r.mask.shape[-processor.spatial_dims :]) for r in results])
        iou = None if decoded.iou_predictions is None else decoded.iou_predictions[:, 0]
        return Prediction(masks, logits, iou, decoded.low_res_logits[:, 0])

    def _decoder(self, *args: Any, **kwargs: Any) -> Any:
        return self.runtime.decode(self.model.decode, *args, **kwargs)

    def _ensure_crop(self, prompts: Prompts) -> None:
        """3D: crop around these points unless the current crop already holds them all."""
        if prompts.points is None:
            if self.frame is None:
                raise PromptError(f"{self.processor.model_name} needs a point for its first prediction", self.source)
            return
        if self.frame is not None and _inside(prompts.points, self.frame):
            return
        frame = self.processor.prepare(self.image, prompts, self.source)
        self.frame, self.features = self.encoded_crop(frame)

    def encoded_crop(self, frame: ImageFrame) -> tuple[ImageFrame, Any]:
        """3D: a crop's frame and encoding, encoded once per crop position (the last 16 positions are kept, or
        every crop a large object may use)."""
        key = crop_start(frame)
        if key not in self.crop_cache:
            if len(self.crop_cache) >= max(16, self.large_object.max_crops + 1):
                self.crop_cache.pop(next(iter(self.crop_cache)))
            self.crop_cache[key] = (frame, self._encode(frame))
        return self.crop_cache[key]

    def segment_crop(self, frame: ImageFrame, prompts: Prompts) -> Tensor:
        """A further crop of a large object: its (cached) encoding, the prompts decoded by the family's rule."""
        frame, features = self.encoded_crop(frame)
        on_model = self.processor.to_model_space(prompts, frame, self.source)
        return self.processor.segment(self.model, features, on_model.to(self.device), self._decoder).low_res_logits


class RandomWeightsWarning(UserWarning):
    """The model has the random weights of its constructor: its masks mean nothing."""


def weights_description(model: nn.Module) -> str:
    """Where the model's weights came from, for every output a user sees."""
    origin = getattr(model, "weights_origin", None)
    return f"weights: {origin}" if origin else "weights: RANDOM (no trained weights were loaded; masks are meaningless)"


def warn_if_random(model: nn.Module) -> None:
    """Warn once per model that has no trained weights."""
    if getattr(model, "weights_origin", None) is None:
        warnings.warn(f"{type(model).__name__}: {weights_description(model)}", RandomWeightsWarning, stacklevel=3)


def _inside(points: PointPrompts, frame: ImageFrame) -> bool:
    coords = points.mapped(frame.to_model).coords[~points.is_padding]
    limits = torch.tensor(frame.model_input.shape[1:], dtype=coords.dtype) - 0.5
    return bool(((coords >= -0.5) & (coords <= limits)).all())


def _broadcast(prompts: Prompts, sets: int) -> Prompts:
    points, masks = prompts.points, prompts.masks
    if points is not None and points.batch_size == 1:
        points = PointPrompts(points.coords.expand(sets, -1, -1), points.labels.expand(sets, -1), points.spatial_shape)
    if masks is not None and masks.batch_size == 1:
        masks = MaskPrompts(masks.logits.expand(sets, *masks.logits.shape[1:]))
    return Prompts(points, prompts.boxes, masks)
