"""Inference convolutions with their BatchNorm folded in and the following activation fused, for TinyViT.

In eval mode a BatchNorm after a bias-free convolution is an affine map per output channel, so the two are one
convolution with weight ``w * g`` and bias ``b - mean * g`` (``g = gamma / sqrt(var + eps)``): one pass over the
map instead of two. On the CPU the convolution and a following GELU or ReLU run as one oneDNN call (the
activation is a post-op on the output while it is in cache), on channels-last maps, where oneDNN's depthwise and
1x1 kernels are several times faster than on channels-first ones. The folded weights are derived once per state
of the parameters and running statistics and kept (``weight_cache``). The same function as convolution then
BatchNorm, up to the rounding of the folded weights (``tests/models/test_folded_conv.py`` bounds it). Under CPU
bfloat16 autocast the same oneDNN call runs in bfloat16 on folded weights rounded once and kept, as autocast's
convolution, with the activation still fused (autocast would run it as a second pass over the bfloat16 output).

oneDNN's convolution is a private torch op (``torch.ops.mkldnn._convolution_pointwise``). It is used only where
:func:`onednn_conv_works` found it computing ``F.conv2d`` and each post-op on a tiny input (checked once per
process); elsewhere the folded convolution is ``F.conv2d`` followed by the activation.
"""

import functools
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.onednn_linear import agrees, fusable_activation, onednn_reports_native_bf16, passes
from zoo.models.components.weight_cache import derived_from_parameters


def computes_conv(op: Callable[..., Tensor] | None, dtype: torch.dtype = torch.float32) -> bool:
    """Whether ``op`` behaves as ``torch.ops.mkldnn._convolution_pointwise`` is relied on to: ``F.conv2d`` (with
    padding, stride and groups) followed by the named post-op, on tiny channels-first and channels-last inputs in
    ``dtype`` (float32, or bfloat16: the float32 result of the rounded operands, to bfloat16's precision)."""
    if op is None:
        return False
    generator = torch.Generator().manual_seed(0)
    x, dense, depthwise, bias = (
        torch.randn(*shape, generator=generator).to(dtype) for shape in ((1, 4, 6, 5), (6, 4, 3, 3), (4, 1, 3, 3), (6,))
    )
    tolerance = 2e-2 if dtype == torch.bfloat16 else 1e-4
    post_ops = {("none", ""): lambda y: y, ("gelu", "none"): F.gelu, ("relu", ""): F.relu}
    cases = [
        (x.contiguous(memory_format=layout), weight, b, stride, groups, attr, algorithm, activation)
        for layout in (torch.contiguous_format, torch.channels_last)
        for (attr, algorithm), activation in post_ops.items()
        for weight, b, stride, groups in ((dense, bias, 1, 1), (depthwise, bias[:4], 2, 4))
    ]
    return passes(lambda: all(
        agrees(op(image, weight, b, [1, 1], [stride, stride], [1, 1], groups, attr, [], algorithm),
               activation(F.conv2d(image.float(), weight.float(), b.float(), stride, 1, 1, groups)), dtype, tolerance)
        for image, weight, b, stride, groups, attr, algorithm, activation in cases
    ))  # fmt: skip


@functools.cache
def onednn_conv_works() -> bool:
    """Whether this torch has oneDNN and its private convolution op computes as relied on (checked once)."""
    return torch.backends.mkldnn.is_available() and computes_conv(
        getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    )


@functools.cache
def onednn_bf16_conv_works() -> bool:
    """Whether the private convolution op also computes in bfloat16, on a CPU with native bfloat16 kernels
    (checked once)."""
    return (
        onednn_conv_works()
        and onednn_reports_native_bf16()
        and computes_conv(getattr(torch.ops.mkldnn, "_convolution_pointwise", None), torch.bfloat16)
    )


def folding_applies(module: nn.Module, x: Tensor) -> bool:
    """Whether a convolution + BatchNorm ``module`` may run folded: eval mode, no gradient recorded for it, not
    inside ``reference_computation()`` and not while ``torch.compile`` traces (inductor folds on its own)."""
    return (
        not module.training
        and not (torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in module.parameters())))
        and not reference_computation_enabled()
        and not torch.compiler.is_compiling()
    )


def folded_weights(conv: nn.Conv2d, norm: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """The weight and bias of ``norm(conv(x))`` as one convolution (eval-mode statistics)."""
    scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
    weight = conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1)))
    bias = norm.bias - norm.running_mean * scale
    if conv.bias is not None:
        bias = bias + conv.bias * scale
    return weight.contiguous(), bias


def folded_conv(
    conv: nn.Conv2d,
    norm: nn.BatchNorm2d,
    x: Tensor,
    activation: nn.Module | None = None,
    padding: tuple[int, int] | None = None,
) -> Tensor:
    """``activation(norm(conv(x)))`` with ``norm`` folded into ``conv`` (see the module docstring); call only where
    :func:`folding_applies`. ``padding`` replaces the convolution's own (for a strip padded by its caller)."""
    padding = tuple(conv.padding) if padding is None else tuple(padding)
    sources = [conv.weight, norm.weight, norm.bias, norm.running_mean, norm.running_var]
    if conv.bias is not None:
        sources.append(conv.bias)
    weight, bias = derived_from_parameters(conv, "folded_batch_norm", sources, lambda: folded_weights(conv, norm))
    onednn = (
        x.device.type == "cpu"
        and isinstance(conv.padding, tuple)
        and conv.padding_mode == "zeros"
        and weight.dtype == torch.float32
        and onednn_conv_works()
    )
    if onednn and x.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
        return _onednn_conv(x, weight, bias, conv, padding, activation)
    if (
        onednn
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and x.dtype in (torch.float32, torch.bfloat16)
        and onednn_bf16_conv_works()
    ):
        # autocast's convolution (bfloat16 operands, the folded weights rounded once and kept), its activation
        # fused: applied before the output is rounded to bfloat16 rather than after.
        def bfloat16_folded() -> tuple[Tensor, Tensor]:
            return weight.to(torch.bfloat16), bias.to(torch.bfloat16)

        weight16, bias16 = derived_from_parameters(conv, "folded_batch_norm_bf16", sources, bfloat16_folded)
        return _onednn_conv(x.to(torch.bfloat16), weight16, bias16, conv, padding, activation)
    out = F.conv2d(x, weight, bias, conv.stride, padding, conv.dilation, conv.groups)
    return out if activation is None else activation(out)


def _onednn_conv(
    x: Tensor, weight: Tensor, bias: Tensor, conv: nn.Conv2d, padding: tuple[int, ...], activation: nn.Module | None
) -> Tensor:
    """``activation(conv2d(x, weight, bias))`` with ``conv``'s stride, dilation and groups, through oneDNN's op,
    the activation as its post-op where oneDNN has it."""
    args = (list(padding), list(conv.stride), list(conv.dilation), conv.groups)
    post_op = fusable_activation(activation)
    if post_op is None:
        return activation(torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, "none", [], ""))
    return torch.ops.mkldnn._convolution_pointwise(x, weight, bias, *args, *post_op)
