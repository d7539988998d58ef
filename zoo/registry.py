"""``zoo.create_model``: a registered network with its family's processor, or with its released weights."""

from __future__ import annotations

from typing import Any

from torch import nn

from zoo.models.registry import build_network, family_class, list_families, list_models


def create_model(name: str, pretrained: bool = False, **overrides: Any) -> nn.Module:
    """Build the registered variant ``name``; ``overrides`` replace config fields.

    The model carries its family's processor config (``zoo.processors.processor_for`` builds the processor from
    it). ``pretrained=True`` returns it with its released weights, in eval mode, where they are reachable without a
    download (``zoo.hub.pretrained.released_weights_folder``); otherwise it raises ``CheckpointError`` at once.
    """
    if pretrained:
        from zoo.hub.pretrained import pretrained_model

        return pretrained_model(name, **overrides)
    from zoo.processors import attach_default_processor

    return attach_default_processor(build_network(name, **overrides))


__all__ = ["build_network", "create_model", "family_class", "list_families", "list_models"]
