"""Find the model's state dict inside whatever an official checkpoint file holds."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from zoo.errors import CheckpointError
from zoo.hub.safe_load import read_checkpoint_file

#: Where the authors put the weights: SAM-Med3D under ``model_state_dict``, SAM-Med2D and SAM-UNet under
#: ``model``, Lightning under ``state_dict``. A bare state dict is used as is.
WRAPPER_KEYS = ("model_state_dict", "model", "state_dict")

#: Data-parallel training saves keys with this prefix when the wrapped model is saved.
DATA_PARALLEL_PREFIX = "module."

StateDict = dict[str, torch.Tensor]
CheckpointSource = str | Path | Mapping[str, Any]


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def extract_state_dict(checkpoint: Any, source: str) -> StateDict:
    """The tensors of the model in ``checkpoint`` (the loaded content of ``source``), ``module.`` prefix removed."""
    if not isinstance(checkpoint, Mapping):
        raise CheckpointError(source, f"holds a {type(checkpoint).__name__}, not a state dict or a dict containing one")
    if _is_state_dict(checkpoint):
        state_dict = checkpoint
    else:
        for key in WRAPPER_KEYS:
            if _is_state_dict(checkpoint.get(key)):
                state_dict = checkpoint[key]
                break
        else:
            top_level = ", ".join(repr(k) for k in list(checkpoint)[:10]) or "none"
            raise CheckpointError(
                source,
                "holds no state dict: expected a dict of tensors, or one under "
                f"{' / '.join(repr(k) for k in WRAPPER_KEYS)}; top-level keys: {top_level}",
            )
    return strip_prefix(dict(state_dict), DATA_PARALLEL_PREFIX)


def strip_prefix(state_dict: StateDict, prefix: str) -> StateDict:
    """Remove ``prefix`` from every key when every key has it (a partly prefixed dict is left alone)."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: value for key, value in state_dict.items()}
    return state_dict


def read_state_dict(source: CheckpointSource) -> tuple[StateDict, str]:
    """``(state_dict, source_name)`` from a checkpoint path or an in-memory checkpoint/state dict."""
    if isinstance(source, (str, Path)):
        return extract_state_dict(read_checkpoint_file(source), str(source)), str(source)
    name = "<state dict>"
    return extract_state_dict(source, name), name
