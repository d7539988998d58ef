"""Initialise a SAM-Med2D model from Meta's SAM ViT-B checkpoint, as SAM-Med2D's ``load_from`` does.

SAM-Med2D (256 input) starts from SAM ViT-B (1024 input):
- the absolute position embedding is resized bilinearly (64 x 64 -> 16 x 16 for ViT-B),
- relative-position tables whose length changed (the global-attention blocks: 127 -> 31) are resized bilinearly,
- the mask decoder's output heads (``mask_tokens``, ``output_hypernetworks_mlps``, ``iou_prediction_head``) are
  not taken from SAM and stay at the model's initialisation,
- the adapters, which SAM does not have, stay at the model's initialisation.
Everything is reported in an :class:`InitReport`, never done silently.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import torch
from torch import nn

from zoo.errors import CheckpointError
from zoo.hub.fingerprint import detect_checkpoint
from zoo.models.loading import load_state_dict_strictly
from zoo.hub.resize import resize_abs_pos_embed, resize_rel_pos
from zoo.hub.state_dict import CheckpointSource, StateDict, read_state_dict

#: SAM decoder parameters SAM-Med2D re-initialises instead of copying.
DECODER_OUTPUT_HEADS = ("mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head")
_POS_EMBED = "image_encoder.pos_embed"


@dataclass
class InitReport:
    """What happened to every key when a model was initialised from another checkpoint."""

    source: str
    copied: list[str] = field(default_factory=list)
    resized: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    kept_at_init: list[str] = field(default_factory=list)
    not_used: list[str] = field(default_factory=list)

    def summary(self, source_label: str | None = None) -> str:
        """Counts, then one line per key that was not copied as is; ``source_label`` replaces the source path."""
        lines = [
            f"Initialised from {source_label or self.source}: {len(self.copied)} tensors copied, "
            f"{len(self.resized)} resized, {len(self.kept_at_init)} left at the model's initialisation, "
            f"{len(self.not_used)} source tensors not used."
        ]
        lines += [f"  resized {key}: {list(old)} -> {list(new)}" for key, (old, new) in self.resized.items()]
        lines += [f"  left at init: {key}" for key in self.kept_at_init]
        lines += [f"  not used: {key}" for key in self.not_used]
        return "\n".join(lines)


def sam_state_dict_for(
    target: Mapping[str, torch.Tensor], sam_state: Mapping[str, torch.Tensor], source: str
) -> tuple[dict[str, torch.Tensor], InitReport]:
    """Map SAM weights onto the keys and shapes of ``target`` (a model's state dict).

    Returns the complete new state dict (target values where SAM gives nothing) and the report.
    """
    report = InitReport(source=source)
    new_state = dict(target)
    pos_embed_resized = _POS_EMBED in sam_state and _POS_EMBED in target and (
        sam_state[_POS_EMBED].shape != target[_POS_EMBED].shape
    )
    for key, value in sam_state.items():
        if key not in target or any(head in key for head in DECODER_OUTPUT_HEADS):
            report.not_used.append(key)
            continue
        wanted = target[key].shape
        if value.shape == wanted:
            new_state[key] = value
            report.copied.append(key)
        elif key == _POS_EMBED:
            new_state[key] = resize_abs_pos_embed(value, (wanted[1], wanted[2]))
            report.resized[key] = (tuple(value.shape), tuple(wanted))
        elif pos_embed_resized and ".rel_pos" in key and value.shape[1:] == wanted[1:]:
            new_state[key] = resize_rel_pos(value, wanted[0])
            report.resized[key] = (tuple(value.shape), tuple(wanted))
        else:
            raise CheckpointError(
                source, f"cannot initialise from it: {key} expected {tuple(wanted)}, found {tuple(value.shape)}"
            )
    report.kept_at_init = [key for key in target if key not in report.copied and key not in report.resized]
    return new_state, report


def init_from_sam(model: nn.Module, source: CheckpointSource) -> InitReport:
    """Initialise a SAM-Med2D-family ``model`` from a SAM checkpoint (path or state dict); return the report."""
    sam_state, source_name = read_state_dict(source)
    return init_from_sam_state_dict(model, sam_state, source_name)


def init_from_sam_state_dict(model: nn.Module, sam_state: StateDict, source_name: str) -> InitReport:
    """:func:`init_from_sam` for an already extracted state dict; errors name ``source_name``."""
    kind = detect_checkpoint(sam_state)
    if kind is not None and kind.family not in ("sam", "sam_med2d"):
        raise CheckpointError(source_name, f"looks like a {kind.family} checkpoint ({kind.evidence}), not SAM")
    new_state, report = sam_state_dict_for(model.state_dict(), sam_state, source_name)
    if not report.copied:
        raise CheckpointError(source_name, f"shares no tensor with {type(model).__name__}; it is not a SAM checkpoint")
    load_state_dict_strictly(model, new_state, source_name)
    model.weights_origin = f"initialised from SAM ({source_name}); new parts random"
    return report
