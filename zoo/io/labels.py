"""Several objects of one image as one multi-label file: ``<stem>_labels.nii.gz`` (or ``.png``) and its label table
``<stem>_labels.json`` (value -> object name).

Overlap rule: **the later object wins**. Objects take the values 1, 2, ... in the order they were given (the
prompts file's order); where two masks overlap, the voxel gets the value of the object given later. This is how
SAM-Med3D's authors merge their per-class masks (``utils/infer_utils.py`` overwrites in label order), and it keeps
every per-object mask unchanged beside the label map.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

OVERLAP_RULE = "later object wins"
LABELS_SUFFIX = {2: ".png", 3: ".nii.gz"}


def label_map(masks: Sequence[np.ndarray]) -> np.ndarray:
    """Masks of one image (same shape) as one label map: object ``k`` (0-based) has value ``k + 1``, 0 is
    background, and where objects overlap the later one wins (see the module docstring)."""
    if not masks:
        raise ValueError("a label map needs at least one mask")
    shape = np.asarray(masks[0]).shape
    dtype = np.uint8 if len(masks) <= 255 else np.uint16
    labels = np.zeros(shape, dtype=dtype)
    for value, mask in enumerate(masks, start=1):
        mask = np.asarray(mask)
        if mask.shape != shape:
            raise ValueError(f"mask {value - 1} is {mask.shape}, the first is {shape}")
        labels[mask.astype(bool)] = value
    return labels


def label_table(names: Sequence[str | None]) -> dict[str, str]:
    """Value -> name (``"0": "background"``; an unnamed object is ``object_<index>``)."""
    table = {"0": "background"}
    for value, name in enumerate(names, start=1):
        table[str(value)] = name or f"object_{value - 1}"
    return table


def label_file_names(stem: str, spatial_dims: int) -> tuple[str, str]:
    """``(<stem>_labels.nii.gz | .png, <stem>_labels.json)``."""
    return f"{stem}_labels{LABELS_SUFFIX[spatial_dims]}", f"{stem}_labels.json"


__all__ = ["LABELS_SUFFIX", "OVERLAP_RULE", "label_file_names", "label_map", "label_table"]
