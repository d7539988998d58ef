"""Load the authors' checkpoints into zoo models, strictly, with errors that say what is wrong."""

from __future__ import annotations

from torch import nn

from zoo.errors import CheckpointError
from zoo.hub.fingerprint import detect_checkpoint, is_plain_sam
from zoo.hub.state_dict import CheckpointSource, StateDict, read_state_dict
from zoo.models.loading import load_state_dict_strictly, state_dict_mismatches

__all__ = ["load_official_state_dict", "load_official_weights", "load_state_dict_strictly", "state_dict_mismatches"]


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
    if _is_sam_for_adapter_model(model, state_dict):
        problems = "; ".join(state_dict_mismatches(model.state_dict(), state_dict))
        raise CheckpointError(
            source_name,
            f"does not fit {type(model).__name__}: {problems}. It looks like SAM without SAM-Med2D's adapters: to "
            "initialise SAM-Med2D from it, use zoo.hub.init_from_sam(model, source) or "
            "`zoo convert SRC DST --model sam_med2d_b`",
        )
    _refuse_other_family(model, state_dict, source_name)
    adapt = getattr(model, "adapt_official_state_dict", None)
    if callable(adapt):
        state_dict = adapt(state_dict)
    load_state_dict_strictly(model, state_dict, source_name)
    model.weights_origin = source_name
    return model


def _is_sam_for_adapter_model(model: nn.Module, state_dict: StateDict) -> bool:
    wants_adapters = any(".Adapter." in key for key in model.state_dict())
    return wants_adapters and is_plain_sam(state_dict)


#: Families that share one network layout (SAM's ViT, prompt encoder and decoder); adapters or not is then a
#: matter of keys, which the strict load reports.
_SAME_LAYOUT = {"sam": "sam_2d", "sam_med2d": "sam_2d"}


def _refuse_other_family(model: nn.Module, state_dict: StateDict, source_name: str) -> None:
    family = getattr(model, "family", None)
    kind = detect_checkpoint(state_dict)
    if family is None or kind is None or kind.family == family:
        return
    if _SAME_LAYOUT.get(kind.family, kind.family) == _SAME_LAYOUT.get(family, family):
        return
    raise CheckpointError(
        source_name,
        f"looks like a {kind.family} checkpoint ({kind.evidence}), but the model is "
        f"{type(model).__name__} (family {family!r})",
    )
