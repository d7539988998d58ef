"""``F.linear`` through oneDNN's matrix product for float32 inference on the CPU.

On the CPUs measured here (2 threads, cold caches) oneDNN ran the encoders' projections and MLPs 10-40% faster than
``F.linear``'s default path, and the few-row, very wide products of a convolution written as a linear map (64 x 768
-> 12288 in SAM-Med2D's adapter) twice as fast; see ``benchmarks/encoder_speed.py``. Same function, same weights
(nothing is copied or cached); only the summation order differs, as between any two GEMM kernels.
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled

_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")


def onednn_applies(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`linear` takes oneDNN's path: eager float32 CPU inference on a contiguous weight.

    Not under autocast (the product must follow autocast's dtype), not while recording gradients, not while
    ``torch.compile`` traces (inductor chooses its own kernels) and not inside ``reference_computation()``.
    """
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        _AVAILABLE
        and x.device.type == "cpu"
        and all(t.dtype == torch.float32 for t in tensors)
        and weight.is_contiguous()
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not reference_computation_enabled()
    )


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, through oneDNN where :func:`onednn_applies`."""
    if onednn_applies(x, weight, bias):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")
    return F.linear(x, weight, bias)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, keys and function) whose float32 CPU inference runs :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
