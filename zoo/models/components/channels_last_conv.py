"""Exact convolutions and transposed convolutions on channels-last grids (``B x *spatial x C``) as matrix products.

SAM-Med2D's adapter convolves the ViT's channels-last tokens with a stride-2 3x3 convolution and a stride-2 4x4
transposed convolution, 768 channels each, on a 16x16 grid. The CPU convolution kernels handle that shape poorly
(far below the machine's GEMM rate) and want a channels-first copy. Written as one matrix product over the gathered
kernel taps (convolution), or one batched product per kernel position followed by an overlap-add of the kernel-sized
output blocks (transposed convolution), the same sums run at the machine's GEMM rate on the tokens as they are (the
convolution through oneDNN where it applies, ``onednn_linear``). The convolution's weight is used as it is stored;
the transposed convolution's is rearranged once per parameter state and kept (``weight_cache``), one extra copy of
it in memory. ``benchmarks/encoder_speed.py`` compares the reference and fast paths.
"""

import itertools
import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.onednn_linear import (
    bf16_applies,
    kept_bfloat16,
    kept_linear,
    mkl_lags_onednn,
)
from zoo.models.components.weight_cache import derived_from_parameters, records_grad

_ConvNd = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_ConvTransposeNd = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def _check_plain(conv: nn.Module, kinds: tuple[type, ...]) -> None:
    """Only ungrouped, undilated, zero- and integer-padded convolutions (and no output padding) are written out."""
    plain = (
        isinstance(conv, kinds)
        and not isinstance(conv.padding, str)
        and conv.groups == 1
        and all(d == 1 for d in conv.dilation)
        and conv.padding_mode == "zeros"
        and not any(getattr(conv, "output_padding", ()))
    )
    if not plain:
        raise ValueError(f"no channels-last form for {conv!r}: needs groups=1, dilation 1, integer zero padding")


def conv_channels_last(conv: nn.Module, x: Tensor, activation: nn.Module | None = None) -> Tensor:
    """``conv`` (a ``ConvNd``) on ``x`` ``B x *spatial x C_in``, returning ``B x *out_spatial x C_out``.

    ``activation``, if given, is applied to the result (fused into the product where ``onednn_linear`` can).
    """
    _check_plain(conv, _ConvNd)
    kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
    spatial = x.shape[1:-1]
    out = [(size + 2 * pad - k) // s + 1 for size, k, s, pad in zip(spatial, kernel, stride, padding)]
    # F.pad lists (before, after) pairs from the last axis backwards; the channel axis is last and not padded.
    padded = F.pad(x, [0, 0, *itertools.chain.from_iterable((p, p) for p in reversed(padding))])
    taps = []
    for offset in itertools.product(*(range(k) for k in kernel)):
        index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, stride, out))
        taps.append(padded[(slice(None), *index)])
    # Taps ordered (C_in, kernel offset), as the weight C_out x C_in x *kernel is stored: no weight copy.
    gathered = torch.stack(taps, dim=-1).flatten(-2)
    return kept_linear(conv, gathered, conv.weight.reshape(conv.out_channels, -1), conv.bias, activation)


def conv_transpose_channels_last(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv`` (a ``ConvTransposeNd``) on ``x`` ``B x *spatial x C_in``, returning ``B x *out_spatial x C_out``.

    Each input position writes a kernel-sized block of the output, ``stride`` apart: one matrix product (batched
    per kernel position, or a single one where MKL lags oneDNN) gives every block, and they are summed
    into place (the overlap-add), then ``padding`` is cropped off each side.
    """
    _check_plain(conv, _ConvTransposeNd)
    kernel, stride, padding = conv.kernel_size, conv.stride, conv.padding
    batch, *spatial, _ = x.shape

    # Under CPU autocast the product runs in autocast's dtype: the weight is kept in it too, not cast per call.
    dtype = torch.get_autocast_dtype("cpu") if x.device.type == "cpu" and torch.is_autocast_enabled("cpu") else None

    positions = math.prod(kernel)
    if dtype is None and mkl_lags_onednn() and not records_grad(x, conv.weight):
        # Where MKL lags oneDNN its batched product runs at half oneDNN's rate: one product
        # C_in -> (kernel position, C_out) through ``kept_linear`` instead (about twice as fast on SAM-Med2D's
        # adapter). Not in training, where it measured no faster (the matrix is derived again on every call).
        def matrix() -> Tensor:  # C_in x C_out x *kernel -> (prod(kernel) C_out) x C_in
            return conv.weight.flatten(2).permute(2, 1, 0).reshape(-1, conv.in_channels).contiguous()

        by_position = derived_from_parameters(conv, "conv_transpose_matrix", [conv.weight], matrix)
        blocks = kept_linear(conv, x.reshape(-1, conv.in_channels), by_position).view(-1, positions, conv.out_channels)
        blocks = blocks.transpose(0, 1)  # prod(kernel) x (B *spatial) x C_out, a view
    else:
        # One product per kernel position, batched: on the SAM-Med2D adapter's shape (64 tokens, 768 -> 16 x 768)
        # the batched product was faster than one 768 -> 12288 product on every CPU measured (Intel; AMD with AVX2).
        def weight() -> Tensor:  # C_in x C_out x *kernel -> prod(kernel) x C_in x C_out
            taps = conv.weight.flatten(2).permute(2, 0, 1)
            return (taps if dtype is None else taps.to(dtype)).contiguous()

        tokens = x.reshape(1, -1, conv.in_channels).expand(positions, -1, -1)
        slot = "conv_transpose_taps" if dtype is None else f"conv_transpose_taps_{dtype}"
        blocks = torch.bmm(tokens, derived_from_parameters(conv, slot, [conv.weight], weight))
    full = [(n - 1) * s + k for n, s, k in zip(spatial, stride, kernel)]
    out = blocks.new_zeros(batch, *full, conv.out_channels)
    for position, offset in enumerate(itertools.product(*(range(k) for k in kernel))):
        index = tuple(slice(o, o + s * (n - 1) + 1, s) for o, s, n in zip(offset, stride, spatial))
        out[(slice(None), *index)] += blocks[position].view(batch, *spatial, conv.out_channels)
    out = out[(slice(None), *(slice(p, f - p) for p, f in zip(padding, full)))]
    return out if conv.bias is None else out + conv.bias


def conv_with_kept_bf16_weight(conv: nn.Module, x: Tensor) -> Tensor:
    """``conv(x)`` for a plain ``ConvNd``; where :func:`~zoo.models.components.onednn_linear.bf16_applies` (CPU
    bfloat16 autocast, no gradient recorded) with bfloat16 copies of its weight and bias kept on it
    (``weight_cache``) instead of autocast converting them on every call (SAM-Med3D's neck kernel is 16 MB).
    The same result as autocast's: the product of the bfloat16-rounded operands."""
    if not bf16_applies(x, conv.weight, conv.bias):
        return conv(x)
    weight16, bias16 = kept_bfloat16(conv, conv.weight, conv.bias)
    return conv._conv_forward(x.to(torch.bfloat16), weight16, bias16)
