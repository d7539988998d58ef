"""The channels-last mask upscaling equals upstream's channels-first transposed convolutions (the reference path)."""

import copy

import pytest
import torch
from torch import nn

import zoo
from zoo.models.components.compute_path import reference_computation
from zoo.models.components.fast_upscaling import channels_last_masks, supports_channels_last_upscaling
from zoo.models.components.layers import LayerNormNd

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def upscaling(spatial_dims: int, channels: int, kernel: int, seed: int) -> nn.Sequential:
    """SAM's upscaling chain with every parameter (LayerNorm included) random."""
    conv = nn.ConvTranspose2d if spatial_dims == 2 else nn.ConvTranspose3d
    chain = nn.Sequential(
        conv(channels, channels // 2, kernel_size=kernel, stride=kernel),
        LayerNormNd(channels // 2),
        nn.GELU(),
        conv(channels // 2, channels // 4, kernel_size=kernel, stride=kernel),
        nn.GELU(),
    )
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in chain.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
    return chain


def reference_masks(chain: nn.Sequential, tokens: torch.Tensor, grid, hyper_in: torch.Tensor) -> torch.Tensor:
    """Upstream: tokens to a channels-first map, the Sequential, then the hypernetwork product."""
    batch, _, channels = tokens.shape
    upscaled = chain(tokens.transpose(1, 2).reshape(batch, channels, *grid))
    return (hyper_in @ upscaled.flatten(2)).view(batch, -1, *upscaled.shape[2:])


@pytest.mark.parametrize("chunk_tokens", [None, 1, 5], ids=["one-chunk", "per-token", "uneven-chunks"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(
    "grid, kernel", [((3, 5), 2), ((2, 3, 4), 2), ((4, 2), 3), ((2, 1, 3), 3)], ids=["2d", "3d", "2d-k3", "3d-k3"]
)
def test_channels_last_masks_equal_the_channels_first_chain(grid, kernel, dtype, chunk_tokens):
    chain = upscaling(len(grid), 16, kernel, seed=len(grid) + kernel).to(dtype)
    generator = torch.Generator().manual_seed(1)
    tokens = torch.randn(2, torch.Size(grid).numel(), 16, generator=generator, dtype=dtype)
    hyper_in = torch.randn(2, 3, 4, generator=generator, dtype=dtype)
    with torch.no_grad():
        fast = channels_last_masks(chain, tokens, grid, hyper_in, chunk_tokens=chunk_tokens)
        exact = copy.deepcopy(chain).to(torch.float64)
        reference = reference_masks(exact, tokens.to(torch.float64), grid, hyper_in.to(torch.float64))
    assert fast.shape == reference.shape == (2, 3, *(g * kernel * kernel for g in grid))
    assert fast.dtype == dtype
    torch.testing.assert_close(fast.to(torch.float64), reference, rtol=0, atol=TOL[dtype] * reference.abs().max())


def test_only_kernel_equals_stride_chains_take_the_fast_path():
    assert supports_channels_last_upscaling(upscaling(2, 16, 2, seed=0))
    overlapping = upscaling(2, 16, 2, seed=0)
    overlapping[0] = nn.ConvTranspose2d(16, 8, kernel_size=4, stride=2, padding=1)
    assert not supports_channels_last_upscaling(overlapping)
    no_norm = upscaling(2, 16, 2, seed=0)
    no_norm[1] = nn.Identity()
    assert not supports_channels_last_upscaling(no_norm)


@pytest.mark.parametrize("multimask", [True, False])
@pytest.mark.parametrize("family", ["sam_med2d_b", "sam_med3d_turbo"])
def test_mask_decoder_uses_the_fast_path_unless_reference_is_requested(monkeypatch, family, multimask):
    tiny = {"sam_med2d_b": dict(image_size=64, patch_size=8), "sam_med3d_turbo": dict(image_size=32, patch_size=8)}
    torch.manual_seed(0)
    model = zoo.create_model(family, embed_dim=16, depth=1, num_heads=2, global_attn_indexes=(0,), **tiny[family])
    model.eval()
    calls = []

    def spy(*args):
        calls.append(1)
        return channels_last_masks(*args)

    monkeypatch.setattr("zoo.models.components.mask_decoder.channels_last_masks", spy)
    spatial_dims = model.prompt_encoder.spatial_dims
    size = model.config.image_size
    image = torch.randn(1, model.config.in_chans, *(size,) * spatial_dims)
    points = (torch.full((1, 1, spatial_dims), size / 2), torch.ones(1, 1, dtype=torch.int64))
    with torch.no_grad():
        embedding = model.encode_image(image)
        fast = model.decode(embedding, points, multimask_output=multimask)
        assert len(calls) == 1
        with reference_computation():
            reference = model.decode(embedding, points, multimask_output=multimask)
    assert len(calls) == 1
    assert fast.low_res_logits.shape[1] == (3 if multimask else 1)
    torch.testing.assert_close(fast.low_res_logits, reference.low_res_logits, rtol=0, atol=1e-5)
    torch.testing.assert_close(fast.iou_predictions, reference.iou_predictions, rtol=0, atol=1e-6)


@pytest.mark.parametrize("family", ["sam_med2d_b", "sam_med3d_turbo"])
def test_selected_masks_are_those_of_the_full_decode(family):
    """Decoding only the returned mask tokens gives the same masks as decoding all four and slicing (upstream)."""
    tiny = {"sam_med2d_b": dict(image_size=64, patch_size=8), "sam_med3d_turbo": dict(image_size=32, patch_size=8)}
    torch.manual_seed(1)
    model = zoo.create_model(family, embed_dim=16, depth=1, num_heads=2, global_attn_indexes=(0,), **tiny[family])
    decoder = model.eval().mask_decoder
    grid = model.prompt_encoder.image_embedding_size
    generator = torch.Generator().manual_seed(3)
    embedding = torch.randn(2, model.config.prompt_embed_dim, *grid, generator=generator)
    points = (torch.rand(2, 2, len(grid), generator=generator) * model.config.image_size, torch.tensor([[1, 0]] * 2))
    with torch.no_grad():
        sparse, dense = model.embed_prompts(points)
        pe = model.prompt_encoder.get_dense_pe()
        every_mask, every_iou = decoder.predict_masks(embedding, pe, sparse, dense)
        for multimask, kept in ((False, slice(0, 1)), (True, slice(1, None))):
            out = decoder(embedding, pe, sparse, dense, multimask_output=multimask)
            torch.testing.assert_close(out.low_res_logits, every_mask[:, kept], rtol=0, atol=1e-6)
            torch.testing.assert_close(out.iou_predictions, every_iou[:, kept], rtol=0, atol=0)
    assert every_mask.shape[1] == decoder.num_mask_tokens == 4


@pytest.mark.full_size
@pytest.mark.parametrize("family", ["sam_med3d_turbo", "sam_med2d_b"])
def test_full_size_decoder_fast_path_matches_reference(family):
    torch.manual_seed(0)
    model = zoo.create_model(family).eval()
    grid = model.prompt_encoder.image_embedding_size
    generator = torch.Generator().manual_seed(2)
    embedding = torch.randn(1, model.config.prompt_embed_dim, *grid, generator=generator)
    points = (torch.rand(1, 2, len(grid), generator=generator) * model.config.image_size, torch.tensor([[1, 0]]))
    with torch.no_grad():
        fast = model.decode(embedding, points, multimask_output=True).low_res_logits
        with reference_computation():
            reference = model.decode(embedding, points, multimask_output=True).low_res_logits
    assert reference.abs().max() > 0.1, "degenerate logits would make the comparison meaningless"
    error = (fast - reference).abs().max().item()
    assert error <= 1e-4, f"fast vs reference max abs error {error:.3g}"


def test_rearranged_weights_follow_parameter_updates():
    """The inference-time weight cache is rebuilt after an in-place update and after a parameter swap."""
    chain = upscaling(3, 16, 2, seed=3)
    generator = torch.Generator().manual_seed(2)
    tokens = torch.randn(1, 8, 16, generator=generator)
    hyper_in = torch.randn(1, 2, 4, generator=generator)
    grid = (2, 2, 2)
    with torch.no_grad():
        channels_last_masks(chain, tokens, grid, hyper_in)  # fills the cache
        chain[0].weight.mul_(-2.0)
        chain[3].bias.add_(1.0)
        after_update = channels_last_masks(chain, tokens, grid, hyper_in)
        torch.testing.assert_close(after_update, reference_masks(chain, tokens, grid, hyper_in), rtol=0, atol=1e-5)
        chain[3].weight = nn.Parameter(torch.randn(chain[3].weight.shape, generator=generator))
        after_swap = channels_last_masks(chain, tokens, grid, hyper_in)
        torch.testing.assert_close(after_swap, reference_masks(chain, tokens, grid, hyper_in), rtol=0, atol=1e-5)
    with torch.inference_mode():
        torch.testing.assert_close(
            channels_last_masks(chain, tokens, grid, hyper_in), after_swap, rtol=0, atol=0
        )


def test_parameters_made_in_inference_mode_are_rearranged_every_call():
    with torch.inference_mode():
        chain = upscaling(2, 16, 2, seed=4)
        tokens, hyper_in = torch.randn(1, 6, 16), torch.randn(1, 2, 4)
        before = channels_last_masks(chain, tokens, (2, 3), hyper_in)
        chain[0].weight.mul_(0.5)  # no version counter to see this: nothing may be cached
        after = channels_last_masks(chain, tokens, (2, 3), hyper_in)
        torch.testing.assert_close(after, reference_masks(chain, tokens, (2, 3), hyper_in), rtol=0, atol=1e-5)
    assert not torch.equal(before, after)


def test_training_after_inference_mode_backpropagates():
    """Lightning validates under inference mode before training: nothing cached then may break backward."""
    chain = upscaling(2, 16, 2, seed=5)
    generator = torch.Generator().manual_seed(6)
    tokens, hyper_in = torch.randn(1, 6, 16, generator=generator), torch.randn(1, 2, 4, generator=generator)
    with torch.inference_mode():
        channels_last_masks(chain, tokens, (2, 3), hyper_in)
    channels_last_masks(chain, tokens, (2, 3), hyper_in).square().sum().backward()
    assert all(p.grad is not None for p in chain.parameters())
