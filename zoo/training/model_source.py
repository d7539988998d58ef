"""Where a run's network comes from: a registry name, a Hub folder or repo id, or an authors' checkpoint file."""

from pathlib import Path
from typing import Any

import torch
from torch import nn

import zoo
from zoo.hub import init_from_sam, load_official_weights

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")


def build_model(
    name: str,
    overrides: dict[str, Any] | None = None,
    weights: str | None = None,
    sam_init: str | None = None,
    resnet_init: str | None = None,
) -> nn.Module:
    """Build ``name`` with config ``overrides``, then take its weights from ``weights`` or ``sam_init``.

    ``weights``: a Hub-format folder or repo id (``zoo.from_pretrained``; its config wins and ``overrides`` must be
    empty), or an authors' checkpoint file loaded strictly through the converter. ``sam_init``: a SAM ViT-B
    checkpoint file to initialise from the way SAM-Med2D and SAM-UNet do (position tables resized, new parts
    left at their initialisation). ``resnet_init``: with ``sam_init``, the ImageNet ResNet state dict file for
    SAM-UNet's convolutional branch (a local file; nothing is downloaded).
    """
    if weights is not None and sam_init is not None:
        raise ValueError("give either weights (a trained model) or sam_init (an initialisation), not both")
    if weights is not None and not is_checkpoint_file(weights):
        if overrides:
            raise ValueError(f"model_overrides {sorted(overrides)} cannot change a pretrained Hub model ({weights})")
        return zoo.from_pretrained(weights)
    model = zoo.create_model(name, **(overrides or {}))
    if weights is not None:
        load_official_weights(model, weights)
    if resnet_init is not None and (sam_init is None or getattr(model, "family", None) != "sam_unet"):
        raise ValueError("resnet_init is SAM-UNet's initialisation and goes together with sam_init")
    if sam_init is not None and resnet_init is not None:
        from zoo.hub.sam_unet_init import init_sam_unet

        init_sam_unet(model, sam_init, resnet_init)
    elif sam_init is not None:
        init_from_sam(model, sam_init)
    return model


def model_skeleton(name: str, overrides: dict[str, Any] | None = None, weights: str | None = None) -> nn.Module | None:
    """The network :func:`build_model` would build, on the meta device (shapes only, no memory, nothing read).

    ``None`` when the architecture is not known without reading files (``weights`` is a Hub folder or repo id, whose
    config.json decides it) or the model cannot be built on the meta device; callers then check the real model.
    """
    if weights is not None and not is_checkpoint_file(weights):
        return None
    try:
        with torch.device("meta"):
            return zoo.create_model(name, **(overrides or {}))
    except Exception:  # a bad name or config fails again, with its own message, when the real model is built
        return None


def model_processor_source(name: str, overrides: dict[str, Any] | None = None, weights: str | None = None) -> Any:
    """What decides the processor of a run's network, known without reading weights: a Hub folder or repo's
    description (family, config, ``processor_config.json``), otherwise the meta-device skeleton."""
    if weights is not None and not is_checkpoint_file(weights):
        from zoo.hub.pretrained import hub_model_description

        return hub_model_description(weights)
    skeleton = model_skeleton(name, overrides, weights)
    if skeleton is None:
        with torch.device("meta"):
            skeleton = zoo.create_model(name, **(overrides or {}))
    return skeleton


def is_checkpoint_file(source: str) -> bool:
    """Whether ``source`` names a checkpoint file (by suffix) rather than a Hub folder or repo id."""
    return Path(source).suffix in CHECKPOINT_SUFFIXES and not Path(source).is_dir()
