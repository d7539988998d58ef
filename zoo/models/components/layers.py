"""Small layers shared by the encoders and decoders."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.onednn_linear import OneDNNLinear


def conv_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.Conv2d`` or ``nn.Conv3d``."""
    return {2: nn.Conv2d, 3: nn.Conv3d}[spatial_dims]


def conv_transpose_nd(spatial_dims: int) -> type[nn.Module]:
    """``nn.ConvTranspose2d`` or ``nn.ConvTranspose3d``."""
    return {2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}[spatial_dims]


def image_embedding_layout(embedding: Tensor) -> Tensor:
    """An image embedding ``B x C x *grid`` in the memory layout the image encoders return it in: channels-last off
    the reference path, so that the mask decoder's token-major view of it (and of its sum with a channels-last
    mask-prompt embedding) needs no transposing copy on every click; contiguous (upstream's layout) on it."""
    if reference_computation_enabled():
        return embedding.contiguous()
    return embedding.contiguous(memory_format=torch.channels_last if embedding.dim() == 4 else torch.channels_last_3d)


def tokens_as_map(tokens: Tensor, grid: Sequence[int]) -> Tensor:
    """``B x L x C`` tokens (row-major over ``grid``) as a ``B x C x *grid`` map, without copying: channels-last when
    the tokens are contiguous.

    The strides are written out: after a view, a batch of one may carry any stride, and a convolution picks its
    output layout from all the strides (channels-first when the batch's is out of order), so a plain
    transpose-reshape sent TinyViT's maps and SAM-UNet's mask upscaling channels-first, with copies around them.
    """
    batch, length, chans = tokens.shape
    grid = tuple(grid)
    if length != math.prod(grid):
        raise ValueError(f"expected {' x '.join(map(str, grid))} = {math.prod(grid)} tokens, got {length}")
    if not tokens.is_contiguous() or torch.jit.is_tracing():  # a traced graph (ONNX export) takes no strides
        return tokens.transpose(1, 2).reshape(batch, chans, *grid)
    spatial_strides = [chans * math.prod(grid[axis + 1 :]) for axis in range(len(grid))]
    return tokens.as_strided((batch, chans, *grid), (length * chans, 1, *spatial_strides))


class LayerNormNd(nn.Module):
    """LayerNorm over the channel axis (dim 1) of a channels-first 2D or 3D map (SAM's LayerNorm2d/3d).

    Uses the biased variance ``mean((x - mean)^2)`` with ``eps`` inside the square root, as upstream does. Off the
    reference path that is ``F.layer_norm`` over the channels moved last (one fused kernel forward and backward
    instead of about ten elementwise passes), and the result keeps that channels-last layout: the convolutions
    after it then run channels-last too, which was faster for SAM-UNet's decoder (callers feeding a large kernel
    copy it first, see ``ImageEncoderViT.project``).
    """

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        if not reference_computation_enabled():
            return F.layer_norm(x.movedim(1, -1), (x.shape[1],), self.weight, self.bias, self.eps).movedim(-1, 1)
        mean = x.mean(1, keepdim=True)
        var = (x - mean).pow(2).mean(1, keepdim=True)
        x = (x - mean) / (var + self.eps).sqrt()
        affine_shape = (-1,) + (1,) * (x.ndim - 2)
        return self.weight.view(affine_shape) * x + self.bias.view(affine_shape)


class MLPBlock(nn.Module):
    """Two linear layers with an activation between (the ViT and two-way transformer MLP)."""

    def __init__(self, embedding_dim: int, mlp_dim: int, act: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.lin1 = OneDNNLinear(embedding_dim, mlp_dim)
        self.lin2 = OneDNNLinear(mlp_dim, embedding_dim)
        self.act = act()

    def forward(self, x: Tensor) -> Tensor:
        if type(self.lin1) is OneDNNLinear:  # the activation fused into the product where oneDNN runs it
            return self.lin2(self.lin1(x, activation=self.act))
        return self.lin2(self.act(self.lin1(x)))  # lin1 replaced (e.g. wrapped for fine-tuning)


class MLP(nn.Module):
    """``num_layers`` linear layers with ReLU between them (SAM's hypernetwork and IoU heads)."""

    def __init__(
        self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int, sigmoid_output: bool = False
    ) -> None:
        super().__init__()
        dims_in = [input_dim] + [hidden_dim] * (num_layers - 1)
        dims_out = [hidden_dim] * (num_layers - 1) + [output_dim]
        self.layers = nn.ModuleList(nn.Linear(i, o) for i, o in zip(dims_in, dims_out))
        self.sigmoid_output = sigmoid_output

    def forward(self, x: Tensor) -> Tensor:
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < last:
                x = F.relu(x)
        return x.sigmoid() if self.sigmoid_output else x

