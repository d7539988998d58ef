"""The papers' segmentation losses, built from MONAI's Dice / DiceCE / Focal losses.

Every loss takes full-resolution mask logits ``B x 1 x *spatial``, binary targets of the same shape and, where
the model has an IoU head, the predicted IoU ``B x 1``.
"""

from dataclasses import dataclass
from typing import Literal

import torch
from monai.losses import DiceCELoss, DiceLoss, FocalLoss
from torch import Tensor, nn


def soft_iou(logits: Tensor, target: Tensor, eps: float = 1e-7) -> Tensor:
    """IoU of the sigmoid probabilities with the target, pooled over the whole batch (as SAM-Med2D computes it)."""
    probs = logits.sigmoid()
    intersection = (probs * target).sum()
    union = probs.sum() + target.sum() - intersection
    return (intersection + eps) / (union + eps)


def hard_iou(logits: Tensor, target: Tensor) -> Tensor:
    """``B x 1`` IoU of ``sigmoid(logits) > 0.5`` with the target, per sample (LiteMedSAM's ``cal_iou``)."""
    predicted, truth = torch.sigmoid(logits) > 0.5, target > 0.5
    dims = tuple(range(1, logits.ndim))
    intersection = (predicted & truth).sum(dim=dims).to(logits.dtype)
    union = (predicted | truth).sum(dim=dims).to(logits.dtype)
    return (intersection / union)[:, None]


@dataclass
class LossWeights:
    """Weights of the loss terms; a zero weight drops the term."""

    dice_ce: float = 0.0
    focal: float = 0.0
    dice: float = 0.0
    iou_mse: float = 0.0


class SegmentationLoss(nn.Module):
    """Weighted sum of DiceCE (sigmoid, squared denominators), focal, soft Dice and IoU-regression terms.

    - SAM-Med3D: ``dice_ce=1`` (MONAI ``DiceCELoss(sigmoid=True, squared_pred=True)``).
    - SAM-Med2D: ``focal=20, dice=1, iou_mse=1``.
    - SAM-UNet: ``focal=1, dice=20``.
    - LiteMedSAM (``train_multi_gpus.py``): ``dice_ce=1, iou_mse=1, iou_target="hard"`` (MONAI ``DiceLoss(sigmoid,
      squared_pred)`` + ``BCEWithLogitsLoss``, which is ``DiceCELoss``; the IoU head regressed on the IoU of
      ``sigmoid > 0.5`` with the target, per sample, without gradient).
    Focal uses alpha 0.25 and gamma 2; Dice has smoothing 1 and pools the whole batch (both upstream repos).
    ``iou_target="soft"`` is SAM-Med2D's target: the batch-pooled soft IoU, kept in the graph.
    """

    def __init__(
        self,
        dice_ce: float = 0.0,
        focal: float = 0.0,
        dice: float = 0.0,
        iou_mse: float = 0.0,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        iou_target: Literal["soft", "hard"] = "soft",
    ) -> None:
        super().__init__()
        if iou_target not in ("soft", "hard"):
            raise ValueError(f"iou_target must be 'soft' or 'hard', got {iou_target!r}")
        self.iou_target = iou_target
        self.weights = LossWeights(dice_ce, focal, dice, iou_mse)
        if not any(vars(self.weights).values()):
            raise ValueError("at least one loss weight must be non-zero")
        self.dice_ce_loss = DiceCELoss(sigmoid=True, squared_pred=True, reduction="mean")
        self.focal_loss = FocalLoss(gamma=focal_gamma, alpha=focal_alpha, use_softmax=False, reduction="mean")
        self.dice_loss = DiceLoss(sigmoid=True, batch=True, smooth_nr=1.0, smooth_dr=1.0, reduction="mean")

    def forward(self, logits: Tensor, target: Tensor, iou_pred: Tensor | None = None) -> Tensor:
        w = self.weights
        target = target.to(logits.dtype)
        total = logits.new_zeros(())
        if w.dice_ce:
            total = total + w.dice_ce * self.dice_ce_loss(logits, target)
        if w.focal:
            total = total + w.focal * self.focal_loss(logits, target)
        if w.dice:
            total = total + w.dice * self.dice_loss(logits, target)
        if w.iou_mse:
            if iou_pred is None:
                raise ValueError("the IoU term needs a model with an IoU head (iou_predictions is None)")
            if self.iou_target == "hard":
                reference = hard_iou(logits.detach(), target)
            else:  # SAM-Med2D keeps the target IoU in the graph, so this term also pulls on the mask logits
                reference = soft_iou(logits, target)
            total = total + w.iou_mse * torch.mean((iou_pred - reference) ** 2)
        return total
