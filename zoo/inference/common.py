"""Pieces shared by the 2D and 3D predictors: the cached-embedding base class, prompt validation and best-mask
selection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.inference.runtime import ModelRuntime


class InteractivePredictor:
    """A model in eval mode, how it runs (:class:`~zoo.inference.runtime.ModelRuntime`: ``precision``,
    ``compile_encoder``, ``compile_decoder``) and the image side cached by ``set_image`` for every later click."""

    def __init__(
        self,
        model: nn.Module,
        precision: str = "fp32",
        compile_encoder: bool = False,
        compile_decoder: bool = False,
    ) -> None:
        self.model = model.eval()
        self.runtime = ModelRuntime(self.model, precision, compile_encoder, compile_decoder)
        self.image_size: int = model.config.image_size
        self.reset_image()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def reset_image(self) -> None:
        """Forget the current image and its cached embedding."""
        self.features: Any = None

    @property
    def is_image_set(self) -> bool:
        return self.features is not None


def as_tensor(value: Any, dtype: torch.dtype | None = None) -> Tensor:
    """A tensor view of an array, list or tensor, optionally cast to ``dtype``."""
    tensor = value if isinstance(value, Tensor) else torch.as_tensor(np.asarray(value))
    return tensor.to(dtype) if dtype is not None else tensor


def binarize(logits: Tensor) -> Tensor:
    """``sigmoid(logits) > 0.5`` as bool, evaluated like upstream (not ``logits > 0``: they differ for tiny logits)."""
    return torch.sigmoid(logits) > 0.5


def select_best_mask(low_res_logits: Tensor, iou_predictions: Tensor) -> tuple[Tensor, Tensor]:
    """Keep, per prompt, the mask with the highest predicted IoU (as SAM-Med2D's predictor and ``test.py`` do).

    ``low_res_logits`` is ``B x M x *grid`` and ``iou_predictions`` ``B x M``; returns ``B x 1 x *grid`` and ``B x 1``.
    """
    best_iou, best_index = torch.max(iou_predictions, dim=1)
    rows = torch.arange(low_res_logits.shape[0], device=low_res_logits.device)
    return low_res_logits[rows, best_index].unsqueeze(1), best_iou.unsqueeze(1)


def check_points_inside(coords: Tensor, extent: Sequence[int], axis_names: Sequence[str], what: str) -> None:
    """Raise ``ValueError`` if any coordinate lies outside ``[0, extent]`` along its axis.

    ``coords`` is ``... x len(extent)``; ``axis_names`` label the axes in the message (e.g. ``("x", "y")``).
    """
    if coords.shape[-1] != len(extent):
        raise ValueError(f"{what} must end in a dimension of size {len(extent)}, got shape {tuple(coords.shape)}")
    if not torch.isfinite(coords).all():
        raise ValueError(f"{what} contain NaN or infinite values")
    limits = torch.tensor([float(size) for size in extent], dtype=coords.dtype, device=coords.device)
    outside = (coords < 0) | (coords > limits)
    if outside.any():
        flat = coords.reshape(-1, len(extent))
        bad = flat[outside.reshape(-1, len(extent)).any(dim=1)][0].tolist()
        bounds = ", ".join(f"{name} in [0, {size}]" for name, size in zip(axis_names, extent))
        raise ValueError(f"{what} {bad} lies outside the image ({bounds})")


def check_labels(labels: Tensor, num_points: int) -> None:
    """Point labels must be one per point and each -1 (padding), 0 (background) or 1 (foreground)."""
    if labels.shape[-1] != num_points:
        raise ValueError(f"got {num_points} points but {labels.shape[-1]} labels")
    allowed = torch.tensor([-1, 0, 1], dtype=labels.dtype, device=labels.device)
    if not torch.isin(labels, allowed).all():
        raise ValueError(f"point labels must be -1, 0 or 1, got {sorted(set(labels.flatten().tolist()))}")
