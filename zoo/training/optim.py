"""Which parameters train, and at which learning-rate multiple: glob patterns over parameter names."""

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn


@dataclass
class ParamGroup:
    """Parameters whose name matches ``pattern`` (``fnmatch`` glob) train at ``lr_scale`` x the base LR."""

    pattern: str
    lr_scale: float = 1.0


def set_trainable(model: nn.Module, freeze: Sequence[str] = (), unfreeze: Sequence[str] = ()) -> None:
    """Freeze parameters matching any ``freeze`` pattern, then re-enable those matching any ``unfreeze`` pattern.

    Raises if a pattern matches nothing, so a typo in a recipe cannot silently train the wrong parts.
    """
    names = [n for n, _ in model.named_parameters()]
    for pattern in [*freeze, *unfreeze]:
        if not fnmatch.filter(names, pattern):
            raise ValueError(f"parameter pattern {pattern!r} matches no parameter of {type(model).__name__}")
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in freeze):
            param.requires_grad_(False)
        if any(fnmatch.fnmatchcase(name, p) for p in unfreeze):
            param.requires_grad_(True)


def train_mode(model: nn.Module) -> None:
    """Training mode for the parts that learn, evaluation mode for every submodule whose parameters are all frozen
    (so a frozen encoder's BatchNorm keeps the statistics it was loaded with, and its dropout stays off)."""
    model.train()
    for module in model.modules():
        parameters = list(module.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            module.eval()


def param_groups(model: nn.Module, groups: Sequence[ParamGroup] = ()) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters; the first matching pattern decides the group.

    Each group carries ``lr_scale``; :func:`apply_lr_scales` turns it into the group's learning rate once the
    optimizer exists (the base LR lives in the optimizer's own arguments).
    """
    buckets: dict[float, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        scale = next((g.lr_scale for g in groups if fnmatch.fnmatchcase(name, g.pattern)), 1.0)
        buckets.setdefault(scale, []).append(param)
    if not buckets:
        raise ValueError(f"{type(model).__name__} has no trainable parameters")
    return [{"params": params, "lr_scale": scale} for scale, params in buckets.items()]


def apply_lr_scales(optimizer) -> None:
    """Multiply each parameter group's learning rate by its ``lr_scale``."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * group.get("lr_scale", 1.0)


def count_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
