"""Scores of one predicted mask against its label, on the label's own grid: Dice, normalised surface Dice (NSD) and
HD95 from MONAI (``monai.metrics``), every argument spelled out.

Conventions (those of the papers' scripts where they state one):

* Dice: ``2 |P n G| / (|P| + |G|)``; 1 when both masks are empty (MONAI ``ignore_empty=False``), 0 when only one is.
* NSD at ``tolerance`` (mm for volumes, pixels for 2D images) with the grid's ``spacing``: boundary elements
  weighted by their surface area (``surfels``, DeepMind's ``surface_distance`` that SAM-Med3D's
  ``utils/metric_utils.py`` calls; MONAI ``use_subvoxels=True``) or counted once each (``voxels``). 0 when exactly
  one mask is empty; NaN when both are (no surface to compare).
* HD95: the symmetric 95th-percentile Hausdorff distance in the spacing's units; NaN when either mask is empty
  (undefined, reported as missing rather than as a number).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance, compute_surface_dice
from torch import Tensor

Boundary = Literal["surfels", "voxels"]


@dataclass(frozen=True)
class MetricSettings:
    """What is computed and at which tolerance (stated in every report)."""

    nsd_tolerance: float
    nsd_boundary: Boundary = "surfels"
    hd95: bool = False

    def __post_init__(self) -> None:
        if not self.nsd_tolerance > 0:
            raise ValueError(f"the NSD tolerance must be positive, got {self.nsd_tolerance}")
        if self.nsd_boundary not in ("surfels", "voxels"):
            raise ValueError(f"nsd_boundary must be 'surfels' or 'voxels', got {self.nsd_boundary!r}")


def _batch(mask: np.ndarray | Tensor) -> Tensor:
    """A bool mask as MONAI's ``1 x 1 x *spatial`` float tensor (one-hot of the foreground class only)."""
    tensor = mask if isinstance(mask, Tensor) else torch.from_numpy(np.ascontiguousarray(mask))
    return tensor.to(torch.bool).to(torch.float32)[None, None]


def dice(prediction: np.ndarray | Tensor, target: np.ndarray | Tensor) -> float:
    """Dice of two bool masks of one shape (1 when both are empty)."""
    return float(
        compute_dice(
            y_pred=_batch(prediction), y=_batch(target), include_background=True, ignore_empty=False, num_classes=None
        )[0, 0]
    )


def surface_dice(
    prediction: np.ndarray | Tensor,
    target: np.ndarray | Tensor,
    tolerance: float,
    spacing: Sequence[float],
    boundary: Boundary = "surfels",
) -> float:
    """NSD at ``tolerance`` (in ``spacing``'s units) of two bool masks; NaN when both are empty."""
    with warnings.catch_warnings():  # MONAI warns about empty masks, whose value is defined above
        warnings.filterwarnings("ignore", message=".*is all 0.*")
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_surface_dice(
            y_pred=_batch(prediction),
            y=_batch(target),
            class_thresholds=[float(tolerance)],
            include_background=True,
            distance_metric="euclidean",
            spacing=[float(s) for s in spacing],
            use_subvoxels=boundary == "surfels",
        )[0, 0]
    return float(value)


def hd95(prediction: np.ndarray | Tensor, target: np.ndarray | Tensor, spacing: Sequence[float]) -> float:
    """Symmetric 95th-percentile Hausdorff distance (``spacing``'s units); NaN when either mask is empty."""
    if not bool(np.any(np.asarray(prediction))) or not bool(np.any(np.asarray(target))):
        return math.nan
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*", category=FutureWarning)
        value = compute_hausdorff_distance(
            y_pred=_batch(prediction),
            y=_batch(target),
            include_background=True,
            distance_metric="euclidean",
            percentile=95.0,
            directed=False,
            spacing=[float(s) for s in spacing],
        )[0, 0]
    return float(value)


def score(
    prediction: np.ndarray | Tensor, target: np.ndarray | Tensor, spacing: Sequence[float], settings: MetricSettings
) -> dict[str, float]:
    """``dice``, ``nsd`` and (when asked) ``hd95`` of one mask on its label's grid."""
    pred = np.asarray(prediction.cpu() if isinstance(prediction, Tensor) else prediction, dtype=bool)
    truth = np.asarray(target.cpu() if isinstance(target, Tensor) else target, dtype=bool)
    if pred.shape != truth.shape:
        raise ValueError(f"prediction {pred.shape} and label {truth.shape} are not on one grid")
    if len(spacing) != truth.ndim:
        raise ValueError(f"{len(spacing)} spacings for a {truth.ndim}-D mask")
    scores = {
        "dice": dice(pred, truth),
        "nsd": surface_dice(pred, truth, settings.nsd_tolerance, spacing, settings.nsd_boundary),
    }
    if settings.hd95:
        scores["hd95"] = hd95(pred, truth, spacing)
    return scores


__all__ = ["Boundary", "MetricSettings", "dice", "hd95", "score", "surface_dice"]
