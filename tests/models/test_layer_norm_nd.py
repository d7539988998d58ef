"""The channel LayerNorm's fused path equals upstream's elementwise computation, forward and backward; the 3D neck
copies its channels-last output channels-first for its convolutions, which keep bfloat16 weights under autocast."""

import pytest
import torch

from zoo.models.components.compute_path import reference_computation
from zoo.models.components.layers import LayerNormNd


@pytest.mark.parametrize("shape", [(3, 8, 5, 6), (2, 4, 3, 5, 6)])
def test_fused_channel_layer_norm_matches_the_reference_forward_and_backward(shape):
    generator = torch.Generator().manual_seed(0)
    norm = LayerNormNd(shape[1])
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=generator))
        norm.bias.copy_(torch.randn(shape[1], generator=generator))
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 1).requires_grad_()
    upstream = torch.randn(shape, generator=generator, dtype=torch.float64)
    norm.double()

    results = []
    for reference in (True, False):
        with reference_computation() if reference else torch.enable_grad():
            out = norm(x)
        grads = torch.autograd.grad(out, (x, norm.weight, norm.bias), upstream)
        results.append((out, *grads))
    (expected, *expected_grads), (fused, *fused_grads) = results
    assert fused.shape == expected.shape and fused.dtype == torch.float64
    assert fused.movedim(1, -1).is_contiguous(), "the fused result keeps the channels-last layout"
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)
    for name, actual, wanted in zip(("input", "weight", "bias"), fused_grads, expected_grads):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=1e-10, msg=name)


def test_the_3d_neck_convolves_channels_first_maps_and_returns_a_channels_last_embedding():
    """Off the reference path the neck's LayerNorms leave channels-last maps; its 3D convolutions must get them
    channels-first (else they convert their kernels on every call) and the embedding must be the reference's."""
    from zoo.models.components.vit_encoder import ImageEncoderViT

    torch.manual_seed(0)
    encoder = ImageEncoderViT(3, img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=1, num_heads=2,
                              mlp_ratio=2.0, out_chans=8, sam_med3d_broadcast=True).eval()
    tokens = torch.randn(1, 4, 4, 4, 16)
    seen = []
    for layer in encoder.neck:
        if isinstance(layer, torch.nn.Conv3d):
            layer.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    with torch.no_grad():
        fast = encoder.project(tokens)
        assert seen == [True, True]
        with reference_computation():
            expected = encoder.project(tokens)
    assert fast.is_contiguous(memory_format=torch.channels_last_3d) and fast.shape == (1, 8, 4, 4, 4)
    assert expected.is_contiguous()  # upstream's layout on the reference path
    torch.testing.assert_close(fast, expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_the_neck_under_bf16_autocast_convolves_with_kept_bf16_weights_as_autocast_would(spatial_dims, monkeypatch):
    """Under CPU bfloat16 autocast the neck's convolutions use bfloat16 copies of their weights kept on them, not a
    conversion per call; the embedding is bit-identical to autocast converting the weights itself."""
    from zoo.models.components import channels_last_conv
    from zoo.models.components.vit_encoder import ImageEncoderViT

    torch.manual_seed(0)
    encoder = ImageEncoderViT(spatial_dims, img_size=16, patch_size=4, in_chans=1, embed_dim=16, depth=1,
                              num_heads=2, mlp_ratio=2.0, out_chans=8, sam_med3d_broadcast=spatial_dims == 3).eval()
    tokens = torch.randn(1, *([4] * spatial_dims), 16)
    kept = []
    keep = channels_last_conv.kept_bfloat16
    monkeypatch.setattr(channels_last_conv, "kept_bfloat16", lambda conv, *a: kept.append(conv) or keep(conv, *a))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        fast = encoder.project(tokens)
        x = tokens.movedim(-1, 1)
        for layer in encoder.neck:  # autocast's own convolutions
            x = layer(x.contiguous() if x.ndim == 5 else x)
    assert kept == [layer for layer in encoder.neck if isinstance(layer, torch.nn.Conv2d | torch.nn.Conv3d)], (
        "both convolutions take the kept weights"
    )
    assert fast.dtype == x.dtype and torch.equal(fast, x.contiguous())
