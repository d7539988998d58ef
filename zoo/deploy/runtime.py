"""``OnnxPredictor``: the PyTorch ``Predictor``'s interface on ONNX Runtime, without torch.

It reads a folder written by :func:`zoo.deploy.onnx_export.export_onnx` (``zoo export onnx``): the two graphs and
``processor_config.json``. The image side is the processors' own numpy code (:mod:`zoo.geometry.model_input2d`,
:mod:`zoo.geometry.crop3d`, :mod:`zoo.geometry.grid3d`); the prompt encoder, mask decoder, decode policy (mask
feedback, best-of-three, upsampling to the model grid; SAM-Med3D's threshold) are in the decoder graph. What stays
here is applying the frame's index map to the prompts, the way from the model grid back to the user's grid (crop
the image's window and resize it bilinearly as torch does, :func:`zoo.geometry.pixels2d.resize_bilinear`; SAM-Med3D:
the shared nearest paste-back), the threshold of 2D logits, and SAM-Med3D's click replay and crop reuse.

Example::

    from zoo.deploy import OnnxPredictor
    from zoo.io.png import read_image

    predictor = OnnxPredictor("litemedsam-onnx")          # written by: zoo export onnx litemedsam litemedsam-onnx
    predictor.set_image(read_image("slice.png"))
    result = predictor.predict(box=[150, 230, 230, 300])  # masks K x H x W bool on the image's grid
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.deploy.graphs import (
    BOXES,
    DECODER_FILE,
    ENCODER_FILE,
    HAS_MASK_INPUT,
    IOU_PREDICTIONS,
    LOW_RES_LOGITS,
    MASK_INPUT,
    METADATA_PREFIX,
    MODEL_GRID_LOGITS,
    MODEL_GRID_MASK,
    MODEL_INPUT,
    POINT_COORDS,
    POINT_LABELS,
    PROCESSOR_CONFIG_FILE,
)
from zoo.errors import CheckpointError, PromptError
from zoo.geometry.affine import between_affines, map_coords
from zoo.geometry.crop3d import crop_around_voxels, normalise_crop, plan_for_volume
from zoo.geometry.grid3d import paste_back_nearest
from zoo.geometry.model_input2d import (
    ModelInput2D,
    litemedsam_box,
    litemedsam_input,
    longest_side_input,
    sam_med2d_input,
)
from zoo.geometry.pixels2d import resize_bilinear
from zoo.io.nifti import Volume, load_stored
from zoo.prompts.rules import check_box_array, check_kinds, check_point_array, user_boxes, user_points

FAMILIES_2D = ("sam_med2d", "sam", "sam_unet", "litemedsam")


class RandomWeightsWarning(UserWarning):
    """The graphs were exported from a model with the random weights of its constructor: masks mean nothing."""


@dataclass
class OnnxPrediction:
    """One mask per prompt set (per box when several boxes are given), on the original grid (numpy).

    Attributes:
        masks: ``K x *original`` bool.
        logits: ``K x H x W`` float32 logits at the original size (2D); ``None`` for SAM-Med3D.
        iou_predictions: ``K`` predicted IoU (``None`` for SAM-UNet).
        low_res_logits: ``K x *low_res``; pass ``low_res_logits[i:i+1]`` back as ``mask_input``.
    """

    masks: np.ndarray
    logits: np.ndarray | None
    iou_predictions: np.ndarray | None
    low_res_logits: np.ndarray


@dataclass(frozen=True)
class _Crop:
    """SAM-Med3D's current crop: its affine, its map from the file's grid and its embedding."""

    affine: np.ndarray
    to_model: np.ndarray
    embedding: list[np.ndarray]


class OnnxPredictor:
    """Interactive segmentation with exported graphs; the interface of :class:`zoo.inference.Predictor`.

    2D: ``set_image`` takes an ``H x W x 3`` uint8 RGB image (or ``H x W`` grey); points are ``(x, y)`` pixels and
    boxes ``(x0, y0, x1, y1)``. SAM-Med3D: ``set_image`` takes a NIfTI path (or a :class:`zoo.io.nifti.Volume`);
    points are voxel indices ``(i, j, k)`` of the file; the crop around the points is encoded on the first
    ``predict`` and reused while later points stay inside it (the authors' single crop); several points are replayed
    as clicks.

    Args:
        folder: what ``zoo export onnx`` wrote.
        providers: ONNX Runtime execution providers (default: CPU).
        threads: intra-op threads of each session (default: ONNX Runtime's choice).
    """

    def __init__(self, folder: str | Path, providers: Sequence[str] | None = None, threads: int | None = None) -> None:
        import onnxruntime

        self.folder = Path(folder)
        config_path = self.folder / PROCESSOR_CONFIG_FILE
        try:
            self.config: dict[str, Any] = json.loads(config_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            message = f"{self.folder}: no {PROCESSOR_CONFIG_FILE} (write the folder with zoo export onnx)"
            raise FileNotFoundError(message) from None
        except ValueError as exc:
            raise CheckpointError(str(config_path), f"cannot parse {PROCESSOR_CONFIG_FILE} ({exc})") from exc
        self.processor_type = str(self.config.get("processor_type"))
        if self.processor_type not in (*FAMILIES_2D, "sam_med3d"):
            raise CheckpointError(str(config_path), f"unknown processor_type {self.processor_type!r}")
        self.spatial_dims = 3 if self.processor_type == "sam_med3d" else 2
        self.image_size = int(self.config["image_size"])
        self.policy: dict[str, Any] = dict(self.config["decode"])
        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = int(threads)
        sessions = []
        chosen = list(providers or ["CPUExecutionProvider"])
        for name in (ENCODER_FILE, DECODER_FILE):
            path = self.folder / name
            if not path.is_file():
                raise FileNotFoundError(f"{path}: graph not found (write the folder with zoo export onnx)")
            sessions.append(onnxruntime.InferenceSession(str(path), options, providers=chosen))
        self.encoder, self.decoder = sessions
        self.encoding_names = [output.name for output in self.encoder.get_outputs()]
        self.decoder_outputs = [output.name for output in self.decoder.get_outputs()]
        mask_shape = next(i.shape for i in self.decoder.get_inputs() if i.name == MASK_INPUT)
        self.low_res_shape = tuple(int(s) for s in mask_shape[2:])
        metadata = self.encoder.get_modelmeta().custom_metadata_map
        self.weights_origin = metadata.get(f"{METADATA_PREFIX}weights_origin", "")
        self.model_name = metadata.get(f"{METADATA_PREFIX}model_name", self.processor_type)
        written = metadata.get(f"{METADATA_PREFIX}prompt_kinds")  # absent in folders of the first exporter
        default = "points,boxes,masks" if self.spatial_dims == 2 else "points,masks"
        self.prompt_kinds = frozenset((written or default).split(","))
        if not self.weights_origin:
            warnings.warn(f"{self.folder}: exported from a model with RANDOM weights (masks are meaningless)",
                          RandomWeightsWarning, stacklevel=2)
        self.reset_image()

    # ------------------------------------------------------------------------------------------ the image
    def reset_image(self) -> None:
        """Forget the current image and its embedding."""
        self.image: Any = None
        self.source = "image"
        self.frame: ModelInput2D | None = None
        self.embedding: list[np.ndarray] | None = None
        self.crop: _Crop | None = None

    @property
    def is_image_set(self) -> bool:
        return self.image is not None

    @property
    def original_shape(self) -> tuple[int, ...]:
        if self.image is None:
            raise RuntimeError("call set_image(...) first")
        return tuple(int(s) for s in (self.image.shape[:2] if self.spatial_dims == 2 else self.image.shape))

    def set_image(self, image: Any, source: str | None = None) -> None:
        """Take an image (2D array) or a volume (NIfTI path or ``Volume``) and, for 2D models, embed it now."""
        self.reset_image()
        if self.spatial_dims == 3:
            volume = image if isinstance(image, Volume) else load_stored(Path(image))
            self.image, self.source = volume, source or str(volume.path)
            return
        where = source or "image"
        frame = self._prepare_2d(np.asarray(image), where)
        self.embedding = self._encode(frame.model_input)
        self.image, self.frame, self.source = np.asarray(image), frame, where

    def _prepare_2d(self, image: np.ndarray, source: str) -> ModelInput2D:
        config, size = self.config, self.image_size
        if self.processor_type == "litemedsam":
            return litemedsam_input(image, size, source)
        if self.processor_type == "sam_med2d":
            return sam_med2d_input(image, size, config["pixel_mean"], config["pixel_std"], config["geometry"], source)
        return longest_side_input(image, size, config["pixel_mean"], config["pixel_std"], source)

    def _encode(self, model_input: np.ndarray) -> list[np.ndarray]:
        return self.encoder.run(None, {MODEL_INPUT: model_input[None].astype(np.float32)})

    # ------------------------------------------------------------------------------------------ prompts
    def predict(
        self, point_coords: Any = None, point_labels: Any = None, box: Any = None, mask_input: Any = None
    ) -> OnnxPrediction:
        """Segment the current image from prompts in original coordinates (as :meth:`Predictor.predict`).

        Args:
            point_coords: ``N x 2`` clicks ``(x, y)`` (2D) or ``N x 3`` voxel indices ``(i, j, k)`` (3D).
            point_labels: ``N`` labels: 1 foreground, 0 background (default: all foreground).
            box: ``(x0, y0, x1, y1)`` or ``K x 4`` (2D); several boxes give several masks.
            mask_input: a previous prediction's ``low_res_logits`` (``1 x *low_res``).
        """
        if not self.is_image_set:
            raise RuntimeError("call set_image(...) before predict(...)")
        if point_coords is None and box is None and mask_input is None:
            raise PromptError("give at least one prompt: point_coords with point_labels, box, or mask_input")
        if point_coords is None and point_labels is not None:
            raise PromptError("point_labels given without point_coords")
        kinds = {k for k, v in (("points", point_coords), ("boxes", box), ("masks", mask_input)) if v is not None}
        check_kinds(kinds, self.prompt_kinds, self.model_name, self.source)
        points, labels = self._points(point_coords, point_labels)
        boxes = None if box is None else self._boxes(box)
        mask = None if mask_input is None else self._mask(mask_input)
        if self.spatial_dims == 3:
            return self._predict_3d(points, labels, mask)
        return self._predict_2d(points, labels, boxes, mask)

    def _points(self, coords: Any, labels: Any) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``N x D`` float32 points in index order and ``N`` labels, checked against the image by the validator's
        rules (:mod:`zoo.prompts.rules`, the same messages as the PyTorch Predictor)."""
        if coords is None:
            return None, None
        shape = self.original_shape
        order = "xy" if self.spatial_dims == 2 else "index"
        index, values = user_points(coords, labels, len(shape), order, self.source)
        index = index.astype(np.float32)
        check_point_array(index[None], values[None], shape, self.source)
        return index, values

    def _boxes(self, box: Any) -> tuple[np.ndarray, np.ndarray]:
        """``K x 2`` float32 ``lo`` and ``hi`` corners (index order) of ``(x0, y0, x1, y1)`` boxes inside the image."""
        lo, hi = (corner.astype(np.float32) for corner in user_boxes(box, self.spatial_dims, self.source))
        check_box_array(lo, hi, self.original_shape, self.source)
        return lo, hi

    def _mask(self, mask_input: Any) -> np.ndarray:
        logits = np.asarray(mask_input, dtype=np.float32)
        while logits.ndim < 2 + self.spatial_dims:
            logits = logits[None]
        if tuple(logits.shape[2:]) != self.low_res_shape or logits.shape[1] != 1:
            grid = " x ".join(map(str, self.low_res_shape))
            raise PromptError(f"a mask prompt is B x 1 x {grid} low-res logits, got {logits.shape}", self.source)
        return logits

    # ------------------------------------------------------------------------------------------ decoding
    def _decode(
        self, coords: np.ndarray, labels: np.ndarray, boxes: np.ndarray | None, mask: np.ndarray | None
    ) -> dict[str, np.ndarray]:
        """One decoder run for ``B`` prompt sets (``coords`` ``B x N x D`` on the model grid)."""
        embedding = self.embedding if self.spatial_dims == 2 else self.crop.embedding  # type: ignore[union-attr]
        batch = coords.shape[0]
        feeds = dict(zip(self.encoding_names, embedding))
        feeds[POINT_COORDS] = coords.astype(np.float32)
        feeds[POINT_LABELS] = labels.astype(np.int64)
        if self.spatial_dims == 2:
            feeds[BOXES] = np.zeros((batch, 0, 4), np.float32) if boxes is None else boxes.astype(np.float32)
        if mask is None:
            feeds[MASK_INPUT] = np.zeros((batch, 1, *self.low_res_shape), np.float32)
        else:
            feeds[MASK_INPUT] = np.broadcast_to(mask, (batch, *mask.shape[1:])).astype(np.float32)
        feeds[HAS_MASK_INPUT] = np.array([0.0 if mask is None else 1.0], np.float32)
        return dict(zip(self.decoder_outputs, self.decoder.run(None, feeds)))

    def _predict_2d(
        self,
        points: np.ndarray | None,
        labels: np.ndarray | None,
        boxes: tuple[np.ndarray, np.ndarray] | None,
        mask: np.ndarray | None,
    ) -> OnnxPrediction:
        frame = self.frame
        assert frame is not None
        sets = 1 if boxes is None else len(boxes[0])
        if points is not None and sets > 1:
            raise PromptError(f"1 point sets but {sets} boxes", self.source)
        if points is None:
            coords, point_labels = np.zeros((sets, 0, 2), np.float32), np.zeros((sets, 0), np.int64)
        else:  # index order through the frame's map, then SAM's (x, y)
            mapped = map_coords(frame.to_model, points).astype(np.float32)[:, ::-1]
            coords = np.broadcast_to(mapped, (sets, *mapped.shape))
            point_labels = np.broadcast_to(labels, (sets, len(labels)))
        model_boxes = None
        if boxes is not None:
            lo, hi = boxes
            if self.processor_type == "litemedsam":
                lo, hi = litemedsam_box(lo, hi, frame.original_shape, self.image_size)
            else:  # the two corners as coordinates (SAM's apply_boxes)
                lo = map_coords(frame.to_model, lo).astype(np.float32)
                hi = map_coords(frame.to_model, hi).astype(np.float32)
            model_boxes = np.stack([lo[:, 1], lo[:, 0], hi[:, 1], hi[:, 0]], axis=1)[:, None]
        out = self._decode(coords, point_labels, model_boxes, mask)
        top, left, height, width = frame.window
        window = out[MODEL_GRID_LOGITS][:, 0, top : top + height, left : left + width]
        logits = resize_bilinear(window, frame.original_shape)
        iou = out.get(IOU_PREDICTIONS)
        return OnnxPrediction(
            self._binarize(logits), logits, None if iou is None else iou[:, 0], out[LOW_RES_LOGITS][:, 0]
        )

    def _binarize(self, logits: np.ndarray) -> np.ndarray:
        """The decode policy's threshold: ``sigmoid(logits) > 0.5`` or ``logits > 0``."""
        if self.policy["binarize"] == "sigmoid":
            with np.errstate(over="ignore"):
                return np.float32(1.0) / (np.float32(1.0) + np.exp(-logits)) > np.float32(0.5)
        return logits > 0

    # ------------------------------------------------------------------------------------------ SAM-Med3D
    def _predict_3d(
        self, points: np.ndarray | None, labels: np.ndarray | None, mask: np.ndarray | None
    ) -> OnnxPrediction:
        volume: Volume = self.image
        self._ensure_crop(points)
        crop = self.crop
        assert crop is not None
        if mask is None and self.policy["first_mask"] == "zeros":
            mask = np.zeros((1, 1, *self.low_res_shape), np.float32)
        if points is None:
            out = self._decode(np.zeros((1, 0, 3), np.float32), np.zeros((1, 0), np.int64), None, mask)
        else:
            mapped = map_coords(crop.to_model, points).astype(np.float32)
            limit = np.float32(self.image_size - 0.5)
            outside = ((mapped < -0.5) | (mapped > limit)).any(axis=1)
            if outside.any():
                raise PromptError(
                    f"point {int(np.flatnonzero(outside)[0])} falls outside the {(self.image_size,) * 3} crop centred "
                    "on the object's points; split the points into objects that each fit one crop",
                    self.source,
                )
            for count in range(1, len(mapped) + 1):  # the authors' inference: one click per point, in order
                out = self._decode(mapped[None, :count], labels[None, :count], None, mask)
                mask = out[LOW_RES_LOGITS]
        crop_mask = out[MODEL_GRID_MASK][0, 0].astype(np.uint8)
        restored = paste_back_nearest(crop_mask, crop.affine, volume.shape, volume.affine) > 0
        iou = out.get(IOU_PREDICTIONS)
        return OnnxPrediction(restored[None], None, None if iou is None else iou[:, 0], out[LOW_RES_LOGITS][:, 0])

    def _ensure_crop(self, points: np.ndarray | None) -> None:
        """Crop around these points unless the current crop already holds them all."""
        if points is None:
            if self.crop is None:
                raise PromptError("SAM-Med3D needs a point for its first prediction", self.source)
            return
        if self.crop is not None:
            mapped = map_coords(self.crop.to_model, points).astype(np.float32)
            if ((mapped >= -0.5) & (mapped <= self.image_size - 0.5)).all():
                return
        volume: Volume = self.image
        config = self.config
        spacing, max_bytes = config["target_spacing_mm"], int(config["max_resampled_bytes"])
        plan = plan_for_volume(volume.array, volume.affine, spacing, max_bytes, volume.path)
        size = (self.image_size,) * 3
        points64 = points.astype(np.float64)
        roi, affine, _ = crop_around_voxels(volume.array, volume.affine, plan, points64, size, self.source)
        model_input = normalise_crop(roi, config["normalization"], self.source)
        embedding = self._encode(model_input[None])
        self.crop = _Crop(affine, between_affines(volume.affine, affine), embedding)


__all__ = ["OnnxPrediction", "OnnxPredictor", "RandomWeightsWarning"]
