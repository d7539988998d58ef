"""A ``depth`` override places the global-attention (and SAM-UNet's injection) blocks the way the released models do:
the last block of each quarter. Explicit values are kept, and checked."""

from __future__ import annotations

import math

import pytest
import torch

import zoo
from zoo.models.components.vit_encoder import ViTBlock, released_global_attn_indexes

TINY_2D = dict(image_size=64, embed_dim=32, num_heads=2, window_size=2, prompt_embed_dim=16, decoder_num_heads=2,
               decoder_mlp_dim=32, iou_head_hidden_dim=16)
TINY_3D = dict(image_size=32, embed_dim=24, num_heads=2, window_size=3, prompt_embed_dim=24, decoder_num_heads=2,
               decoder_mlp_dim=32, iou_head_hidden_dim=16)
TINY_SAM_UNET = dict(image_size=64, embed_dim=32, num_heads=2, window_size=3, resnet_layers=(1, 1, 1, 1),
                     prompt_embed_dim=16, decoder_num_heads=2, decoder_mlp_dim=32)
FAMILIES = {"sam_med2d_b": (TINY_2D, 3), "sam_med3d_turbo": (TINY_3D, 1), "sam_unet_r34": (TINY_SAM_UNET, 3)}
DEPTHS = range(1, 13)


def quarter_ends(depth: int) -> tuple[int, ...]:
    """The rule spelled out: the last block of each non-empty quarter of the blocks."""
    return tuple(sorted({math.ceil(k * depth / 4) - 1 for k in range(1, 5)}))


def global_blocks(model: torch.nn.Module) -> tuple[int, ...]:
    blocks = [m for m in model.modules() if isinstance(m, ViTBlock)]
    return tuple(i for i, block in enumerate(blocks) if block.window_size == 0)


def test_the_rule_gives_the_released_blocks() -> None:
    assert released_global_attn_indexes(12) == (2, 5, 8, 11)  # ViT-B: SAM-Med2D, SAM-Med3D, SAM-UNet
    assert released_global_attn_indexes(24) == (5, 11, 17, 23)  # SAM ViT-L
    assert released_global_attn_indexes(32) == (7, 15, 23, 31)  # SAM ViT-H
    assert [released_global_attn_indexes(d) for d in (1, 2, 3, 4, 5, 6)] == [
        (0,), (0, 1), (0, 1, 2), (0, 1, 2, 3), (1, 2, 3, 4), (1, 2, 4, 5)
    ]
    assert all(released_global_attn_indexes(d) == quarter_ends(d) for d in range(1, 49))


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_depth_override_builds_with_the_blocks_placed_by_depth(name: str, depth: int) -> None:
    tiny = FAMILIES[name][0]
    if name == "sam_unet_r34" and depth < 4:
        with pytest.raises(ValueError, match=f"SAM-UNet needs depth >= 4: .* got depth {depth}"):
            zoo.create_model(name, depth=depth, **tiny)
        return
    torch.manual_seed(0)
    model = zoo.create_model(name, depth=depth, **tiny).eval()
    assert model.config.global_attn_indexes == quarter_ends(depth)
    assert global_blocks(model) == quarter_ends(depth)
    if name == "sam_unet_r34":
        assert model.config.conv_injection_blocks == quarter_ends(depth)


@pytest.mark.parametrize("depth", [4, 5])
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_a_model_with_blocks_placed_by_depth_encodes_an_image(name: str, depth: int) -> None:
    tiny, channels = FAMILIES[name]
    torch.manual_seed(0)
    model = zoo.create_model(name, depth=depth, **tiny).eval()
    spatial = (tiny["image_size"],) * (3 if name == "sam_med3d_turbo" else 2)
    with torch.no_grad():
        encoding = model.encode_image(torch.randn(1, channels, *spatial))
    tensors = [encoding] if isinstance(encoding, torch.Tensor) else list(vars(encoding).values())
    assert all(bool(torch.isfinite(t).all()) for t in tensors)


def test_the_defaults_are_the_released_models() -> None:
    with torch.device("meta"):
        for name in ("sam_med2d_b", "sam_vit_b", "sam_med3d_turbo", "sam_unet_r34", "sam_unet_r50"):
            model = zoo.create_model(name)
            assert model.config.global_attn_indexes == (2, 5, 8, 11), name
        assert model.config.conv_injection_blocks == (2, 5, 8, 11)


def test_explicit_blocks_are_kept() -> None:
    model = zoo.create_model("sam_med2d_b", depth=4, global_attn_indexes=[1, 3], **TINY_2D)
    assert model.config.global_attn_indexes == (1, 3) and global_blocks(model) == (1, 3)
    unet = zoo.create_model("sam_unet_r34", depth=6, conv_injection_blocks=[0, 1, 2, 5], **TINY_SAM_UNET)
    assert unet.config.conv_injection_blocks == (0, 1, 2, 5)
    assert unet.config.global_attn_indexes == (1, 2, 4, 5)


@pytest.mark.parametrize(
    ("name", "overrides", "message"),
    [
        ("sam_med2d_b", dict(depth=4, global_attn_indexes=[5, 8, 11]), r"global_attn_indexes \[5, 8, 11\] are outside "
         r"0\.\.3 \(depth 4\); leave global_attn_indexes unset"),
        ("sam_med3d_turbo", dict(depth=2, global_attn_indexes=[2]), r"global_attn_indexes \[2\] are outside 0\.\.1"),
        ("sam_unet_r34", dict(depth=4, global_attn_indexes=[4]), r"global_attn_indexes \[4\] are outside 0\.\.3"),
        ("sam_unet_r34", dict(depth=6, conv_injection_blocks=[2, 5, 8, 11]), r"must lie in 0\.\.5 \(depth 6\); leave "
         "conv_injection_blocks unset"),
    ],
)
def test_inconsistent_explicit_blocks_are_refused(name: str, overrides: dict, message: str) -> None:
    tiny = FAMILIES[name][0]
    with pytest.raises(ValueError, match=message):
        zoo.create_model(name, **{**tiny, **overrides})


def test_the_issue_example() -> None:
    with torch.device("meta"):
        model = zoo.create_model("sam_med2d_b", image_size=128, depth=4)
    assert model.config.global_attn_indexes == (0, 1, 2, 3)
