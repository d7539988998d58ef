"""Tensors derived from a module's parameters for a fast kernel (a weight in another layout), kept for inference.

A fast kernel often wants a weight in another layout than the checkpoint's. Rearranging it on every call can cost
as much as the product it feeds, so outside autograd the derived tensor is kept on the module that uses it and
reused only while each source is the same tensor object (not merely the same address), at the same version
(in-place updates bump it), with the same storage, dtype and device. An entry holds its sources' storage, so no
fresh tensor can be allocated at their address while it exists.

Kept tensors are state a user cannot see, so they travel nowhere and never outlive a change of state:

* they are not buffers: not in ``state_dict``, not moved by ``.to()``;
* a deep copy or an unpickled copy (``torch.save(model)``) of a module starts with nothing kept;
* a module that owns kernels with kept tensors (:class:`DropsDerivedWeights`) drops them, for itself and every
  submodule, on ``load_state_dict``, on every device or dtype move and on ``train()`` (not on ``eval()``, which
  evaluation loops call again and again);
* :func:`drop_derived_weights` frees them explicitly.

The drops override ``nn.Module``'s private ``_apply`` and ``_load_from_state_dict``; should a torch stop calling
them, kept tensors would outlive a move or a load (memory), while the checks above would still keep results right.

Nothing is kept while autograd records the parameters (the derived tensor must be in the graph), for inference
tensors (they have no version counter), while ``torch.compile`` traces (the derivation is traced into the graph),
inside ``reference_computation()``, or where this torch's version counters do not behave as relied on here
(:func:`version_counters_work`). What is derived inside ``torch.inference_mode()`` (an inference tensor) is kept
apart from what is derived outside it, so that validation under inference mode never hands an inference tensor to
a training step. As for autograd's own checks, writes through ``param.data`` or another alias that does not share
the parameter's version counter are not seen: change weights with in-place operations on the parameters under
``torch.no_grad()``, ``load_state_dict`` or new parameters.
"""

from __future__ import annotations

import functools
import weakref
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor, nn

from zoo.models.components.compute_path import reference_computation_enabled

Derived = TypeVar("Derived")

_STORE = "_derived_weights"  # attribute in a module's __dict__
MAX_ENTRIES = 16  # per module: a few weight slots plus index tensors for the input shapes seen last


@functools.cache
def version_counters_work() -> bool:
    """Whether ``Tensor._version`` (a private attribute) exists and counts in-place updates of a parameter, whether
    made on the parameter or through a ``detach()``-ed alias of it; checked once on a tiny parameter."""
    try:
        with torch.inference_mode(False), torch.no_grad():
            param = nn.Parameter(torch.zeros(2))
            before = param._version
            param.add_(1.0)
            after_param = param._version
            param.detach().mul_(2.0)
            after_alias = param._version
            unchanged = param._version  # reading does not count
        return isinstance(before, int) and before < after_param < after_alias == unchanged
    except Exception:  # noqa: BLE001 - any failure means the counters cannot be relied on
        return False


class TensorStates:
    """The identity, version, storage, dtype and device of some tensors, to tell later whether they changed.

    Holds a weak reference to each tensor (its identity) and a ``detach()``-ed alias (its storage, kept allocated
    so that no other tensor can take its address).
    """

    __slots__ = ("_refs", "_aliases", "_versions")

    def __init__(self, tensors: Iterable[Tensor]) -> None:
        tensors = tuple(tensors)
        self._refs = tuple(weakref.ref(t) for t in tensors)
        self._aliases = tuple(t.detach() for t in tensors)
        self._versions = tuple(t._version for t in tensors)

    def match(self, tensors: Sequence[Tensor]) -> bool:
        """Whether ``tensors`` are the same objects, unchanged since these states were taken."""
        if len(tensors) != len(self._refs):
            return False
        for tensor, ref, alias, version in zip(tensors, self._refs, self._aliases, self._versions):
            if (
                ref() is not tensor
                or tensor._version != version
                or tensor.data_ptr() != alias.data_ptr()
                or tensor.dtype != alias.dtype
                or tensor.device != alias.device
                or tensor.shape != alias.shape
                or tensor.stride() != alias.stride()
            ):
                return False
        return True


class DerivedWeights:
    """One module's kept tensors, by slot. A deep copy or a pickle of it is empty: kept tensors never travel."""

    __slots__ = ("entries",)

    def __init__(self) -> None:
        self.entries: OrderedDict[Hashable, tuple[Any, Any]] = OrderedDict()

    def __deepcopy__(self, memo: dict) -> DerivedWeights:
        return DerivedWeights()

    def __reduce__(self) -> tuple[type, tuple]:
        return DerivedWeights, ()

    def get(self, slot: Hashable) -> tuple[Any, Any] | None:
        entry = self.entries.get(slot)
        if entry is not None:
            self.entries.move_to_end(slot)
        return entry

    def put(self, slot: Hashable, key: Any, value: Any) -> None:
        self.entries[slot] = (key, value)
        self.entries.move_to_end(slot)
        while len(self.entries) > MAX_ENTRIES:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()


def _store(module: nn.Module) -> DerivedWeights:
    store = module.__dict__.get(_STORE)
    if store is None:
        store = module.__dict__[_STORE] = DerivedWeights()  # not a buffer: never saved or moved
    return store


def records_grad(*tensors: Tensor | None) -> bool:
    """Whether autograd records an operation on ``tensors`` (None entries ignored)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def keeps_derived(params: Sequence[Tensor]) -> bool:
    """Whether :func:`derived_from_parameters` keeps what it derives from ``params`` (module docstring: not while
    autograd records them, not while ``torch.compile`` traces, not inside ``reference_computation()``, not for
    inference tensors, not where version counters cannot be relied on)."""
    return not (
        records_grad(*params)
        or torch.compiler.is_compiling()  # traced into the graph instead
        or reference_computation_enabled()
        or any(p.is_inference() for p in params)
        or not version_counters_work()
    )


def derived_from_parameters(
    module: nn.Module, slot: str, params: Sequence[Tensor], derive: Callable[[], Derived]
) -> Derived:
    """``derive()``, computed once per state of ``params`` and kept on ``module`` under ``slot``
    (where :func:`keeps_derived`; computed on every call elsewhere)."""
    if not keeps_derived(params):
        return derive()
    store = _store(module)
    inference = torch.is_inference_mode_enabled()
    entry = store.get(slot)
    if entry is not None:
        (was_inference, states), value = entry
        if was_inference == inference and states.match(params):
            return value
    value = derive()
    store.put(slot, (inference, TensorStates(params)), value)
    return value


def kept_index(module: nn.Module, key: Hashable, build: Callable[[], Tensor]) -> Tensor:
    """``build()``, an index tensor that depends only on ``key`` (shapes, device), kept on ``module``.

    Built outside inference mode even when first asked for inside it, so that a training step after
    inference-mode validation can save it for backward.
    """
    if torch.compiler.is_compiling():
        return build()
    store = _store(module)
    entry = store.get(("index", key))
    if entry is None:
        with torch.inference_mode(False):
            index = build()
        store.put(("index", key), None, index)
        return index
    return entry[1]


def drop_derived_weights(module: nn.Module) -> None:
    """Free every tensor kept for ``module`` and its submodules (they are derived again when next needed)."""
    for submodule in module.modules():
        store = submodule.__dict__.get(_STORE)
        if store is not None:
            store.clear()


class DropsDerivedWeights(nn.Module):
    """Base for a module whose fast kernels keep derived tensors on it or its submodules: they are dropped when
    its state is loaded (``load_state_dict``), moved or cast (``.to()``, ``.cuda()``, ``.double()``, ...) and when
    it is put in training mode (``train()``)."""

    def train(self, mode: bool = True) -> DropsDerivedWeights:
        if mode:
            drop_derived_weights(self)
        return super().train(mode)

    def _apply(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> DropsDerivedWeights:
        drop_derived_weights(self)
        return super()._apply(fn, *args, **kwargs)

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        drop_derived_weights(self)
        super()._load_from_state_dict(*args, **kwargs)
