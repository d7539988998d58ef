"""Prompt schedules: how the interactive training loop and the evaluation protocol prompt the model.

Each paper's loop is a configuration of :class:`TrainingPromptSchedule`, not a copy of the loop:

- SAM-Med3D (``train.py``): 11 iterations, one random error-region click per iteration, only the newest click
  fed, the previous low-res logits as mask prompt with zeros first, mask-only prompts at one random iteration
  in [2, 8] and at the last one, clicks from ``logits > 0.5``, losses summed, gradients into the encoder from
  every iteration.
- SAM-Med2D (``train.py``): first prompt a box or one foreground point (50/50), then 8 iterations adding
  1/3/5/9 error-region points (not accumulated) with ``sigmoid(previous logits)`` as mask prompt, mask-only at
  one random iteration in [1, 6] and at the last; later iterations train the decoder only.
- SAM-UNet: one box prompt per mask, a single iteration.
"""

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class TrainingPromptSchedule:
    """The interactive prompt simulation of one training step."""

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

    def __post_init__(self) -> None:
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


@dataclass
class EvaluationProtocol:
    """How validation and test prompt the model; Dice (and NSD in 3D) is reported after each listed count.

    Points follow the iterative protocol both papers evaluate with: a random foreground first click, then one
    random error-region click per round, all clicks accumulated. Everything else is the model's processor: the
    previous mask fed back as its authors feed it (logits or probabilities; SAM-Med3D's all-zero first mask), its
    decode policy (best of three masks or the single mask) and its threshold. ``mask_feedback=False`` decodes every
    click without a mask prompt; ``multimask_output`` overrides the processor's choice (None keeps it).
    """

    clicks: list[int] = field(default_factory=lambda: [1, 3, 5, 10])
    box: bool = False
    mask_feedback: bool = True
    multimask_output: bool | None = None
    nsd_tolerance_mm: float | None = None
    seed: int = 233

    def __post_init__(self) -> None:
        if self.clicks and min(self.clicks) < 1:
            raise ValueError(f"click counts must be >= 1, got {self.clicks}")
        self.clicks = sorted(set(self.clicks))
