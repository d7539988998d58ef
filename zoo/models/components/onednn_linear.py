"""``F.linear`` through oneDNN's matrix product for float32 inference on the CPU.

On the CPUs measured here (2 threads, cold caches) oneDNN ran the encoders' projections and MLPs 10-40% faster than
``F.linear``'s default path, and the few-row, very wide products of a convolution written as a linear map (64 x 768
-> 12288 in SAM-Med2D's adapter) twice as fast; see ``benchmarks/encoder_speed.py``. Same function, same weights
(nothing is copied or cached); only the summation order differs, as between any two GEMM kernels.

An activation that follows the product (the ViT MLP's GELU, the decoder's ReLU and upscaling GELU) can run as
oneDNN's post-op on the product's output while it is still in cache: no second pass over it and no second
buffer, whose fresh pages cost more than the activation itself on the VMs measured here (a 3 MiB GELU output
in SAM-Med2D's MLP: 0.14 ms warm, 3-5 ms when freshly page-faulted).

The exception is :class:`OneDNNLinear` on a few rows (the mask decoder's prompt tokens: 7 rows for one 3D click):
its product is bound by reading the weight, which oneDNN's packed layout streams faster, so the packed weight is
kept on the module (``weight_cache``), one extra copy of those layers' weights (12 MiB in SAM-Med3D's decoder).
"""

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.weight_cache import derived_from_parameters

_AVAILABLE = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_linear_pointwise")
FEW_ROWS = 32  # at most this many rows, OneDNNLinear multiplies by a packed copy of its weight


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
    return _onednn_product(x, weight, bias, activation)


def _onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None, activation: nn.Module | None) -> Tensor:
    post_op = fusable_activation(activation)
    if post_op is None:
        return activation(torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], ""))
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, *post_op)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, keys and function) whose float32 CPU inference runs through oneDNN.

    On at most :data:`FEW_ROWS` rows it multiplies by a packed copy of the weight, kept until the weight changes;
    here that made the SAM-Med3D decoder's token MLPs about 1.5x faster on cold caches (one click: ~1 ms of ~26).
    """

    def forward(self, x: Tensor, activation: nn.Module | None = None) -> Tensor:
        """``activation(x @ weight.T + bias)``; see :func:`linear`."""
        few_rows = x.numel() <= FEW_ROWS * x.shape[-1]
        if few_rows and not self.weight.is_inference() and onednn_applies(x, self.weight, self.bias):
            packed = derived_from_parameters(self, "onednn_packed", [self.weight], self._pack)
            return _onednn_product(x, packed, self.bias, activation)
        return linear(x, self.weight, self.bias, activation)

    def _pack(self) -> Tensor:
        return torch.ops.mkldnn._reorder_linear_weight(self.weight)
