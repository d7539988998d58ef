"""Base class of every zoo model: a plain ``nn.Module`` with Hugging Face Hub save/load.

Keep ``from __future__ import annotations`` out of modules that define subclasses: the Hub mixin decodes
``config.json`` through the real annotation of ``__init__(self, config: <Dataclass>)`` (checked at class creation).
"""

import dataclasses
from dataclasses import dataclass
import inspect
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, ClassVar

from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin, hf_hub_download
from huggingface_hub.constants import SAFETENSORS_SINGLE_FILE
from torch import Tensor, nn

from zoo.errors import CheckpointError
from zoo.models.loading import load_state_dict_strictly
from zoo.models.outputs import MaskPrediction

LIBRARY_NAME = "promptable-medseg-zoo"
#: The processor config file beside ``config.json`` and ``model.safetensors`` in a Hub folder.
PROCESSOR_CONFIG_NAME = "processor_config.json"

MODEL_CARD_TEMPLATE = """---
{{ card_data }}
---

# {{ title }}

{{ model_class }} (family `{{ family }}`) for promptable medical image segmentation, packaged with
`{{ library_name }}`.
{% if model_name %}
- **Model:** `{{ model_name }}`
{%- endif %}
- **Paper:** {{ paper_url | default("unknown", true) }}
- **Original code:** {{ repo_url | default("unknown", true) }}
- **Licence:** {{ license | default("unknown", true) }}{% if license_note %} ({{ license_note }}){% endif %}

## Weights

{% if source_file -%}
{% if init_report %}Initialised{% else %}Converted{% endif %} from `{{ source_file }}` (sha256 `{{ source_sha256 }}`).
{%- if source_url %} The authors publish a file of this name at {{ source_url }}.{% endif %}
{%- else -%}
Saved from a zoo model, not converted from an official file.
{%- endif %}
{%- if config_overrides %}

Config fields changed from the released `{{ model_name }}`: `{{ config_overrides }}`.
{%- endif %}
{%- if init_report %}

What the initialisation did (nothing else was changed):

```
{{ init_report }}
```
{%- endif %}

## Usage

```python
import zoo

model = zoo.from_pretrained("{{ repo_id | default("<path or repo id>", true) }}")
```
{%- if input_spec %}

## Input the weights expect
{% for key, value in input_spec.items() %}
- **{{ key }}:** {{ value }}
{%- endfor %}
{%- if prompt_types %}
- **prompt types:** {{ prompt_types | join(", ") }}
{%- endif %}
{%- endif %}

## Configuration

```json
{{ config_json }}
```
"""


class PromptableSegmenter(
    nn.Module,
    PyTorchModelHubMixin,
    library_name=LIBRARY_NAME,
    tags=["medical-imaging", "image-segmentation", "promptable-segmentation", "segment-anything"],
    pipeline_tag="image-segmentation",
    model_card_template=MODEL_CARD_TEMPLATE,
):
    """A promptable segmentation network built from one config dataclass.

    Subclasses define ``family`` and take ``config`` (a dataclass whose ``family`` field equals the class's)
    as the only constructor argument, so ``config.json`` written by ``save_pretrained`` records the family
    and ``zoo.from_pretrained`` can pick the class. Loading is strict: every key of the model must be in
    ``model.safetensors`` with the same shape, and nothing else may be.
    """

    family: ClassVar[str]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        annotation = inspect.signature(cls.__init__).parameters.get("config")
        if annotation is not None and isinstance(annotation.annotation, str):
            raise TypeError(
                f"{cls.__qualname__}.__init__'s `config` annotation is the string {annotation.annotation!r}: remove "
                "`from __future__ import annotations` from its module so the Hub mixin can rebuild the config"
            )

    def __init__(self, config: Any) -> None:
        super().__init__()
        if getattr(config, "family", self.family) != self.family:
            raise ValueError(f"{type(self).__name__} needs a {self.family!r} config, got family {config.family!r}")
        self.config = config

    # ----------------------------------------------------------------------------------------------- forward
    # Every family implements the same four calls, so no caller needs to know a family's parts:
    # ``encode_image`` once per image, then per prompt set ``embed_prompts`` + ``decode_embeddings``
    # (or ``decode``, which is both).

    @property
    def spatial_dims(self) -> int:
        """2 for image models, 3 for volume models."""
        return int(self.prompt_encoder.spatial_dims)

    @property
    def input_size(self) -> tuple[int, ...]:
        """The spatial size of the model input (``image_size`` along every axis)."""
        return (int(self.config.image_size),) * self.spatial_dims

    @property
    def mask_input_size(self) -> tuple[int, ...]:
        """The spatial size of mask prompts and of the decoder's low-res logits (4x the embedding grid)."""
        return tuple(int(s) for s in self.prompt_encoder.mask_input_size)

    def encode_image(self, images: Tensor) -> Any:
        """The prompt-independent image side (compute once per image, decode many prompt sets)."""
        raise NotImplementedError

    def image_side_parameters(self) -> list[nn.Parameter]:
        """The parameters :meth:`encode_image` uses (the image encoder; SAM-UNet adds its convolutional branch)."""
        return list(self.image_encoder.parameters())

    def embed_prompts(
        self,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sparse and dense prompt embeddings (model-input coordinates)."""
        return self.prompt_encoder(points=points, boxes=boxes, masks=masks)

    def decode_embeddings(
        self, encoding: Any, sparse: Tensor, dense: Tensor, multimask_output: bool = False
    ) -> MaskPrediction:
        """The mask decoder on an image encoding and prompt embeddings."""
        raise NotImplementedError

    def decode(
        self,
        encoding: Any,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        multimask_output: bool = False,
    ) -> MaskPrediction:
        """Prompt encoder + mask decoder on what :meth:`encode_image` returned."""
        sparse, dense = self.embed_prompts(points, boxes, masks)
        return self.decode_embeddings(encoding, sparse, dense, multimask_output)

    def forward(
        self,
        images: Tensor,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        multimask_output: bool = False,
    ) -> MaskPrediction:
        """Encode ``images`` and decode one prompt set per image (or several prompt sets for one image)."""
        return self.decode(self.encode_image(images), points, boxes, masks, multimask_output)

    def set_activation_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the image encoder's block activations in the backward pass instead of keeping them (less
        memory, about one more encoder forward per step); no effect on results or on inference."""
        encoders = [m for m in self.modules() if hasattr(m, "checkpoint_blocks")]
        if not encoders:
            raise ValueError(f"{type(self).__name__}'s image encoder has no activation checkpointing")
        for encoder in encoders:
            encoder.checkpoint_blocks = enabled

    # ------------------------------------------------------------------------------------------------ saving

    def hub_config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the config's fields plus ``family``."""
        return {**dataclasses.asdict(self.config), "family": self.family}

    #: The processor config (plain JSON data) that travels with the weights: set by ``zoo.create_model``,
    #: ``zoo.from_pretrained`` and the converter, written as ``processor_config.json`` by :meth:`save_pretrained`.
    #: ``zoo.processors.processor_for(model)`` builds the processor from it (or the family's default when None).
    processor_config: dict[str, Any] | None = None
    #: Where the weights came from (a Hub folder or repo, an authors' file, a training run); None means the random
    #: initialisation of the constructor, which the predictors and ``zoo predict`` say out loud.
    weights_origin: str | None = None

    def save_pretrained(self, save_directory: str | Path, *, config: Any = None, **kwargs: Any) -> str | None:
        """Write ``config.json`` (with ``family``), ``model.safetensors``, a ``README.md`` model card and, when the
        model carries one, ``processor_config.json``."""
        result = super().save_pretrained(save_directory, config=self.hub_config() if config is None else config, **kwargs)
        if self.processor_config is not None:
            text = json.dumps(self.processor_config, indent=2, sort_keys=True) + "\n"
            (Path(save_directory) / PROCESSOR_CONFIG_NAME).write_text(text, encoding="utf-8")
        return result

    def generate_model_card(self, *args: Any, **kwargs: Any) -> ModelCard:
        """The model card; ``kwargs`` (e.g. ``source_file``, ``source_sha256``, ``model_name``) fill the template."""
        info = self._hub_mixin_info
        card_data = ModelCardData(**info.model_card_data.to_dict())
        if kwargs.get("license"):
            card_data.license = kwargs["license"]
        fields: dict[str, Any] = {
            "title": kwargs.get("title") or kwargs.get("model_name") or f"{type(self).__name__} ({self.family})",
            "model_class": type(self).__name__,
            "family": self.family,
            "repo_url": info.repo_url,
            "paper_url": info.paper_url,
            "config_json": json.dumps(self.hub_config(), indent=2, sort_keys=True),
        }
        fields.update({key: value for key, value in kwargs.items() if value is not None})
        return ModelCard.from_template(card_data=card_data, template_str=info.model_card_template, **fields)

    # ----------------------------------------------------------------------------------------------- loading

    @classmethod
    def _decode_arg(cls, expected_type: Any, value: Any) -> Any:
        if dataclasses.is_dataclass(expected_type) and isinstance(value, dict):
            return config_from_dict(expected_type, value, family=cls.family)
        return super()._decode_arg(expected_type, value)

    @classmethod
    def _from_pretrained(
        cls,
        *,
        model_id: str,
        revision: str | None,
        cache_dir: str | Path | None,
        force_download: bool,
        local_files_only: bool,
        token: str | bool | None,
        map_location: str = "cpu",
        strict: bool = True,
        **model_kwargs: Any,
    ) -> "PromptableSegmenter":
        """Build the model from its config and load ``model.safetensors`` (strictly unless ``strict=False``)."""
        from safetensors.torch import load_file

        model = cls(**model_kwargs)
        download = HubFile(revision, cache_dir, force_download, token, local_files_only)
        weights_file = download(model_id, SAFETENSORS_SINGLE_FILE)
        if weights_file is None:
            raise FileNotFoundError(f"{model_id}: no {SAFETENSORS_SINGLE_FILE} in this folder")
        state_dict = load_file(weights_file, device="cpu")
        if strict:
            load_state_dict_strictly(model, state_dict, weights_file)
        else:
            model.load_state_dict(state_dict, strict=False)
        model.processor_config = read_processor_config(model_id, download)
        model.weights_origin = str(model_id)
        return model.to(map_location).eval()


@dataclass(frozen=True)
class HubFile:
    """Finds one file of a Hub-format folder or Hub repo with the caller's download options."""

    revision: str | None = None
    cache_dir: str | Path | None = None
    force_download: bool = False
    token: str | bool | None = None
    local_files_only: bool = False

    def __call__(self, model_id: str, filename: str, optional: bool = False) -> str | None:
        """The local path of ``filename``; None when a folder lacks it (or, with ``optional``, a repo lacks it)."""
        if os.path.isdir(model_id):
            path = os.path.join(model_id, filename)
            return path if os.path.isfile(path) else None
        from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

        try:
            return hf_hub_download(
                repo_id=model_id,
                filename=filename,
                revision=self.revision,
                cache_dir=self.cache_dir,
                force_download=self.force_download,
                token=self.token,
                local_files_only=self.local_files_only,
            )
        except (EntryNotFoundError, LocalEntryNotFoundError):
            if optional:
                return None
            raise


def read_processor_config(model_id: str, download: HubFile | None = None) -> dict[str, Any] | None:
    """``processor_config.json`` of a Hub folder or repo as a dict, or None when it has none."""
    found = (download or HubFile())(str(model_id), PROCESSOR_CONFIG_NAME, optional=True)
    if found is None:
        return None
    path = Path(found)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise CheckpointError(str(path), f"cannot parse {PROCESSOR_CONFIG_NAME} ({exc})") from exc
    if not isinstance(content, dict):
        raise CheckpointError(str(path), f"{PROCESSOR_CONFIG_NAME} must hold a JSON object")
    return content


def config_from_dict(config_class: type, values: dict[str, Any], family: str | None = None) -> Any:
    """Rebuild a config dataclass from ``config.json`` content.

    JSON has no tuples, so list values of tuple-typed fields become tuples again (nested dataclasses are rebuilt
    the same way). ``family`` must match; any other key the dataclass does not know is an error, not dropped.
    """
    known = {f.name: f for f in dataclasses.fields(config_class)}
    hints = typing.get_type_hints(config_class)
    if family is not None and values.get("family", family) != family:
        raise ValueError(f"config.json is for family {values['family']!r}, not {family!r}")
    unknown = sorted(set(values) - set(known) - {"family"})
    if unknown:
        raise ValueError(f"config.json has fields {config_class.__name__} does not know: {', '.join(unknown)}")
    kwargs = {name: _restore_type(hints.get(name), value) for name, value in values.items() if name in known}
    return config_class(**kwargs)


def _restore_type(annotation: Any, value: Any) -> Any:
    if annotation is None:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(annotation):
            if option is not type(None) and value is not None:
                return _restore_type(option, value)
        return value
    if dataclasses.is_dataclass(annotation) and isinstance(value, dict):
        return config_from_dict(annotation, value)
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(annotation)
        item_types = [args[0]] * len(value) if len(args) == 2 and args[1] is Ellipsis else list(args)
        if len(item_types) == len(value):
            return tuple(_restore_type(t, v) for t, v in zip(item_types, value))
        return tuple(value)
    return value
