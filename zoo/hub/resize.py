"""Resize ViT position tables to another input size, the way SAM-Med2D initialises from SAM.

Both use bilinear interpolation with ``align_corners=False``, as SAM-Med2D's ``load_from`` does
(segment_anything/build_sam.py in OpenGVLab/SAM-Med2D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def resize_abs_pos_embed(pos_embed: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Resize a SAM absolute position embedding ``1 x H x W x C`` to ``1 x grid[0] x grid[1] x C``."""
    if pos_embed.ndim != 4:
        raise ValueError(f"expected a 1 x H x W x C position embedding, got shape {tuple(pos_embed.shape)}")
    channels_first = pos_embed.permute(0, 3, 1, 2)
    resized = F.interpolate(channels_first, size=tuple(grid), mode="bilinear", align_corners=False)
    return resized.permute(0, 2, 3, 1).contiguous()


def resize_rel_pos(rel_pos: torch.Tensor, length: int) -> torch.Tensor:
    """Resize a relative-position table ``L x C`` to ``length x C``.

    Upstream resizes the table as a one-channel ``L x C`` image with 2-D bilinear interpolation; the channel
    axis keeps its size, so only the position axis is interpolated.
    """
    if rel_pos.ndim != 2:
        raise ValueError(f"expected an L x C relative-position table, got shape {tuple(rel_pos.shape)}")
    as_image = rel_pos[None, None]
    resized = F.interpolate(as_image, size=(length, rel_pos.shape[1]), mode="bilinear", align_corners=False)
    return resized[0, 0].contiguous()
