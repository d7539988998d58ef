"""Name -> builder registry for released model variants (timm-style); part of the models layer, so it builds plain
networks. ``zoo.create_model`` (``zoo/registry.py``) adds the processor and the released weights."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable
from typing import Any

from torch import nn

_BUILDERS: dict[str, Callable[..., nn.Module]] = {}
_FAMILIES: dict[str, type[nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register ``builder(**overrides) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _BUILDERS:
            raise ValueError(f"model name {name!r} is already registered")
        _BUILDERS[name] = builder
        return builder

    return wrap


def register_family(family: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Register the model class that ``config.json``'s ``family`` field names."""

    def wrap(cls: type[nn.Module]) -> type[nn.Module]:
        _FAMILIES[family] = cls
        return cls

    return wrap


def _ensure_loaded() -> None:
    # Importing the model package runs the @register_model decorators.
    import zoo.models  # noqa: F401


def list_models(pattern: str = "*") -> list[str]:
    """Registered model names matching a glob ``pattern``, sorted."""
    _ensure_loaded()
    return sorted(n for n in _BUILDERS if fnmatch.fnmatch(n, pattern))


def build_network(name: str, **overrides: Any) -> nn.Module:
    """The registered variant ``name`` with random weights; ``overrides`` replace config fields."""
    _ensure_loaded()
    if name not in _BUILDERS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    return _BUILDERS[name](**overrides)


def family_class(family: str) -> type[nn.Module]:
    """The model class registered for ``family``."""
    _ensure_loaded()
    if family not in _FAMILIES:
        raise KeyError(f"unknown model family {family!r}; known families: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[family]


def list_families() -> list[str]:
    _ensure_loaded()
    return sorted(_FAMILIES)
