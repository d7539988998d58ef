"""Inference-time caches of tensors derived from a module's parameters (weights rearranged for a fast kernel).

A fast kernel often wants a weight in another layout than the checkpoint's. Rearranging it on every call can cost
as much as the product it feeds, so at inference the derived tensor is kept on the module, keyed on each source
parameter's storage pointer, version counter, dtype and device: an in-place update (optimizer step,
``load_state_dict``) or a swapped parameter invalidates it. Nothing is cached while autograd records the
parameters (the derived tensor must stay in the graph) or for inference tensors, which have no version counter.
What is derived inside ``torch.inference_mode()`` (an inference tensor) is kept apart from what is derived outside
it, so that validation under inference mode never hands an inference tensor to a training step. While
``torch.compile`` traces, the derivation is part of the traced graph instead.
"""

from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor, nn

Derived = TypeVar("Derived")


def derived_from_parameters(
    module: nn.Module, slot: str, params: Sequence[Tensor], derive: Callable[[], Derived]
) -> Derived:
    """``derive()``, computed once per state of ``params`` and kept on ``module`` under ``slot``."""
    records_grad = torch.is_grad_enabled() and any(p.requires_grad for p in params)
    if records_grad or torch.compiler.is_compiling() or any(p.is_inference() for p in params):
        return derive()  # under torch.compile the derivation is traced into the graph (and frozen with it)
    key = (torch.is_inference_mode_enabled(), *((p.data_ptr(), p._version, p.dtype, p.device) for p in params))
    cache = module.__dict__.setdefault("_derived_weight_cache", {})  # not a buffer: never saved or moved
    cached = cache.get(slot)
    if cached is None or cached[0] != key:
        cached = (key, derive())
        cache[slot] = cached
    return cached[1]
