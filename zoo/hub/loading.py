"""Load the authors' checkpoints into zoo models, strictly, with errors that say what is wrong."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

from zoo.errors import CheckpointError
from zoo.hub.fingerprint import detect_checkpoint
from zoo.hub.state_dict import CheckpointSource, StateDict, read_state_dict

_SHOWN = 5  # keys listed per kind of problem


def load_official_weights(model: nn.Module, source: CheckpointSource) -> nn.Module:
    """Load an official checkpoint (path or state dict) into ``model`` strictly and return the model.

    The weights are found under ``model_state_dict`` / ``model`` / ``state_dict`` or used bare, with any
    ``module.`` prefix removed. If the model class defines ``adapt_official_state_dict(state_dict)``, it maps the
    authors' key names to the model's before the strict load.

    Raises:
        CheckpointError: not a checkpoint, truncated, another family's checkpoint, missing or unexpected keys,
            or shape mismatches. The message names the source.
    """
    state_dict, source_name = read_state_dict(source)
    return load_official_state_dict(model, state_dict, source_name)


def load_official_state_dict(model: nn.Module, state_dict: StateDict, source_name: str) -> nn.Module:
    """:func:`load_official_weights` for an already extracted state dict; errors name ``source_name``."""
    _refuse_other_family(model, state_dict, source_name)
    adapt = getattr(model, "adapt_official_state_dict", None)
    if callable(adapt):
        state_dict = adapt(state_dict)
    try:
        load_state_dict_strictly(model, state_dict, source_name)
    except CheckpointError as err:
        if _is_sam_for_adapter_model(model, state_dict):
            raise CheckpointError(
                source_name,
                f"{err.problem}. It looks like SAM without SAM-Med2D's adapters: to initialise SAM-Med2D from it, "
                "use zoo.hub.init_from_sam(model, source) or `zoo convert SRC DST --model sam_med2d_b`",
            ) from None
        raise
    return model


def _is_sam_for_adapter_model(model: nn.Module, state_dict: StateDict) -> bool:
    kind = detect_checkpoint(state_dict)
    has_adapters = any(".Adapter." in key for key in state_dict)
    wants_adapters = any(".Adapter." in key for key in model.state_dict())
    return kind is not None and kind.family == "sam_med2d" and wants_adapters and not has_adapters


def _refuse_other_family(model: nn.Module, state_dict: StateDict, source_name: str) -> None:
    family = getattr(model, "family", None)
    kind = detect_checkpoint(state_dict)
    if family is None or kind is None or kind.family == family:
        return
    raise CheckpointError(
        source_name,
        f"looks like a {kind.family} checkpoint ({kind.evidence}), but the model is "
        f"{type(model).__name__} (family {family!r})",
    )


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
