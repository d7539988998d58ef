"""Prompts shared by every model: typed containers, geometry, simulators and per-model conversion.

The names below are imported on first use: :mod:`zoo.prompts.rules` (the validator's rules on numpy arrays) must
import without torch, for the ONNX runtime.
"""

from importlib import import_module
from typing import Any

_HOMES = {
    "bounding_boxes": "components", "interior_distance": "components", "largest_component": "components",
    "boxes_from_masks": "simulate", "first_click_interior": "simulate", "first_click_random_foreground": "simulate",
    "next_click_error_interior": "simulate", "next_click_random_error": "simulate", "next_click_ritm": "simulate",
    "sam_med2d_points": "simulate",
    "BACKGROUND_LABEL": "types", "FOREGROUND_LABEL": "types", "PADDING_LABEL": "types", "BoxPrompts": "types",
    "MaskPrompts": "types", "PointPrompts": "types", "Prompts": "types",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(import_module(f"zoo.prompts.{_HOMES[name]}"), name)
    raise AttributeError(f"module 'zoo.prompts' has no attribute {name!r}")
