"""One processor per model family: preprocessing and its exact inverse, prompt checking and mapping, the decode
policy and the click loop. The weights choose their processor (``processor_config.json`` beside them); every entry
point (predictors, ``zoo predict``, the DataModules, the training and evaluation loops) calls it.

    import zoo
    from zoo.processors import processor_for

    model = zoo.create_model("sam_unet_r34")
    processor = processor_for(model)            # SamUNetProcessor: longest side 256, pad bottom/right, logits > 0
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from torch import nn

from zoo.models.base import config_from_dict
from zoo.processors.base import (
    PROCESSOR_CONFIG_NAME,
    ClickState,
    Decoded,
    DecodePolicy,
    ImageFrame,
    OriginalGridResult,
    Processor,
    ProcessorConfig,
    select_best_mask,
)
from zoo.processors.litemedsam import LiteMedSAMProcessor, LiteMedSAMProcessorConfig
from zoo.processors.longest_side import SamProcessor, SamProcessorConfig, SamUNetProcessor, SamUNetProcessorConfig
from zoo.processors.sam_med2d import SamMed2DProcessor, SamMed2DProcessorConfig
from zoo.processors.sam_med3d import SamMed3DProcessor, SamMed3DProcessorConfig

#: processor_type -> class, and model family -> the processor its released weights use.
PROCESSOR_TYPES: dict[str, type[Processor]] = {
    cls.processor_type: cls
    for cls in (SamMed3DProcessor, SamMed2DProcessor, SamProcessor, SamUNetProcessor, LiteMedSAMProcessor)
}
FAMILY_PROCESSORS: dict[str, type[Processor]] = {cls.family: cls for cls in PROCESSOR_TYPES.values()}

# Config fields a processor takes over from the model config when it is built for that model.
_FROM_MODEL_CONFIG = ("image_size", "pixel_mean", "pixel_std", "target_spacing_mm")


def processor_from_dict(content: dict[str, Any], source: str = "processor config") -> Processor:
    """Build a processor from ``processor_config.json`` content (``processor_type`` picks the class)."""
    kind = content.get("processor_type")
    if kind not in PROCESSOR_TYPES:
        known = ", ".join(sorted(PROCESSOR_TYPES))
        raise ValueError(f"{source}: unknown processor_type {kind!r}; known: {known}")
    cls = PROCESSOR_TYPES[kind]
    values = {key: value for key, value in content.items() if key != "processor_type"}
    try:
        config = config_from_dict(cls.config_class, values)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from exc
    return cls(config)


def processor_from_spec(spec: Processor | dict[str, Any] | str, **config: Any) -> Processor:
    """A processor from what a config file can hold: a processor, its config dict, or a processor type name
    (``"sam_med2d"``, ``"sam"``, ``"sam_unet"``, ``"litemedsam"``, ``"sam_med3d"``) with ``config`` fields."""
    if isinstance(spec, Processor):
        return spec
    if isinstance(spec, dict):
        return processor_from_dict({**spec, **config})
    if spec not in PROCESSOR_TYPES:
        raise ValueError(f"unknown processor {spec!r}; known: {', '.join(sorted(PROCESSOR_TYPES))}")
    cls = PROCESSOR_TYPES[spec]
    return cls(cls.config_class(**config))


def default_processor(model: nn.Module) -> Processor:
    """The processor the released weights of ``model``'s family use, sized to the model's config."""
    family = getattr(model, "family", None)
    if family not in FAMILY_PROCESSORS:
        raise ValueError(f"no processor for model family {family!r}; known families: {', '.join(FAMILY_PROCESSORS)}")
    cls = FAMILY_PROCESSORS[family]
    model_config = getattr(model, "config", None)
    overrides = {
        name: getattr(model_config, name)
        for name in _FROM_MODEL_CONFIG
        if hasattr(model_config, name) and name in cls.config_class.__dataclass_fields__
    }
    return cls(cls.config_class(**overrides))


def processor_for(model: nn.Module) -> Processor:
    """The processor that travels with ``model`` (its ``processor_config``), else its family's default.

    The processor is checked against the model (dimensionality and input size), so a processor config that does
    not fit the weights is refused here rather than producing wrong masks.
    """
    content = getattr(model, "processor_config", None)
    processor = processor_from_dict(content) if content else default_processor(model)
    processor.check_model(model)
    return processor


def load_processor(folder: str | Path) -> Processor:
    """The processor saved in a Hub-format folder (``processor_config.json``)."""
    path = Path(folder) / PROCESSOR_CONFIG_NAME
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{folder}: no {PROCESSOR_CONFIG_NAME} in this folder") from None
    return processor_from_dict(content, str(path))


def attach_default_processor(model: nn.Module) -> nn.Module:
    """Give ``model`` its family's default processor config (kept when one is already attached); returns it."""
    if getattr(model, "processor_config", None) is None and getattr(model, "family", None) in FAMILY_PROCESSORS:
        model.processor_config = default_processor(model).to_dict()
    return model


__all__ = [
    "FAMILY_PROCESSORS",
    "PROCESSOR_CONFIG_NAME",
    "PROCESSOR_TYPES",
    "ClickState",
    "DecodePolicy",
    "Decoded",
    "ImageFrame",
    "LiteMedSAMProcessor",
    "LiteMedSAMProcessorConfig",
    "OriginalGridResult",
    "Processor",
    "ProcessorConfig",
    "SamMed2DProcessor",
    "SamMed2DProcessorConfig",
    "SamMed3DProcessor",
    "SamMed3DProcessorConfig",
    "SamProcessor",
    "SamProcessorConfig",
    "SamUNetProcessor",
    "SamUNetProcessorConfig",
    "attach_default_processor",
    "default_processor",
    "load_processor",
    "processor_for",
    "processor_from_dict",
    "processor_from_spec",
    "select_best_mask",
]
