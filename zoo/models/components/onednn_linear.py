"""``F.linear`` through oneDNN's matrix product for large float32 inference products on the CPU.

On the CPUs measured here (2 threads) oneDNN ran the encoders' projections and MLPs faster than ``F.linear``'s
default path: 10-40% on an AVX2 machine, and SAM-Med2D's encoder 285 -> 260 ms on an AVX-512/AMX one, where the
few-row, wide product of its adapter's down convolution written as a linear map gains most. On small products its
per-call overhead loses: with it, the mask decoder's clicks were 3-10% slower (3.8 vs 3.4 ms per SAM-Med2D click
on the AMX machine). So only products of at least :data:`MIN_MULTIPLY_ADDS` take it: the encoders' qkv, MLP and
adapter products do (SAM-Med2D's 256-token output projection does not), no decoder product does. Same function,
same weights (nothing is copied or cached); only the summation order differs, as between any two GEMM kernels.

An activation that follows the product (the ViT MLP's GELU, the adapter convolution's ReLU) runs as oneDNN's
post-op on the product's output while it is still in cache: no second pass over it and no second buffer, whose
fresh pages can cost more than the activation itself (a 3 MiB GELU output in SAM-Med2D's MLP: 0.14 ms warm, 3-5 ms
when freshly page-faulted on the VMs measured here).
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled

_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
MIN_MULTIPLY_ADDS = 2**28  # rows x inputs x outputs below which F.linear's kernel was faster


def onednn_applies(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`linear` takes oneDNN's path: a large eager float32 CPU inference product, contiguous weight.

    Not for products under :data:`MIN_MULTIPLY_ADDS`, not under autocast (the product must follow autocast's
    dtype), not while recording gradients, not while ``torch.compile`` traces (inductor chooses its own kernels)
    and not inside ``reference_computation()``.
    """
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        _AVAILABLE
        and x.device.type == "cpu"
        and all(t.dtype == torch.float32 for t in tensors)
        and weight.is_contiguous()
        and x.numel() * weight.shape[0] >= MIN_MULTIPLY_ADDS
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not reference_computation_enabled()
    )


def fusable_activation(activation: nn.Module | None) -> tuple[str, list, str] | None:
    """oneDNN's post-op (name, scalars, algorithm) computing ``activation``, or None where there is none."""
    if activation is None:
        return "none", [], ""
    if type(activation) is nn.GELU:
        return "gelu", [], activation.approximate  # "none" (erf) or "tanh", as torch names them
    if type(activation) is nn.ReLU:
        return "relu", [], ""
    return None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: nn.Module | None = None) -> Tensor:
    """``activation(F.linear(x, weight, bias))`` (no activation if None), through oneDNN where
    :func:`onednn_applies`, with the activation fused into the product where oneDNN has it."""
    if not onednn_applies(x, weight, bias):
        out = F.linear(x, weight, bias)
        return out if activation is None else activation(out)
    post_op = fusable_activation(activation)
    if post_op is None:
        return activation(torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], ""))
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, *post_op)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, keys and function) whose large float32 CPU inference products run through
    oneDNN (:func:`linear`), with a following activation fused where oneDNN has it."""

    def forward(self, x: Tensor, activation: nn.Module | None = None) -> Tensor:
        """``activation(x @ weight.T + bias)``; see :func:`linear`."""
        return linear(x, self.weight, self.bias, activation)
