"""SAM-Med3D's processor: the authors' inference pipeline (``utils/infer_utils.py``) from a NIfTI volume to the
mask on its own grid.

Forward: resample to ``target_spacing_mm`` (1.5 mm) on the grid the authors' torchio ``Resample`` builds, reorient
to RAS, crop/pad ``S^3`` (128^3) around the object's prompts (padding with raw intensity 0), z-normalise the crop
with the mean and std of its voxels > 0. Points move with the same index map. Back: the low-res logits are
upsampled trilinearly to the crop, thresholded (``sigmoid > 0.5``) and the crop mask is resampled (nearest) onto
the original grid, as the authors' ``data_postprocess``.

Interaction: points are replayed as clicks in the order given; each click decodes all clicks so far with the
previous low-res logits as mask prompt (all-zero logits on the first click), single-mask output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from zoo.errors import PromptError
from zoo.geometry.crop3d import normalise_crop as normalise_crop_values
from zoo.geometry.index_map import IndexMap
from zoo.geometry.separable_resize import resize_trilinear
from zoo.io.nifti import Volume, load_stored
from zoo.processors.base import (
    ClickState,
    Decoded,
    Decoder,
    DecodePolicy,
    ImageFrame,
    OriginalGridResult,
    Processor,
    ProcessorConfig,
)
from zoo.processors.volume3d import Crop, crop_around_points, crop_at, paste_back_nearest, plan_for
from zoo.prompts.types import PointPrompts, Prompts
from zoo.prompts.validate import check_kinds

Normalization = Literal["zscore_positive", "ct_window", "none"]


@dataclass
class SamMed3DProcessorConfig(ProcessorConfig):
    """SAM-Med3D's preprocessing and decode policy; the defaults are the released sam_med3d(_turbo)'s."""

    processor_type = "sam_med3d"
    image_size: int = 128
    decode: DecodePolicy = field(
        default_factory=lambda: DecodePolicy(
            multimask_output=False, binarize="sigmoid", mask_feedback="logits", first_mask="zeros"
        )
    )
    target_spacing_mm: tuple[float, float, float] = (1.5, 1.5, 1.5)
    normalization: Normalization = "zscore_positive"
    #: Largest resampled volume (bytes) a file may need before it is refused, checked before allocating.
    max_resampled_bytes: int = 2 << 30

    def __post_init__(self) -> None:
        spacing = self.target_spacing_mm
        spacing = (float(spacing),) * 3 if isinstance(spacing, (int, float)) else tuple(float(s) for s in spacing)
        if len(spacing) != 3 or min(spacing) <= 0:
            raise ValueError(f"target_spacing_mm must be three positive numbers, got {self.target_spacing_mm!r}")
        self.target_spacing_mm = spacing  # type: ignore[assignment]
        if self.normalization not in ("zscore_positive", "ct_window", "none"):
            raise ValueError(f"unknown normalization {self.normalization!r}")


class SamMed3DProcessor(Processor):
    """NIfTI volume in, mask on the same grid out (see the module docstring)."""

    processor_type = "sam_med3d"
    config_class = SamMed3DProcessorConfig
    family = "sam_med3d"
    model_name = "SAM-Med3D"
    spatial_dims = 3
    prompt_kinds = frozenset({"points", "masks"})
    config: SamMed3DProcessorConfig

    def prepare(self, image: Any, prompts: Prompts | None = None, source: str = "image") -> ImageFrame:
        """The ``1 x S^3`` crop around ``prompts``' points (voxel indices of the file, tensor-index order).

        ``image`` is a NIfTI path (read with :func:`zoo.io.nifti.load_stored`, the voxel type the authors resample
        in) or a :class:`zoo.io.nifti.Volume`. The points are checked against the
        volume first (the one validator).
        """
        volume = _stored(image)
        source = str(volume.path) if volume.path is not None else source
        if prompts is None or prompts.points is None:
            raise PromptError(f"{self.model_name} crops around its point prompts: give at least one point", source)
        self.validate(prompts, volume.shape, source)
        plan = plan_for(volume, self.config.target_spacing_mm, self.config.max_resampled_bytes)
        crop = crop_around_points(volume, plan, prompts.points, self.input_shape, source)
        return self._frame(volume, crop, source)

    def prepare_window(self, image: Any, start: Sequence[int], source: str = "image") -> ImageFrame:
        """The ``S^3`` crop of the resampled, reoriented volume whose first voxel is ``start`` (canonical indices;
        outside the volume is padding, as in :meth:`prepare`). :meth:`prepare` places the authors' crop around the
        points; this places the further crops of an object larger than one crop
        (:mod:`zoo.inference.large_objects`)."""
        volume = _stored(image)
        source = str(volume.path) if volume.path is not None else source
        plan = plan_for(volume, self.config.target_spacing_mm, self.config.max_resampled_bytes)
        return self._frame(volume, crop_at(volume, plan, start, self.input_shape), source)

    def _frame(self, volume: Volume, crop: Crop, source: str) -> ImageFrame:
        model_input = normalise_crop(torch.from_numpy(crop.array), self.config.normalization, source)
        to_model = IndexMap.from_affines(volume.affine, crop.affine, volume.shape, self.input_shape)
        meta = {
            "crop_affine": torch.as_tensor(crop.affine, dtype=torch.float64),
            "original_affine": torch.as_tensor(volume.affine, dtype=torch.float64),
            "crop_start": crop.start,
        }
        return ImageFrame(model_input[None], volume.shape, to_model, meta)

    def _map_prompts(self, prompts: Prompts, frame: ImageFrame) -> Prompts:
        mapped = super()._map_prompts(prompts, frame)
        if mapped.points is not None:
            coords = mapped.points.coords[~mapped.points.is_padding]
            outside = (coords < -0.5) | (coords > torch.tensor(self.input_shape) - 0.5)
            if outside.any():
                row = int(torch.nonzero(outside.any(dim=-1))[0])
                raise PromptError(
                    f"point {row} falls outside the {self.input_shape} crop centred on the object's points; "
                    "split the points into objects that each fit one crop"
                )
        return mapped

    def model_kwargs(self, prompts: Prompts) -> dict[str, Any]:
        """Points in tensor-index order of the crop, unchanged; mask prompts as logits. No boxes."""
        # No boxes: upstream's box embedding is broken. The message is the one validator's.
        check_kinds(prompts.kinds, self.prompt_kinds, self.model_name)
        out: dict[str, Any] = {"points": None, "boxes": None, "masks": None}
        if prompts.points is not None:
            out["points"] = (prompts.points.coords, prompts.points.labels)
        if prompts.masks is not None:
            out["masks"] = prompts.masks.logits
        return out

    def segment(self, model: nn.Module, encoding: Any, prompts: Prompts, decoder: Decoder | None = None) -> Decoded:
        """Replay the points as clicks in order, as the authors' inference does (one click per point)."""
        if prompts.points is None:
            return self.decode(model, encoding, prompts, decoder)
        state = ClickState(next_mask=prompts.masks)
        decoded = None
        points = prompts.points
        for index in range(points.coords.shape[1]):
            one = slice(index, index + 1)
            click = PointPrompts(points.coords[:, one], points.labels[:, one], points.spatial_shape)
            state, decoded = self.click(model, encoding, state, click, decoder=decoder)
        assert decoded is not None
        return decoded

    def upsample(self, low_res_logits: Tensor) -> Tensor:
        """Trilinear (``align_corners=False``) to the crop, as the authors' inference (``Sam3D.postprocess_masks``,
        bilinear on a 5-D tensor, raises upstream and is not reproduced), computed one axis at a time
        (:func:`~zoo.geometry.separable_resize.resize_trilinear`)."""
        return resize_trilinear(low_res_logits, self.input_shape)

    def to_original(self, low_res_logits: Tensor, frame: ImageFrame) -> OriginalGridResult:
        crop_mask = self.binarize(self.upsample(low_res_logits.float()))[0, 0]
        mask = paste_back_nearest(
            crop_mask, frame.meta["crop_affine"], frame.meta["original_affine"], frame.original_shape
        )
        return OriginalGridResult(None, mask)


def _stored(image: Any) -> Volume:
    return image if isinstance(image, Volume) else load_stored(Path(image))


def normalise_crop(crop: Tensor, mode: Normalization, source: str) -> Tensor:
    """SAM-Med3D's ``ZNormalization(masking_method=x > 0)`` (or another ``mode``), float32
    (:func:`zoo.geometry.crop3d.normalise_crop`, which the ONNX runtime calls too)."""
    values = normalise_crop_values(crop.detach().cpu().numpy(), mode, source)
    return torch.from_numpy(values).to(crop.device)
