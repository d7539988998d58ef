"""Evaluation metrics per prompt protocol and per class, synchronised across processes by torchmetrics."""

from collections.abc import Sequence

import torch
from monai.metrics import compute_dice, compute_surface_dice
from torch import Tensor
from torchmetrics import Metric


def dice_per_sample(pred: Tensor, target: Tensor) -> Tensor:
    """Dice of binary ``B x 1 x *spatial`` masks, ``B`` values; 1 when both are empty, 0 when only one is."""
    return compute_dice(
        y_pred=pred.float(), y=target.float(), include_background=True, ignore_empty=False, num_classes=None
    )[:, 0]


def surface_dice_per_sample(
    pred: Tensor, target: Tensor, tolerance_mm: float, spacing_mm: Sequence[float], surfels: bool = False
) -> Tensor:
    """Normalised surface Dice (NSD) at ``tolerance_mm`` of binary ``B x 1 x *spatial`` masks, ``B`` values.

    ``surfels=True`` weighs each boundary element by its surface area as DeepMind's ``surface_distance`` does
    (SAM-Med3D's ``metric_utils.py``; MONAI's ``use_subvoxels``); otherwise every boundary voxel counts once.
    """
    return compute_surface_dice(
        y_pred=pred.float(),
        y=target.float(),
        class_thresholds=[tolerance_mm],
        include_background=True,
        distance_metric="euclidean",
        spacing=list(spacing_mm),
        use_subvoxels=surfels,
    )[:, 0]


class PerClassMean(Metric):
    """Mean of a per-sample score for each of ``num_classes`` classes, and over all masks (NaN scores are skipped)."""

    full_state_update = False

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.add_state("total", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")
        self.add_state("count", default=torch.zeros(num_classes, dtype=torch.float64), dist_reduce_fx="sum")

    def update(self, scores: Tensor, class_index: Tensor) -> None:
        valid = ~scores.isnan()
        if class_index.min() < 0 or class_index.max() >= self.num_classes:
            raise ValueError(f"class index outside 0..{self.num_classes - 1}: {class_index.tolist()}")
        self.total.index_add_(0, class_index[valid], scores[valid].double())
        self.count.index_add_(0, class_index[valid], torch.ones_like(scores[valid], dtype=torch.float64))

    def compute(self) -> Tensor:
        """Per-class means (NaN for classes never seen)."""
        return self.total / self.count

    def mask_mean(self) -> Tensor:
        """The mean over every scored mask, whatever its class (the 2D authors' ``test.py`` average)."""
        return self.total.sum() / self.count.sum()
