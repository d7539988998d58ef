"""What every family's processor shares: the serialisable config, the prepared image frame, the decode policy (best
mask, binarisation, mask feedback) and the interactive click loop.

A processor owns everything between a user's image and prompts and the network, and between the network's
low-res logits and the mask on the user's grid:

* ``prepare(image, prompts)`` -> :class:`ImageFrame`: the model input and the exact map back;
* ``to_model_space(prompts, frame)``: the one prompt validator on the original grid, then the family's mapping;
* ``decode(model, encoding, prompts)``: prompt containers -> the model's keyword arguments -> one mask per prompt
  set, by the family's decode policy;
* ``segment(...)``: the family's inference rule for a whole prompt set (SAM-Med3D replays its points as clicks);
* ``to_original(low_res, frame)``: logits and the binary mask on the original grid;
* ``click(...)``: one step of the interactive loop (previous mask fed back as the family's authors feed it).

Its config is a small dataclass saved as ``processor_config.json`` beside the weights, so the weights choose
their processor.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import Tensor, nn

from zoo.errors import PromptError
from zoo.geometry.index_map import IndexMap
from zoo.prompts.simulate import boxes_from_masks
from zoo.prompts.components import bounding_boxes
from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts, Prompts
from zoo.prompts.validate import check_prompts

PROCESSOR_CONFIG_NAME = "processor_config.json"

Binarization = Literal["sigmoid", "logits"]
MaskFeedback = Literal["logits", "sigmoid"]
FirstMask = Literal["none", "zeros"]


@dataclass
class DecodePolicy:
    """How a family turns decoder outputs into one mask, and what it feeds back on the next click.

    Attributes:
        multimask_output: decode the three candidate masks and keep the one with the highest predicted IoU
            (SAM-Med2D's predictor, SAM); False decodes the single-mask token.
        binarize: ``"sigmoid"``: ``sigmoid(logits) > 0.5`` (SAM-Med3D, SAM-Med2D, LiteMedSAM); ``"logits"``:
            ``logits > 0`` (SAM, SAM-UNet). They differ where ``sigmoid`` rounds to exactly 0.5.
        mask_feedback: what the next click gets as mask prompt: the previous low-res ``"logits"`` (SAM,
            SAM-Med3D) or ``"sigmoid"`` probabilities (SAM-Med2D, which was trained on them).
        first_mask: the mask prompt of the first click: ``"none"`` (the model's no-mask embedding) or ``"zeros"``
            (SAM-Med3D's inference feeds all-zero logits).
    """

    multimask_output: bool = False
    binarize: Binarization = "sigmoid"
    mask_feedback: MaskFeedback = "logits"
    first_mask: FirstMask = "none"

    def __post_init__(self) -> None:
        for name, allowed in (
            ("binarize", ("sigmoid", "logits")),
            ("mask_feedback", ("logits", "sigmoid")),
            ("first_mask", ("none", "zeros")),
        ):
            if getattr(self, name) not in allowed:
                raise ValueError(f"decode policy {name} must be one of {allowed}, got {getattr(self, name)!r}")


@dataclass
class ProcessorConfig:
    """Base of every processor config: the processor type (its registry key), the model input size and the
    decode policy. Subclasses add the family's preprocessing fields."""

    processor_type: ClassVar[str]
    image_size: int
    decode: DecodePolicy = field(default_factory=DecodePolicy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready content of ``processor_config.json`` (tuples as lists)."""
        return json.loads(json.dumps({"processor_type": self.processor_type, **dataclasses.asdict(self)}))


class ImageFrame:
    """A preprocessed image and what maps results back to the user's grid.

    Attributes:
        model_input: ``C x *S`` float32 (no batch dimension).
        original_shape: the spatial shape of the user's image (2D ``H, W``; 3D the file's voxel order).
        to_model: continuous index map from the original grid to the model-input grid (prompts move with it).
        meta: what the processor's inverse needs beyond ``to_model`` (plain values and tensors).

    A plain class on purpose (not a dataclass): Lightning moves batches to the device by rebuilding collections and
    dataclasses, and a frame stays whole on the CPU, where the inverse maps are computed.
    """

    def __init__(
        self,
        model_input: Tensor,
        original_shape: Sequence[int],
        to_model: IndexMap,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.model_input = model_input
        self.original_shape = tuple(int(s) for s in original_shape)
        self.to_model = to_model
        self.meta = dict(meta or {})

    def __repr__(self) -> str:
        return (
            f"ImageFrame(model_input={tuple(self.model_input.shape)}, original_shape={self.original_shape}, "
            f"meta keys={sorted(self.meta)})"
        )


@dataclass
class Decoded:
    """One mask per prompt set, chosen by the decode policy.

    Attributes:
        low_res_logits: ``B x 1 x *low_res`` decoder logits (4x the embedding grid).
        iou_predictions: ``B x 1`` predicted IoU of each returned mask (None for models without an IoU head).
    """

    low_res_logits: Tensor
    iou_predictions: Tensor | None


@dataclass
class OriginalGridResult:
    """A decoded mask on the user's grid.

    Attributes:
        logits: float logits on the original grid (2D families resize logits; ``None`` for families that paste a
            binary mask back, SAM-Med3D).
        mask: bool mask on the original grid.
    """

    logits: Tensor | None
    mask: Tensor


@dataclass
class ClickState:
    """Where an interactive loop stands: the prompts so far (model grid), the last low-res logits and the mask prompt
    the next click gets (``None`` before the first click: then :meth:`Processor.first_mask` applies)."""

    points: PointPrompts | None = None
    boxes: BoxPrompts | None = None
    low_res_logits: Tensor | None = None
    next_mask: MaskPrompts | None = None


def select_best_mask(low_res_logits: Tensor, iou_predictions: Tensor) -> tuple[Tensor, Tensor]:
    """Keep, per prompt set, the mask with the highest predicted IoU (SAM-Med2D's predictor and ``test.py``, SAM).

    ``low_res_logits`` is ``B x M x *grid`` and ``iou_predictions`` ``B x M``; returns ``B x 1 x *grid`` and ``B x 1``.
    """
    best_iou, best_index = torch.max(iou_predictions, dim=1)
    rows = torch.arange(low_res_logits.shape[0], device=low_res_logits.device)
    return low_res_logits[rows, best_index].unsqueeze(1), best_iou.unsqueeze(1)


Decoder = Callable[..., Any]


class Processor:
    """Base class of the family processors (see the module docstring for the contract).

    Subclasses set the class attributes and implement :meth:`prepare`, :meth:`_map_prompts`,
    :meth:`model_kwargs` and :meth:`to_original`.
    """

    #: Registry key written as ``processor_type`` in ``processor_config.json``.
    processor_type: ClassVar[str]
    config_class: ClassVar[type[ProcessorConfig]]
    #: The model family whose weights this processor serves by default.
    family: ClassVar[str]
    #: Human-readable model name for messages.
    model_name: ClassVar[str]
    spatial_dims: ClassVar[int]
    #: Which of "points", "boxes", "masks" the model takes.
    prompt_kinds: ClassVar[frozenset[str]]

    def __init__(self, config: ProcessorConfig) -> None:
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config})"

    @property
    def policy(self) -> DecodePolicy:
        return self.config.decode

    @property
    def input_shape(self) -> tuple[int, ...]:
        return (int(self.config.image_size),) * self.spatial_dims

    # ------------------------------------------------------------------------------------------ saving
    def to_dict(self) -> dict[str, Any]:
        return self.config.to_dict()

    def save(self, folder: str | Path) -> Path:
        """Write ``processor_config.json`` into ``folder``; returns the file."""
        path = Path(folder) / PROCESSOR_CONFIG_NAME
        path.write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return path

    # ------------------------------------------------------------------------------------------ checks
    def check_model(self, model: nn.Module) -> None:
        """Refuse a model whose geometry this processor cannot serve (dimensionality, input size)."""
        dims = int(getattr(model, "spatial_dims", self.spatial_dims))
        if dims != self.spatial_dims:
            raise ValueError(
                f"{type(self).__name__} prepares {self.spatial_dims}D inputs but {type(model).__name__} is a "
                f"{dims}D model"
            )
        size = tuple(getattr(model, "input_size", self.input_shape))
        if size != self.input_shape:
            raise ValueError(
                f"the processor prepares {self.input_shape} inputs but {type(model).__name__} takes {size}; "
                "the processor config and the model config disagree"
            )

    def mask_prompt_shape(self, model: nn.Module | None = None) -> tuple[int, ...]:
        """The low-res grid of mask prompts and decoder logits (4x the embedding grid)."""
        if model is not None and hasattr(model, "mask_input_size"):
            return tuple(model.mask_input_size)
        return self.default_mask_prompt_shape()

    def default_mask_prompt_shape(self) -> tuple[int, ...]:
        return tuple(s // 4 for s in self.input_shape)

    # ------------------------------------------------------------------------------------------ image side
    def prepare(self, image: Any, prompts: Prompts | None = None, source: str = "image") -> ImageFrame:
        """The model input for ``image`` (and, for models that crop around the object, its prompts)."""
        raise NotImplementedError

    # ------------------------------------------------------------------------------------------ prompts
    def validate(self, prompts: Prompts, shape: Sequence[int], source: str | None = None) -> None:
        """The one validator (:func:`zoo.prompts.validate.check_prompts`) with this family's supported kinds.

        A mask prompt's low-res shape is the model's (4x its embedding grid, which the processor config does not
        know: a model with another patch size has another grid); :meth:`decode` checks it against the model."""
        check_prompts(prompts, shape, self.prompt_kinds, self.model_name, None, source)

    def to_model_space(self, prompts: Prompts, frame: ImageFrame, source: str | None = None) -> Prompts:
        """Check prompts given on the original grid, then move them onto the model-input grid."""
        self.validate(prompts, frame.original_shape, source)
        return self._map_prompts(prompts, frame)

    def _map_prompts(self, prompts: Prompts, frame: ImageFrame) -> Prompts:
        """The family's prompt mapping (default: the frame's index map, boxes through their corners)."""
        return Prompts(
            None if prompts.points is None else prompts.points.mapped(frame.to_model),
            None if prompts.boxes is None else map_box_corners(prompts.boxes, frame.to_model),
            prompts.masks,
        )

    def model_kwargs(self, prompts: Prompts) -> dict[str, Any]:
        """``points``/``boxes``/``masks`` keyword arguments for ``model.decode`` from model-grid containers."""
        raise NotImplementedError

    def boxes_from_masks(
        self, masks: Tensor, jitter: str = "none", generator: torch.Generator | None = None
    ) -> BoxPrompts:
        """Box prompts from ``B x *spatial`` masks as this family's authors derive them (training jitter when
        asked): SAM-Med2D's and SAM-UNet's ``get_boxes_from_mask``, around the largest component, ``hi`` one past
        the last index."""
        return boxes_from_masks(masks, jitter, generator)

    def target_boxes(
        self,
        masks: Tensor,
        jitter: str = "none",
        generator: torch.Generator | None = None,
        frames: Sequence[ImageFrame] | None = None,
        original_masks: Sequence[Tensor] | None = None,
    ) -> BoxPrompts:
        """Box prompts of training and evaluation targets (``B x *spatial`` masks on the model grid; each target's
        frame and original-grid mask when the batch has them), where the family's authors derive them.

        Default: from the model-grid masks (:meth:`boxes_from_masks`; SAM-Med2D's ``train.py`` and ``test.py`` box
        the 256 x 256 mask). Families whose authors box the original mask and scale the box override this.
        """
        return self.boxes_from_masks(masks, jitter, generator)

    def box_from_previous_mask(self, mask: Tensor, frame: ImageFrame, margin: int = 3) -> BoxPrompts | None:
        """Slice propagation's box for the next slice from the previous slice's mask (``H x W`` bool on the original
        grid), on the model grid of ``frame``; None when the mask is empty (the caller falls back to its first box).

        Default: the tight box of the mask in original pixels (``hi`` one past the last pixel), grown by ``margin``
        pixels, clipped to the image, then mapped like a user box. Families whose authors propagate boxes their own
        way override this (LiteMedSAM).
        """
        foreground = mask.detach().reshape(frame.original_shape).to(torch.bool).cpu()
        if not bool(foreground.any()):
            return None
        lo, hi, _ = bounding_boxes(foreground[None])
        size = torch.tensor(frame.original_shape, dtype=torch.int64)
        lo = (lo - margin).clamp(min=0).to(torch.float32)
        hi = torch.minimum(hi + margin, size).to(torch.float32)
        boxes = BoxPrompts(lo, hi, torch.ones(1, dtype=torch.bool), frame.original_shape)
        mapped = self.to_model_space(Prompts(boxes=boxes), frame).boxes
        assert mapped is not None
        return mapped

    # ------------------------------------------------------------------------------------------ decoding
    def decode(
        self, model: nn.Module, encoding: Any, prompts: Prompts, decoder: Decoder | None = None
    ) -> Decoded:
        """Decode one mask per prompt set by this family's policy (multimask + best predicted IoU, or single)."""
        if prompts.masks is not None and prompts.masks.spatial_shape != self.mask_prompt_shape(model):
            raise PromptError(
                f"a mask prompt for {self.model_name} is {self.mask_prompt_shape(model)} low-res logits, "
                f"got {prompts.masks.spatial_shape}"
            )
        decode = decoder if decoder is not None else model.decode
        out = decode(encoding, **self.model_kwargs(prompts), multimask_output=self.policy.multimask_output)
        low_res, iou = out.low_res_logits.float(), out.iou_predictions
        iou = None if iou is None else iou.float()
        if self.policy.multimask_output and low_res.shape[1] > 1:
            low_res, iou = select_best_mask(low_res, iou)
        elif low_res.shape[1] > 1 or (iou is not None and iou.shape[1] > 1):
            low_res, iou = low_res[:, :1], None if iou is None else iou[:, :1]
        return Decoded(low_res, iou)

    def binarize(self, logits: Tensor) -> Tensor:
        """The family's threshold: ``sigmoid(logits) > 0.5`` or ``logits > 0``."""
        if self.policy.binarize == "sigmoid":
            return torch.sigmoid(logits) > 0.5
        return logits > 0

    def feedback(self, low_res_logits: Tensor) -> MaskPrompts:
        """The mask prompt of the next click from the previous low-res logits, as the family's authors feed it."""
        logits = low_res_logits.float()
        return MaskPrompts(torch.sigmoid(logits) if self.policy.mask_feedback == "sigmoid" else logits)

    def first_mask(self, batch_size: int, model: nn.Module, device: torch.device | str) -> MaskPrompts | None:
        """The mask prompt of a first click: None, or all-zero logits (SAM-Med3D)."""
        if self.policy.first_mask == "zeros":
            return MaskPrompts.zeros(batch_size, self.mask_prompt_shape(model), device)
        return None

    # ------------------------------------------------------------------------------------------ the click loop
    def click(
        self,
        model: nn.Module,
        encoding: Any,
        state: ClickState,
        points: PointPrompts | None = None,
        boxes: BoxPrompts | None = None,
        decoder: Decoder | None = None,
        use_mask_feedback: bool = True,
    ) -> tuple[ClickState, Decoded]:
        """One interactive step: add ``points`` to the clicks so far (``boxes`` replace the box), feed the previous
        mask back as this family does (the first click gets :meth:`first_mask`), decode.

        Every interactive path (predictors, ``zoo predict``'s click replay, evaluation protocols) calls this.
        """
        clicks = state.points
        if points is not None:
            clicks = points if clicks is None else clicks.cat(points)
        box = boxes if boxes is not None else state.boxes
        located = clicks if clicks is not None else box
        batch = located.batch_size if located is not None else 1
        if not use_mask_feedback:
            masks = None
        elif state.low_res_logits is None and state.next_mask is None:
            masks = self.first_mask(batch, model, _device_of(model))
        else:
            masks = state.next_mask
        decoded = self.decode(model, encoding, Prompts(clicks, box, masks), decoder)
        next_mask = self.feedback(decoded.low_res_logits)
        return ClickState(clicks, box, decoded.low_res_logits, next_mask), decoded

    def segment(
        self, model: nn.Module, encoding: Any, prompts: Prompts, decoder: Decoder | None = None
    ) -> Decoded:
        """The family's inference rule for a whole prompt set on the model grid (default: one decoder pass)."""
        return self.decode(model, encoding, prompts, decoder)

    # ------------------------------------------------------------------------------------------ back to the user
    def upsample(self, low_res_logits: Tensor) -> Tensor:
        """Low-res logits to the model-input grid (``B x 1 x *S``), as the family's training and test code do."""
        raise NotImplementedError

    def to_original(self, low_res_logits: Tensor, frame: ImageFrame) -> OriginalGridResult:
        """One prompt set's ``1 x 1 x *low_res`` logits to logits and mask on the original grid."""
        raise NotImplementedError


def map_box_corners(boxes: BoxPrompts, index_map: IndexMap) -> BoxPrompts:
    """Move boxes by mapping their two corners as coordinates, as SAM's ``apply_boxes`` scales ``(x0, y0, x1, y1)``
    (not through their edges: for a stretch the two differ by half a pixel times the scale change)."""
    index_map.check_source_grid(boxes.spatial_shape, "boxes")
    corners = torch.stack([boxes.lo, boxes.hi], dim=1)
    moved = index_map.map_coords(corners).to(torch.float32)
    valid = boxes.valid[:, None]
    lo = torch.where(valid, moved[:, 0], 0.0)
    hi = torch.where(valid, moved[:, 1], 0.0)
    return BoxPrompts(lo, hi, boxes.valid, index_map.dst_shape)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
