"""Tell which model family (and released variant) a state dict belongs to, from its key names and shapes."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

import torch

_PATCH_EMBED = "image_encoder.patch_embed.proj.weight"
_POS_EMBED = "image_encoder.pos_embed"
# Upstream SAM-UNet names and the zoo's own SAM-UNet names (the family hook accepts both).
_SAM_UNET_PREFIXES = ("image_encoder.sam_img_encoder.", "resnet.", "adapters_in.", "adapters_bridge.")
_RESNET50_ONLY_KEYS = ("resnet.stage1.0.conv3.weight", "resnet.layer1.0.conv3.weight")  # bottlenecks: a third conv
_VIT_B_WIDTH = 768
# LiteMedSAM's TinyViT: a stem of two 1x1 Conv2d_BN layers; stage widths read from the first block of each stage
# (MBConv input in stage 0, the MLP's norm after it).
_TINY_VIT_STEM = "image_encoder.patch_embed.seq.2.c.weight"
_TINY_VIT_BLOCK = re.compile(r"image_encoder\.layers\.(?P<stage>\d+)\.blocks\.(?P<block>\d+)\.")
_TINY_VIT_STAGE_WIDTH = (
    "image_encoder.layers.{}.blocks.0.conv1.c.weight",
    "image_encoder.layers.{}.blocks.0.mlp.norm.weight",
)
_LITEMEDSAM_STAGES = ((64, 128, 160, 320), (2, 2, 6, 2))  # widths, depths of the released lite_medsam.pth


@dataclass(frozen=True)
class CheckpointKind:
    """What a state dict looks like.

    Attributes:
        family: the model family (``sam_med3d``, ``sam_med2d``, ``sam``, ``sam_unet``, ...).
        model_name: the released variant whose full-size shapes it has, or ``None`` when none matches.
        evidence: a short human-readable reason, used in error messages.
    """

    family: str
    model_name: str | None
    evidence: str


def detect_checkpoint(state_dict: Mapping[str, torch.Tensor]) -> CheckpointKind | None:
    """The family and released variant that ``state_dict`` (upstream key names) belongs to; ``None`` if unknown."""
    if any(key.startswith(_SAM_UNET_PREFIXES) for key in state_dict):
        return _detect_sam_unet(state_dict)
    if _TINY_VIT_STEM in state_dict:
        return _detect_litemedsam(state_dict)
    patch_embed = state_dict.get(_PATCH_EMBED)
    if patch_embed is None:
        return None
    width = patch_embed.shape[0]
    if patch_embed.ndim == 5:
        name = "sam_med3d_turbo" if width == _VIT_B_WIDTH else None
        return CheckpointKind("sam_med3d", name, f"3-D patch embedding {tuple(patch_embed.shape)}")
    if patch_embed.ndim == 4:
        return _detect_2d_sam(state_dict, width)
    return None


def _detect_sam_unet(state_dict: Mapping[str, torch.Tensor]) -> CheckpointKind:
    variant = "sam_unet_r50" if any(key in state_dict for key in _RESNET50_ONLY_KEYS) else "sam_unet_r34"
    backbone = "ResNet-50" if variant == "sam_unet_r50" else "ResNet-34"
    return CheckpointKind("sam_unet", variant, f"SAM ViT wrapped as 'sam_img_encoder' beside a {backbone} branch")


def _detect_litemedsam(state_dict: Mapping[str, torch.Tensor]) -> CheckpointKind:
    blocks: dict[int, set[int]] = {}
    for key in state_dict:
        found = _TINY_VIT_BLOCK.match(key)
        if found:
            blocks.setdefault(int(found["stage"]), set()).add(int(found["block"]))
    depths = tuple(len(blocks[stage]) for stage in sorted(blocks))
    widths = tuple(
        int(weight.shape[1 if stage == 0 else 0])
        for stage in sorted(blocks)
        if (weight := state_dict.get(_TINY_VIT_STAGE_WIDTH[stage > 0].format(stage))) is not None
    )
    name = "litemedsam" if (widths, depths) == _LITEMEDSAM_STAGES else None
    evidence = f"TinyViT image encoder with a 1x1 Conv2d_BN stem, stage widths {list(widths)}, depths {list(depths)}"
    return CheckpointKind("litemedsam", name, evidence)


def is_plain_sam(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """A 2D SAM ViT without SAM-Med2D's adapters (Meta's SAM, or SAM at another input size)."""
    kind = detect_checkpoint(state_dict)
    has_adapters = any(".Adapter." in key for key in state_dict)
    return kind is not None and kind.family in ("sam", "sam_med2d") and not has_adapters


def _detect_2d_sam(state_dict: Mapping[str, torch.Tensor], width: int) -> CheckpointKind:
    has_adapters = any(".Adapter." in key for key in state_dict)
    pos_embed = state_dict.get(_POS_EMBED)
    grid = tuple(pos_embed.shape[1:3]) if pos_embed is not None else None
    patch = state_dict[_PATCH_EMBED].shape[-1]
    input_size = grid[0] * patch if grid else None
    shape_note = f"2-D patch embedding of width {width}, input {input_size}"
    if width != _VIT_B_WIDTH:
        return CheckpointKind("sam_med2d", None, f"{shape_note}: not a ViT-B")
    if has_adapters:
        name = "sam_med2d_b" if input_size == 256 else None
        return CheckpointKind("sam_med2d", name, f"{shape_note}, with SAM-Med2D adapters")
    if input_size == 1024:
        return CheckpointKind("sam", "sam_vit_b", f"{shape_note}, no adapters: Meta's SAM ViT-B")
    other_size = "no adapters: a SAM ViT-B at another input size (e.g. SAM-Med2D without adapters)"
    return CheckpointKind("sam_med2d", None, f"{shape_note}, {other_size}")
