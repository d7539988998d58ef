"""Tiny randomly initialised models for the inference-layer tests (no fixtures, no network)."""

from __future__ import annotations

import pytest
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

# SAM-UNet at 64^2 with a depth-2 ViT (the ResNet stages and conv injection are full).
TINY_UNET = dict(
    image_size=64, embed_dim=32, depth=12, num_heads=2, window_size=3, resnet_layers=(1, 1, 1, 1), decoder_mlp_dim=32
)


class CallCounter:
    """Counts forward calls of a module."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.calls = 0
        module.register_forward_hook(self._hook)

    def _hook(self, module, args, output) -> None:
        self.calls += 1


@pytest.fixture(scope="module")
def tiny_2d_model():
    torch.manual_seed(0)
    return zoo.create_model("sam_med2d_b", **TINY_2D).eval()


@pytest.fixture(scope="module")
def tiny_3d_model():
    torch.manual_seed(0)
    return zoo.create_model("sam_med3d_turbo", **TINY_3D).eval()


@pytest.fixture(scope="module")
def tiny_unet_model():
    torch.manual_seed(0)
    return zoo.create_model("sam_unet_r34", **TINY_UNET).eval()
