"""Prompts shared by every model: typed containers, geometry, simulators and per-model conversion."""

from zoo.prompts.components import bounding_boxes, interior_distance, largest_component
from zoo.prompts.simulate import (
    boxes_from_masks,
    first_click_interior,
    first_click_random_foreground,
    next_click_error_interior,
    next_click_random_error,
    next_click_ritm,
    sam_med2d_points,
)
from zoo.prompts.types import (
    BACKGROUND_LABEL,
    FOREGROUND_LABEL,
    PADDING_LABEL,
    BoxPrompts,
    MaskPrompts,
    PointPrompts,
    Prompts,
)

__all__ = [
    "BACKGROUND_LABEL",
    "FOREGROUND_LABEL",
    "PADDING_LABEL",
    "BoxPrompts",
    "MaskPrompts",
    "PointPrompts",
    "Prompts",
    "bounding_boxes",
    "boxes_from_masks",
    "first_click_interior",
    "first_click_random_foreground",
    "interior_distance",
    "largest_component",
    "next_click_error_interior",
    "next_click_random_error",
    "next_click_ritm",
    "sam_med2d_points",
]
