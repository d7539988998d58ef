"""Trilinear resizing (``align_corners=False``) as one matrix product per axis.

``F.interpolate(mode="trilinear")`` weighs each output voxel's 8 neighbours with the product of three per-axis
weights, so the resize is separable: along each axis a fixed ``out x in`` matrix with two non-zero weights per
row. On the CPU, torch's trilinear kernel computes every output from its 8 neighbours with gathered indices,
several times slower than three matrix products (SAM-Med3D's 32^3 -> 128^3 logits, on every click). The per-axis
matrices are ``F.interpolate(mode="linear")`` of an identity matrix: torch's own weights, not a re-derivation.
Same function, different rounding (float32 sums of the same weighted terms in another order).

Only for finite float32/float64 CPU tensors outside tracing, export and ``torch.compile``; elsewhere, and on the
GPU, ``F.interpolate`` itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor


def resize_trilinear(volumes: Tensor, size: Sequence[int]) -> Tensor:
    """``F.interpolate(volumes, size, mode="trilinear", align_corners=False)`` for ``B x C x D x H x W``."""
    size = tuple(int(s) for s in size)
    if not _separable_applies(volumes):
        return F.interpolate(volumes, size=size, mode="trilinear", align_corners=False)
    batch, channels, depth, height, width = volumes.shape
    out_depth, out_height, out_width = size
    dtype, device = volumes.dtype, volumes.device
    with torch.autocast(device.type, enabled=False):  # the products in the input's dtype, as the kernel computes
        # W axis: rows of W values times the W x W' matrix.
        x = volumes.reshape(-1, width) @ axis_weights(width, out_width, dtype, device).t()
        # H axis: the H' x H matrix times every (b, c, d) slice of H x W'.
        x = torch.matmul(axis_weights(height, out_height, dtype, device), x.view(-1, height, out_width))
        # D axis: the D' x D matrix times every (b, c) block of D x (H' W').
        x = torch.matmul(axis_weights(depth, out_depth, dtype, device), x.view(-1, depth, out_height * out_width))
    return x.view(batch, channels, out_depth, out_height, out_width)


def _separable_applies(volumes: Tensor) -> bool:
    return (
        not torch.jit.is_tracing()  # first: a traced graph's sizes are tensors
        and not torch.onnx.is_in_onnx_export()
        and not torch.compiler.is_compiling()
        and volumes.dim() == 5
        and volumes.device.type == "cpu"
        and volumes.dtype in (torch.float32, torch.float64)
        and volumes.numel() > 0
        and bool(torch.isfinite(volumes).all())  # a zero weight times inf would give NaN where the kernel gives inf
    )


@functools.lru_cache(maxsize=64)
def axis_weights(size_in: int, size_out: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``size_out x size_in`` matrix of ``F.interpolate(mode="linear", align_corners=False)``'s weights along
    one axis (row ``i``: the weights of output ``i``). Shared between calls: do not modify it in place."""
    # A normal tensor even when first asked for under inference mode: training saves it for the backward pass.
    with torch.inference_mode(False), torch.no_grad():
        identity = torch.eye(size_in, dtype=dtype, device=device)[None]
        return F.interpolate(identity, size=size_out, mode="linear", align_corners=False)[0].t().contiguous()
