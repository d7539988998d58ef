"""Strict state-dict loading with errors that list every missing key, unexpected key and shape mismatch."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from zoo.errors import CheckpointError

_SHOWN = 5  # keys listed per kind of problem


def load_state_dict_strictly(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source_name: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` after a check that reports every problem at once."""
    problems = state_dict_mismatches(model.state_dict(), state_dict)
    if problems:
        raise CheckpointError(source_name, f"does not fit {type(model).__name__}: " + "; ".join(problems))
    model.load_state_dict(state_dict, strict=True)


def state_dict_mismatches(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor]) -> list[str]:
    """Human-readable descriptions of missing keys, unexpected keys and shape mismatches (empty if it fits)."""
    missing = [key for key in expected if key not in found]
    unexpected = [key for key in found if key not in expected]
    wrong_shape = [
        f"{key} expected {tuple(expected[key].shape)}, found {tuple(found[key].shape)}"
        for key in expected
        if key in found and tuple(found[key].shape) != tuple(expected[key].shape)
    ]
    problems = []
    for (one, many), items in (
        (("missing key", "missing keys"), missing),
        (("unexpected key", "unexpected keys"), unexpected),
        (("shape mismatch", "shape mismatches"), wrong_shape),
    ):
        if items:
            shown = ", ".join(items[:_SHOWN]) + (", ..." if len(items) > _SHOWN else "")
            problems.append(f"{len(items)} {one if len(items) == 1 else many} ({shown})")
    return problems
