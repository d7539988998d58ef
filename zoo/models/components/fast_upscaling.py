"""Exact channels-last form of the mask decoder's upscaling and hypernetwork product.

Upstream turns the image tokens into a channels-first map, upscales it with two transposed convolutions whose
kernel equals their stride (separated by a channel LayerNorm and GELUs) and multiplies the result by the
hypernetwork vectors. A transposed convolution with kernel == stride and no padding writes each input voxel's
``prod(kernel)`` output voxels from that voxel alone, so it is a per-token linear map to ``prod(kernel) x C_out``
features. Computed that way on channels-last tokens, the whole chain is three matrix products and a LayerNorm
over the last axis; only the final masks, ``num_masks`` channels instead of ``C / 8``, are rearranged onto the
upscaled grid. Same function, different rounding (within 1e-5 at full size).

The second stage runs in chunks of tokens whose largest intermediate stays around ``CHUNK_BYTES``: SAM-Med3D's
whole second upscaling is 6 MiB per mask set, which leaves the caches and, freed and reallocated on every click,
costs page faults; chunked, it stays in cache. The first stage, a quarter of the size, runs over all tokens at once
(chunking its product made it slower). ``benchmarks/encoder_speed.py`` times a click on each path.
"""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.layers import LayerNormNd
from zoo.models.components.onednn_linear import kept_linear
from zoo.models.components.weight_cache import derived_from_parameters, kept_index

CHUNK_BYTES = 1 << 20


def is_subvoxel_conv(module: nn.Module) -> bool:
    """Whether ``module`` is a transposed convolution that writes disjoint ``kernel``-sized blocks per input voxel."""
    return (
        isinstance(module, (nn.ConvTranspose2d, nn.ConvTranspose3d))
        and module.kernel_size == module.stride
        and not any(module.padding)
        and not any(module.output_padding)
        and all(d == 1 for d in module.dilation)
        and module.groups == 1
    )


def supports_channels_last_upscaling(upscaling: nn.Sequential) -> bool:
    """Whether ``upscaling`` is SAM's ``ConvT -> LayerNormNd -> act -> ConvT -> act`` with kernel == stride."""
    return (
        len(upscaling) == 5
        and is_subvoxel_conv(upscaling[0])
        and isinstance(upscaling[1], LayerNormNd)
        and is_subvoxel_conv(upscaling[3])
    )


def _subvoxel_linear_weights(conv: nn.Module) -> tuple[Tensor, Tensor | None]:
    """A kernel == stride transposed convolution as a linear map ``C_in -> (kernel position, C_out)``.

    At inference the rearranged weight is kept on the module (see ``weight_cache``): the strided copy costs as much
    as the matrix product it feeds on a click.
    """
    params = [conv.weight] if conv.bias is None else [conv.weight, conv.bias]
    return derived_from_parameters(conv, "subvoxel_linear", params, lambda: _rearrange_subvoxel_weights(conv))


def _rearrange_subvoxel_weights(conv: nn.Module) -> tuple[Tensor, Tensor | None]:
    kernel_volume = math.prod(conv.kernel_size)
    # weight C_in x C_out x *kernel -> (kernel position, C_out) x C_in, so each sub-voxel's channels are contiguous.
    weight = conv.weight.reshape(conv.in_channels, conv.out_channels, kernel_volume).permute(2, 1, 0)
    bias = None if conv.bias is None else conv.bias.repeat(kernel_volume)
    return weight.reshape(kernel_volume * conv.out_channels, conv.in_channels), bias


def channels_last_masks(
    upscaling: nn.Sequential,
    tokens: Tensor,
    grid: Sequence[int],
    hyper_in: Tensor,
    chunk_tokens: int | None = None,
) -> Tensor:
    """Masks ``B x M x *(grid * k1 * k2)`` from image tokens ``B x prod(grid) x C`` and ``hyper_in`` ``B x M x C'``.

    Equals ``hyper_in @ upscaling(tokens as a B x C x *grid map)`` with the result laid out on the upscaled grid.
    ``chunk_tokens`` tokens go through the chain at a time (default: a chunk of about ``CHUNK_BYTES``).
    """
    first, norm, act1, second, act2 = upscaling
    batch, num_masks = hyper_in.shape[:2]
    if chunk_tokens is None:
        per_token = batch * math.prod(first.kernel_size) * math.prod(second.kernel_size) * second.out_channels
        chunk_tokens = max(1, CHUNK_BYTES // (per_token * tokens.element_size()))
    hyper_t = hyper_in.transpose(1, 2)
    first_weight, first_bias = _subvoxel_linear_weights(first)
    second_weight, second_bias = _subvoxel_linear_weights(second)
    # The first stage writes a quarter of what the second does: one product over all tokens keeps its GEMM efficient.
    x = kept_linear(first, tokens, first_weight, first_bias).unflatten(-1, (-1, first.out_channels))  # B x N x K1 x C1
    x = act1(F.layer_norm(x, (first.out_channels,), norm.weight, norm.bias, norm.eps))
    chunks = []
    for chunk in x.split(chunk_tokens, dim=1):
        y = kept_linear(second, chunk, second_weight, second_bias, act2).unflatten(-1, (-1, second.out_channels))
        chunks.append(y.flatten(1, -2) @ hyper_t)  # B x (n K1 K2) x M
    masks = torch.cat(chunks, dim=1)  # B x (grid, K1, K2) x M
    upscaled = [g * k1 * k2 for g, k1, k2 in zip(grid, first.kernel_size, second.kernel_size)]
    shape = (batch, tuple(grid), first.kernel_size, second.kernel_size, num_masks, masks.device)
    order = kept_index(upscaling, ("upscaled_order", *shape), lambda: upscaled_order(*shape))
    return torch.take(masks, order).view(batch, num_masks, *upscaled)


def upscaled_order(
    batch: int, grid: tuple[int, ...], k1: tuple[int, ...], k2: tuple[int, ...], num_masks: int, device: torch.device
) -> Tensor:
    """Flat indices that rearrange ``B x (grid, K1, K2) x M`` masks onto the upscaled ``B x M x *upscaled`` grid.

    Along each axis the output index is (grid index * k1 + first sub-voxel) * k2 + second sub-voxel. Gathering
    through kept indices is several times faster than copying a permutation of an 11-dimensional view.
    """
    n = len(grid)
    order = [0, 3 * n + 1] + [1 + axis + level * n for axis in range(n) for level in range(3)]
    positions = torch.arange(batch * math.prod(grid) * math.prod(k1) * math.prod(k2) * num_masks, device=device)
    return positions.view(batch, *grid, *k1, *k2, num_masks).permute(order).flatten()
