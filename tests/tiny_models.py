"""Tiny configs of every family, and helpers to build test models and volumes (no fixtures, no network).

Imported by the inference, processor and validator tests (``tests/`` is on ``sys.path`` for them).
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import torch

import zoo

TINY_2D = dict(
    image_size=64,
    patch_size=8,
    embed_dim=32,
    depth=2,
    num_heads=2,
    window_size=3,
    global_attn_indexes=(1,),
    prompt_embed_dim=32,
    decoder_num_heads=2,
    decoder_mlp_dim=64,
    iou_head_hidden_dim=32,
)
TINY_3D = dict(
    image_size=32,
    patch_size=16,
    embed_dim=24,
    depth=2,
    num_heads=2,
    window_size=3,
    global_attn_indexes=(1,),
    prompt_embed_dim=24,
    decoder_num_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)
# SAM-UNet at 64^2 (the ResNet stages and conv injection are full).
TINY_UNET = dict(
    image_size=64, embed_dim=32, depth=12, num_heads=2, window_size=3, resnet_layers=(1, 1, 1, 1), decoder_mlp_dim=32
)
# LiteMedSAM at 64^2: its low-res logits are the input size (64^2).
TINY_LITEMEDSAM = dict(
    image_size=64,
    embed_dims=(8, 16, 16, 24),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 3),
    window_sizes=(7, 5, 16, 3),
    prompt_embed_dim=16,
    decoder_num_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)
# Meta's SAM ViT-B, tiny (the family "sam").
TINY_SAM = dict(TINY_2D, image_size=64)

#: registry name -> tiny overrides, one per family.
TINY = {
    "sam_med2d_b": TINY_2D,
    "sam_vit_b": TINY_SAM,
    "sam_unet_r34": TINY_UNET,
    "litemedsam": TINY_LITEMEDSAM,
    "sam_med3d_turbo": TINY_3D,
}


def tiny_model(name: str, seed: int = 0) -> torch.nn.Module:
    """The registry model ``name`` at its tiny size, randomly initialised with ``seed``, in eval mode."""
    torch.manual_seed(seed)
    return zoo.create_model(name, **TINY[name]).eval()


def mark_whole_input(net: torch.nn.Module, sign: float = 1.0) -> torch.nn.Module:
    """Make every decoded mask logit ``sign * const`` (SAM-style decoders): the last upscaling layer outputs
    GELU(1) everywhere and each hypernetwork outputs ones, so the mask is the whole model input (+1) or empty (-1)."""
    decoder = net.mask_decoder
    with torch.no_grad():
        last_upscaling = decoder.output_upscaling[3]
        last_upscaling.weight.zero_()
        last_upscaling.bias.fill_(1.0)
        for mlp in decoder.output_hypernetworks_mlps:
            mlp.layers[-1].weight.zero_()
            mlp.layers[-1].bias.fill_(sign)
    return net.eval()


def write_volume(path: Path, shape: tuple[int, int, int] = (48, 40, 36), spacing: float = 1.5, seed: int = 0) -> Path:
    """A synthetic RAS NIfTI of positive int16 intensities at ``spacing`` mm (SAM-Med3D's 1.5 mm: no resampling)."""
    values = np.random.default_rng(seed).integers(1, 1000, size=shape).astype(np.int16)
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = [-10.0, 20.0, 5.0]
    nib.save(nib.Nifti1Image(values, affine), str(path))
    return path
