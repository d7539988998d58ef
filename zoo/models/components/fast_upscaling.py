"""Exact channels-last form of the mask decoder's upscaling and hypernetwork product.

Upstream turns the image tokens into a channels-first map, upscales it with two transposed convolutions whose
kernel equals their stride (separated by a channel LayerNorm and GELUs) and multiplies the result by the
hypernetwork vectors. A transposed convolution with kernel == stride and no padding writes each input voxel's
``prod(kernel)`` output voxels from that voxel alone, so it is a per-token linear map to ``prod(kernel) x C_out``
features. Computed that way on channels-last tokens, the whole chain is three matrix products and a LayerNorm
over the last axis; only the final masks, ``num_masks`` channels instead of ``C / 8``, are rearranged onto the
upscaled grid. Same function, different rounding (within 1e-5 at full size).
"""

import math
from collections.abc import Sequence

from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.layers import LayerNormNd


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


def _subvoxel_linear(tokens: Tensor, conv: nn.Module) -> Tensor:
    """``... x C_in`` -> ``... x prod(kernel) x C_out``: the transposed convolution applied to each token."""
    kernel_volume = math.prod(conv.kernel_size)
    # weight C_in x C_out x *kernel -> (kernel position, C_out) x C_in, so each sub-voxel's channels are contiguous.
    weight = conv.weight.reshape(conv.in_channels, conv.out_channels, kernel_volume).permute(2, 1, 0)
    bias = None if conv.bias is None else conv.bias.repeat(kernel_volume)
    out = F.linear(tokens, weight.reshape(kernel_volume * conv.out_channels, conv.in_channels), bias)
    return out.unflatten(-1, (kernel_volume, conv.out_channels))


def channels_last_masks(
    upscaling: nn.Sequential, tokens: Tensor, grid: Sequence[int], hyper_in: Tensor
) -> Tensor:
    """Masks ``B x M x *(grid * k1 * k2)`` from image tokens ``B x prod(grid) x C`` and ``hyper_in`` ``B x M x C'``.

    Equals ``hyper_in @ upscaling(tokens as a B x C x *grid map)`` with the result laid out on the upscaled grid.
    """
    first, norm, act1, second, act2 = upscaling
    batch, num_masks = hyper_in.shape[:2]
    x = _subvoxel_linear(tokens, first)  # B x N x K1 x C1
    x = act1(F.layer_norm(x, (x.shape[-1],), norm.weight, norm.bias, norm.eps))
    x = act2(_subvoxel_linear(x, second))  # B x N x K1 x K2 x C2
    masks = x.flatten(1, -2) @ hyper_in.transpose(1, 2)  # B x (N K1 K2) x M
    # Output index along each axis: (grid index * k1 + first sub-voxel) * k2 + second sub-voxel.
    n = len(grid)
    masks = masks.view(batch, *grid, *first.kernel_size, *second.kernel_size, num_masks)
    order = [0, 3 * n + 1] + [1 + axis + level * n for axis in range(n) for level in range(3)]
    upscaled = [g * k1 * k2 for g, k1, k2 in zip(grid, first.kernel_size, second.kernel_size)]
    return masks.permute(order).reshape(batch, num_masks, *upscaled)
