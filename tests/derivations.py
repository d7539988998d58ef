"""Recording what a module derives through ``weight_cache.derived_from_parameters`` (a conversion, reorder or
rearrangement of a weight), to tell derived-once-and-kept from derived-on-every-call."""

from collections.abc import Callable
from types import ModuleType
from typing import Any

import pytest


def recorded_derivations(
    monkeypatch: pytest.MonkeyPatch, *modules: ModuleType, record: Callable[[Any, str], Any] = lambda owner, slot: slot
) -> list:
    """Patch ``derived_from_parameters`` as each of ``modules`` imported it: every derivation actually computed
    (not a kept one returned) appends ``record(owner, slot)`` (by default the slot) to the returned list."""
    derivations: list = []
    for module in modules:
        real = module.derived_from_parameters

        def recording(owner, slot, sources, derive, real=real):
            return real(owner, slot, sources, lambda: derivations.append(record(owner, slot)) or derive())

        monkeypatch.setattr(module, "derived_from_parameters", recording)
    return derivations
