"""Prompt schedules: how the interactive training loop and the evaluation protocol prompt the model.

Each paper's loop is a configuration of :class:`TrainingPromptSchedule`, not a copy of the loop:

- SAM-Med3D (``train.py``): 11 passes, one random error-region click per pass, only the newest click fed, the
  previous low-res logits (not detached) as mask prompt with zeros first, mask-only prompts at one random pass in
  [2, 8] and at the last one, clicks from ``logits > 0.5``, losses summed into one backward, gradients into the
  encoder from every pass.
- SAM-Med2D (``train.py``): first prompt a box or one foreground point (50/50), then 8 passes adding 1/3/5/9
  error-region points (not accumulated) with ``sigmoid(previous logits)`` as mask prompt, mask-only at one random
  pass in [2, 7] and at the last (pass 8); later passes train the decoder only; the optimiser steps after every
  pass.
- SAM-UNet: one box prompt per mask, a single pass.

Passes are counted from 0 (the first prompt) to ``iterations - 1``. :class:`CyclicMultiStepLR` is the SAM-Med3D
paper's learning-rate schedule (supplement C.2).
"""

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler


@dataclass
class TrainingPromptSchedule:
    """The interactive prompt simulation of one training batch, and when the optimiser steps.

    ``optimizer_step="summed"`` adds the passes' losses and steps once per batch (Lightning's automatic
    optimisation, with ``trainer.accumulate_grad_batches`` and AMP as usual). ``"per_pass"`` is SAM-Med2D's
    ``train.py``: backward and ``optimizer.step()`` after every pass (manual optimisation; needs
    ``decoder_only_after_first`` and detached feedback, since the first pass's encoder graph is gone after its
    step). With ``accumulate_batches = k`` each pass's loss is divided by ``k`` and the optimiser steps once per
    pass for ``k`` batches run in lockstep (pass ``j`` of all ``k`` batches, then the step of pass ``j``);
    Lightning refuses ``trainer.accumulate_grad_batches`` with manual optimisation. ``zero_grad="zeros"`` clears
    gradients as torch < 2.0 did (``Optimizer.zero_grad(set_to_none=False)``): parameters that had a gradient
    keep a zero one, so Adam keeps moving them by momentum in passes that do not reach them; ``"none"`` is
    torch >= 2.0 (they are skipped). One device only: DDP allows one backward per forward.
    """

    iterations: int = 1
    first_prompt: Literal["point", "box", "box_or_point"] = "point"
    # Probability of a box when first_prompt is "box_or_point" (drawn once per batch, as SAM-Med2D).
    box_probability: float = 0.5
    box_jitter: Literal["none", "sam_med2d", "litemedsam"] = "sam_med2d"
    # Error-region clicks added per later iteration; one value drawn per iteration.
    clicks_per_iteration: list[int] = field(default_factory=lambda: [1])
    accumulate_clicks: bool = False
    mask_prompt: Literal["none", "logits", "sigmoid"] = "logits"
    zero_mask_first: bool = False
    # One random mask-only iteration drawn from [lo, hi] (inclusive); None for none.
    mask_only_iteration_range: list[int] | None = None
    mask_only_last: bool = False
    # Clicks come from the error of ``logits > click_threshold`` (0.0 is sigmoid > 0.5; SAM-Med3D trains with 0.5).
    click_threshold: float = 0.0
    # After the first iteration, only the mask decoder learns (image features detached, prompt encoder frozen).
    decoder_only_after_first: bool = False
    multimask_output: bool = False
    # Feed the previous pass's low-res logits back detached (no gradient between passes). SAM-Med3D's train.py
    # does not detach: every pass's loss reaches the earlier passes through the mask prompts.
    detach_mask_feedback: bool = True
    optimizer_step: Literal["summed", "per_pass"] = "summed"
    accumulate_batches: int = 1
    zero_grad: Literal["none", "zeros"] = "none"

    def __post_init__(self) -> None:
        if self.optimizer_step not in ("summed", "per_pass"):
            raise ValueError(f"optimizer_step must be 'summed' or 'per_pass', got {self.optimizer_step!r}")
        if self.zero_grad not in ("none", "zeros"):
            raise ValueError(f"zero_grad must be 'none' or 'zeros', got {self.zero_grad!r}")
        if self.accumulate_batches < 1:
            raise ValueError(f"accumulate_batches must be >= 1, got {self.accumulate_batches}")
        if self.optimizer_step == "summed" and self.accumulate_batches != 1:
            raise ValueError("accumulate_batches is for optimizer_step='per_pass'; use trainer.accumulate_grad_batches")
        if self.optimizer_step == "per_pass" and self.iterations > 1 and (
            not self.decoder_only_after_first or not self.detach_mask_feedback
        ):
            raise ValueError(
                "optimizer_step='per_pass' needs decoder_only_after_first=True and detach_mask_feedback=True: "
                "after the first pass's step its encoder graph cannot be backpropagated again"
            )
        if self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if not self.clicks_per_iteration or min(self.clicks_per_iteration) < 1:
            raise ValueError(f"clicks_per_iteration must be positive counts, got {self.clicks_per_iteration}")
        if self.mask_only_iteration_range is not None:
            lo, hi = self.mask_only_iteration_range
            if not 0 < lo <= hi < self.iterations:
                raise ValueError(
                    f"mask_only_iteration_range {self.mask_only_iteration_range} must lie in 1..{self.iterations - 1}"
                )
            if self.mask_prompt == "none":
                raise ValueError("mask-only iterations need a mask prompt (mask_prompt 'logits' or 'sigmoid')")

    def mask_only_passes(self, rng: random.Random) -> set[int]:
        """The passes (0-based) of one batch that get the mask prompt only: one drawn from
        ``mask_only_iteration_range`` (inclusive) and, with ``mask_only_last``, the last."""
        passes = set()
        if self.mask_only_iteration_range is not None:
            passes.add(rng.randint(*self.mask_only_iteration_range))
        if self.mask_only_last and self.iterations > 1:
            passes.add(self.iterations - 1)
        return passes


@dataclass
class EvaluationProtocol:
    """How validation and test prompt the model and score it.

    Points (``clicks``) follow the iterative protocol: a random foreground first click, then one random
    error-region click per round, all clicks accumulated, scored after each listed count (SAM-Med3D's
    ``infer_utils.py``; SAM-Med2D's ``test.py --iter_point n``). ``simultaneous_points`` is SAM-Med2D's
    ``test.py --point_num n``: ``n // 2`` foreground and ``n - n // 2`` background points drawn at once, one decoder
    pass (logged as ``{n}pt_simultaneous``). Everything else is the model's processor: the previous mask fed back
    as its authors feed it (logits or probabilities; SAM-Med3D's all-zero first mask), its decode policy (best of
    three masks or the single mask) and its threshold. ``mask_feedback=False`` decodes every click without a mask
    prompt; ``multimask_output`` overrides the processor's choice (None keeps it).

    Scoring: ``grid="original"`` maps each mask back through the processor (``to_original``) and scores it against
    the target on the original image or volume (as every author does; SAM-Med3D: voxels outside the crop are
    misses, NSD at the file's spacing); ``"model"`` scores on the model's input grid (crop or 256 grid).
    ``headline`` picks what ``{stage}/dice/{protocol}`` reports: ``"mask_mean"``, the mean over all masks (the
    2D authors' ``test.py`` numbers) or ``"class_mean"``, the mean of per-class means (SAM-Med3D's
    ``print_computed_metrics``); both are always logged as ``{stage}/dice_mask_mean/...`` and
    ``{stage}/dice_class_mean/...``. ``nsd_boundary="surfels"`` measures surfaces as DeepMind's
    ``surface_distance`` (SAM-Med3D's ``metric_utils.py``; MONAI ``use_subvoxels=True``), ``"edge_voxels"`` counts
    boundary voxels (MONAI's default). ``first_click="crop_centre"`` puts the first click at the centre of the crop
    (the SAM-Med3D paper's evaluation crops around the first point: use it with a DataModule whose evaluation crop
    is centred on a random foreground voxel).
    """

    clicks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    box: bool = False
    simultaneous_points: list[int] = field(default_factory=list)
    mask_feedback: bool = True
    multimask_output: bool | None = None
    nsd_tolerance_mm: float | None = None
    nsd_boundary: Literal["edge_voxels", "surfels"] = "edge_voxels"
    grid: Literal["original", "model"] = "original"
    headline: Literal["mask_mean", "class_mean"] = "class_mean"
    first_click: Literal["random_foreground", "crop_centre"] = "random_foreground"
    seed: int = 233

    def __post_init__(self) -> None:
        if (self.clicks and min(self.clicks) < 1) or (self.simultaneous_points and min(self.simultaneous_points) < 1):
            raise ValueError(f"point counts must be >= 1, got {self.clicks} and {self.simultaneous_points}")
        self.clicks = sorted(set(self.clicks))
        self.simultaneous_points = sorted(set(self.simultaneous_points))
        for name, allowed in (
            ("grid", ("original", "model")),
            ("headline", ("mask_mean", "class_mean")),
            ("nsd_boundary", ("edge_voxels", "surfels")),
            ("first_click", ("random_foreground", "crop_centre")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")


class CyclicMultiStepLR(LRScheduler):
    """Multi-step decay that restarts every ``cycle_length`` epochs: within each cycle the learning rate is the
    base rate times ``gamma`` to the number of ``milestones`` (epochs within the cycle) reached.

    The SAM-Med3D paper's schedule (supplement C.2): divided by 10 at the 120th, 160th and 190th epoch of every
    200-epoch cycle, restored at the end of each cycle. Stepped once per epoch.
    """

    def __init__(
        self,
        optimizer: Optimizer,
        cycle_length: int,
        milestones: Sequence[int],
        gamma: float = 0.1,
        last_epoch: int = -1,
    ) -> None:
        if cycle_length < 1 or any(not 0 < m < cycle_length for m in milestones):
            raise ValueError(f"milestones {list(milestones)} must lie inside the cycle of {cycle_length} epochs")
        self.cycle_length, self.milestones, self.gamma = int(cycle_length), sorted(int(m) for m in milestones), gamma
        super().__init__(optimizer, last_epoch)

    def factor(self, epoch: int) -> float:
        """The multiple of the base learning rate in ``epoch`` (0-based)."""
        within = epoch % self.cycle_length
        return self.gamma ** sum(within >= m for m in self.milestones)

    def get_lr(self) -> list[float]:
        return [base * self.factor(self.last_epoch) for base in self.base_lrs]
