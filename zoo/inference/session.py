"""An interactive session on one image: its cached embedding(s), the prompts so far and the current mask.

Every click goes through the model's processor and its one click loop (:meth:`zoo.processors.Processor.click` with
a :class:`~zoo.processors.ClickState`): the new point is added to the clicks so far and the previous mask is fed
back as the family's authors feed it, so a click costs the prompt encoder and mask decoder only. For SAM-Med3D a
click outside the current crop moves the crop around all the clicks (encoded once per crop position) and the
clicks are replayed there, as its authors' inference replays them; with ``large_object="follow_mask"`` the mask
may spread over further crops (:mod:`zoo.inference.large_objects`).

    session = Session(zoo.from_pretrained("litemedsam"), read_image("slice.png"))
    session.add_box([150, 230, 230, 300])
    session.add_click([190, 265])                 # (x, y) pixels; positive=False for a background click
    session.undo()
    mask = session.result().mask                  # on the image's own grid
    session.save("my_session")                    # JSON + safetensors; Session.open("my_session", model, image)

3D clicks are voxel indices ``(i, j, k)`` of the file, or world millimetres with ``space="world"`` (RAS) or
``space="world_lps"`` (LPS).
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.errors import DataError, PromptError
from zoo.inference.large_objects import LargeObjects, crop_start, follow_mask
from zoo.inference.predictor import Predictor, _inside
from zoo.io.coordinates import SPACES, world_to_voxel
from zoo.io.masks import MaskSet
from zoo.io.png import read_image
from zoo.io.session_files import file_sha256, read_session, write_session
from zoo.models.components.layers import image_embedding_layout
from zoo.processors import ClickState, ImageFrame, Processor
from zoo.prompts.types import PointPrompts, Prompts
from zoo.prompts.validate import boxes_from_user, check_kinds, points_from_user


@dataclass(frozen=True)
class Action:
    """One prompt of a session as the user gave it (original grid): a click ``(x, y)`` (2D) or ``(i, j, k)``
    voxel indices (3D, after any world conversion), or a box ``(x0, y0, x1, y1)``."""

    kind: str
    coords: tuple[float, ...]
    positive: bool = True


@dataclass
class SessionResult:
    """The session's current mask on the image's own grid.

    Attributes:
        mask: bool mask (2D ``H x W``; 3D the file's voxel order); empty before the first prompt.
        logits: 2D: logits at the image's size; None for 3D (a binary crop mask is pasted back).
        iou_prediction: the model's predicted IoU of the mask (None without an IoU head or before a prompt).
        prompts: how many prompts (clicks and boxes) made it.
        strategy, crops, complete: 3D: the large-object strategy that ran, its crops (first voxel on the resampled
            grid) and whether it finished below its size limit.
        seconds: how long the last prompt took (decoder, any new encoding, the way back to the original grid).
    """

    mask: Tensor
    logits: Tensor | None = None
    iou_prediction: float | None = None
    prompts: int = 0
    strategy: str | None = None
    crops: list[tuple[int, int, int]] = field(default_factory=list)
    complete: bool = True
    seconds: float = 0.0


@dataclass
class _Step:
    action: Action
    crop: tuple[int, int, int] | None  # 3D: the crop the click loop ran in
    state: ClickState
    iou: float | None


class Session:
    """Interactive segmentation of one image (see the module docstring).

    Args:
        model: any zoo model.
        image: 2D: an ``H x W x 3`` uint8 array or a PNG/JPEG path; 3D: a NIfTI path or a ``Volume``.
        processor: the model's processor (default: the one its weights bring).
        large_object: 3D: ``"single_crop"`` (the authors', default) or ``"follow_mask"`` / ``LargeObjects``.
        precision: ``"fp32"`` (exact), ``"bf16"`` or ``"auto"`` for the image encoder.
    """

    def __init__(
        self,
        model: nn.Module,
        image: Any,
        processor: Processor | None = None,
        large_object: str | LargeObjects | None = None,
        precision: str = "fp32",
        source: str | None = None,
        _features: Any = None,
        _crops: dict[tuple[int, int, int], Any] | None = None,
    ) -> None:
        self.predictor = Predictor(model, processor, precision=precision, large_object=large_object)
        self.model, self.processor = self.predictor.model, self.predictor.processor
        self.image_path: Path | None = None
        if self.processor.spatial_dims == 2 and isinstance(image, (str, Path)):
            self.image_path, image = Path(image), read_image(image)
        elif self.processor.spatial_dims == 3:
            self.image_path = Path(image) if isinstance(image, (str, Path)) else getattr(image, "path", None)
        self.predictor.set_image(image, source or (str(self.image_path) if self.image_path else None), _features)
        for start, features in (_crops or {}).items():
            frame = self.processor.prepare_window(self.predictor.image, start, self.predictor.source)
            self.predictor.crop_cache[start] = (frame, features)
        self._steps: list[_Step] = []
        self._result: SessionResult | None = None

    # ------------------------------------------------------------------------------------------ prompts
    @property
    def actions(self) -> list[Action]:
        """The prompts so far, in order."""
        return [step.action for step in self._steps]

    @property
    def shape(self) -> tuple[int, ...]:
        """The image's own grid."""
        return self.predictor.original_shape

    @torch.inference_mode()
    def add_click(self, point: Any, positive: bool = True, space: str = "voxel") -> SessionResult:
        """Add a foreground (``positive``) or background click and return the new mask.

        ``point``: ``(x, y)`` pixels (2D) or ``(i, j, k)`` voxel indices of the file (3D); ``space="world"`` or
        ``"world_lps"`` for 3D points in millimetres.
        """
        coords = np.asarray(point, dtype=np.float64).reshape(-1)
        if space not in SPACES and space != "pixel":
            raise PromptError(f"unknown coordinate space {space!r}; expected one of {SPACES}", self.predictor.source)
        if space in ("world", "world_lps"):
            if self.processor.spatial_dims != 3:
                raise PromptError("2D images have no world coordinates; give pixels (x, y)", self.predictor.source)
            coords = world_to_voxel(coords.reshape(1, 3), self.predictor.image.affine, space)[0]
        return self._apply(Action("click", tuple(float(c) for c in coords), bool(positive)))

    @torch.inference_mode()
    def add_box(self, box: Any) -> SessionResult:
        """Set the box ``(x0, y0, x1, y1)`` in pixels (2D models that take boxes); it replaces an earlier box and
        keeps the clicks."""
        check_kinds({"boxes"}, self.processor.prompt_kinds, self.processor.model_name, self.predictor.source)
        values = np.asarray(box, dtype=np.float64).reshape(-1)
        return self._apply(Action("box", tuple(float(v) for v in values)))

    def undo(self) -> SessionResult:
        """Remove the last prompt; returns the mask before it."""
        if not self._steps:
            raise PromptError("nothing to undo: the session has no prompt", self.predictor.source)
        started = time.perf_counter()
        self._steps.pop()
        self._result = None
        return dataclasses.replace(self.result(), seconds=time.perf_counter() - started)

    def reset(self) -> None:
        """Forget every prompt (the cached embeddings stay)."""
        self._steps = []
        self._result = None

    def result(self) -> SessionResult:
        """The current mask on the image's own grid."""
        if self._result is None:
            self._result = self._compute_result()
        return self._result

    # ------------------------------------------------------------------------------------------ the loop
    def _apply(self, action: Action) -> SessionResult:
        started = time.perf_counter()
        step = self._step(action, self._steps)
        self._steps.append(step)
        self._result = None
        try:
            result = self.result()
        except Exception:
            self._steps.pop()
            raise
        result.seconds = time.perf_counter() - started
        return result

    def _step(self, action: Action, before: list[_Step]) -> _Step:
        """One prompt through the processor's click loop, from the steps ``before`` it."""
        processor, source = self.processor, self.predictor.source
        previous = before[-1] if before else None
        if processor.spatial_dims == 2:
            frame, features = self.predictor.frame, self.predictor.features
            assert frame is not None
            state = previous.state if previous else ClickState()
            prompts = self._prompts(action)
            on_model = processor.to_model_space(prompts, frame, source).to(self.predictor.device)
            state, decoded = processor.click(self.model, features, state, on_model.points, on_model.boxes,
                                             self._decoder)
            return _Step(action, None, state, _iou(decoded.iou_predictions))
        if action.kind != "click":
            raise PromptError(f"{processor.model_name} takes clicks only", source)
        clicks = [step.action for step in before] + [action]
        point = self._prompts(action).points
        assert point is not None
        if previous is not None:
            frame, features = self._crop(previous.crop)
            if _inside(point, frame):  # the current crop holds the click: one decoder pass
                on_model = processor.to_model_space(Prompts(points=point), frame, source).to(self.predictor.device)
                state, decoded = processor.click(self.model, features, previous.state, on_model.points,
                                                 decoder=self._decoder)
                return _Step(action, previous.crop, state, _iou(decoded.iou_predictions))
        # A new crop around every click (encoded once per position), the clicks replayed in order.
        everything = self._points(clicks)
        frame = processor.prepare(self.predictor.image, Prompts(points=everything), source)
        frame, features = self.predictor.encoded_crop(frame)
        on_model = processor.to_model_space(Prompts(points=everything), frame, source).to(self.predictor.device)
        state, decoded = ClickState(), None
        for index in range(on_model.points.coords.shape[1]):
            points = on_model.points
            one = PointPrompts(points.coords[:, index : index + 1], points.labels[:, index : index + 1],
                               points.spatial_shape)
            state, decoded = processor.click(self.model, features, state, one, decoder=self._decoder)
        assert decoded is not None
        return _Step(action, crop_start(frame), state, _iou(decoded.iou_predictions))

    def _crop(self, start: tuple[int, int, int] | None) -> tuple[ImageFrame, Any]:
        """3D: the frame and encoding of the crop at ``start`` (cached; encoded again only if it was dropped)."""
        assert start is not None
        cached = self.predictor.crop_cache.get(start)
        if cached is not None:
            return cached
        frame = self.processor.prepare_window(self.predictor.image, start, self.predictor.source)
        return self.predictor.encoded_crop(frame)

    def _decoder(self, *args: Any, **kwargs: Any) -> Any:
        return self.predictor.runtime.decode(self.model.decode, *args, **kwargs)

    def _prompts(self, action: Action) -> Prompts:
        """One action as prompt containers on the original grid (shape checks here, bounds by the processor)."""
        source = self.predictor.source
        if action.kind == "box":
            return Prompts(boxes=boxes_from_user(list(action.coords), self.shape, source))
        order = "xy" if self.processor.spatial_dims == 2 else "index"
        labels = [int(action.positive)]
        return Prompts(points=points_from_user([list(action.coords)], labels, self.shape, order, source))

    def _points(self, clicks: list[Action]) -> PointPrompts:
        order = "xy" if self.processor.spatial_dims == 2 else "index"
        coords = [list(a.coords) for a in clicks]
        return points_from_user(coords, [int(a.positive) for a in clicks], self.shape, order, self.predictor.source)

    def _compute_result(self) -> SessionResult:
        processor = self.processor
        if not self._steps:
            return SessionResult(torch.zeros(self.shape, dtype=torch.bool))
        step = self._steps[-1]
        low_res = step.state.low_res_logits
        assert low_res is not None
        if processor.spatial_dims == 2:
            assert self.predictor.frame is not None
            back = processor.to_original(low_res, self.predictor.frame)
            logits = None if back.logits is None else back.logits.reshape(self.shape)
            return SessionResult(back.mask.reshape(self.shape), logits, step.iou, len(self._steps))
        frame, _ = self._crop(step.crop)
        clicks = self._points(self.actions)
        large = follow_mask(processor, self.predictor.image, frame, low_res, clicks, self.predictor.segment_crop,
                            self.predictor.large_object, self.predictor.source)
        return SessionResult(large.mask.reshape(self.shape), None, step.iou, len(self._steps), large.strategy,
                             large.crops, large.complete)

    # ------------------------------------------------------------------------------------------ saving
    def save(self, folder: str | Path) -> Path:
        """Write the session to ``folder`` (``session.json``, the embeddings as safetensors, the current mask as
        ``<stem>_mask.nii.gz`` / ``.png``), all together or not at all; returns ``session.json``."""
        tensors: dict[str, Tensor] = {}
        entries = []
        if self.processor.spatial_dims == 2:
            entries.append(_store(tensors, "image", None, self.predictor.features))
        else:
            for start, (_, features) in self.predictor.crop_cache.items():
                entries.append(_store(tensors, "crop_{}_{}_{}".format(*start), start, features))
        stem = _stem(self.image_path)
        suffix = ".png" if self.processor.spatial_dims == 2 else ".nii.gz"
        mask_name = f"{stem}_mask{suffix}"
        mask = self.result().mask.to(torch.uint8).cpu().numpy()

        def write_mask(files: MaskSet) -> None:
            if self.processor.spatial_dims == 2:
                files.add(mask_name, mask, Path(mask_name))  # a PNG needs no geometry
            elif self.image_path is not None:  # a NIfTI mask takes the file's geometry
                files.add(mask_name, mask, self.image_path)

        content = {
            "image": self._image_record(),
            "model": {"family": getattr(self.model, "family", None), "class": type(self.model).__name__,
                      "weights": getattr(self.model, "weights_origin", None), "digest": weights_digest(self.model)},
            "processor": self.processor.to_dict(),
            "precision": self.predictor.runtime.precision,
            "large_object": dataclasses.asdict(self.predictor.large_object),
            "actions": [{"kind": a.kind, "coords": list(a.coords), "positive": a.positive} for a in self.actions],
            "embeddings": entries,
            "mask": mask_name,
        }
        return write_session(folder, content, tensors, write_mask)

    @classmethod
    def open(
        cls,
        folder: str | Path,
        model: nn.Module,
        image: Any,
        processor: Processor | None = None,
        large_object: str | LargeObjects | None = None,
    ) -> Session:
        """Reopen a saved session on the same image with the same model: the embeddings come from disk (no
        encoding) and the prompts are replayed through the click loop (decoder passes only).

        ``large_object`` overrides the saved strategy. A different image, model, processor config or precision is
        refused (its embeddings would not be this model's embeddings of this image).
        """
        content, tensors = read_session(folder)
        where = Path(folder) / "session.json"
        saved_model = content.get("model", {})
        if saved_model.get("digest") != weights_digest(model):
            raise DataError(where, f"the session was made with other weights ({saved_model.get('weights')}); "
                                   "start a new session for this model")
        features, crops = None, {}
        for entry in content.get("embeddings", []):
            value = _restore(tensors, entry, model, where)
            if entry.get("crop") is None:
                features = value
            else:
                crops[tuple(int(v) for v in entry["crop"])] = value
        saved_large = content.get("large_object") or {}
        chosen = large_object if large_object is not None else LargeObjects(**saved_large) if saved_large else None
        session = cls(model, image, processor, chosen, content.get("precision", "fp32"), _features=features,
                      _crops=crops)
        if content.get("processor") != session.processor.to_dict():
            raise DataError(where, "the session was made with another processor config; start a new session")
        record = session._image_record()
        saved_image = content.get("image", {})
        if saved_image.get("sha256") != record["sha256"]:
            raise DataError(where, f"the session was made on another image ({saved_image.get('path')})")
        with torch.inference_mode():
            for item in content.get("actions", []):
                action = Action(str(item["kind"]), tuple(float(c) for c in item["coords"]), bool(item["positive"]))
                session._steps.append(session._step(action, session._steps))
        return session

    def _image_record(self) -> dict[str, Any]:
        if self.image_path is not None:
            digest = file_sha256(self.image_path)
        else:
            array = np.ascontiguousarray(self.predictor.image.array if self.processor.spatial_dims == 3
                                         else self.predictor.image)
            digest = hashlib.sha256(array.tobytes() + repr(array.shape).encode()).hexdigest()
        return {"path": None if self.image_path is None else str(self.image_path), "sha256": digest,
                "shape": list(self.shape)}


def weights_digest(model: nn.Module) -> str:
    """A short digest of a model's weights (names, shapes and a strided sample of every tensor's values): tells a
    session's embeddings from another model's."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        step = max(1, flat.numel() // 256)
        digest.update(name.encode())
        digest.update(repr(tuple(tensor.shape)).encode())
        digest.update(flat[::step].to(torch.float64).cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _iou(iou: Tensor | None) -> float | None:
    return None if iou is None else float(iou.reshape(-1)[0])


def _stem(path: Path | None) -> str:
    if path is None:
        return "image"
    name = path.name
    for suffix in (".nii.gz", ".nii", ".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


def _store(tensors: dict[str, Tensor], key: str, crop: tuple[int, int, int] | None, features: Any) -> dict[str, Any]:
    """Put one embedding (a tensor, or a dataclass of tensors) into ``tensors``; returns how to rebuild it."""
    if isinstance(features, Tensor):
        tensors[key] = features
        return {"key": key, "crop": None if crop is None else list(crop), "type": "tensor"}
    names = [f.name for f in dataclasses.fields(features)]
    for name in names:
        tensors[f"{key}.{name}"] = getattr(features, name)
    return {"key": key, "crop": None if crop is None else list(crop), "type": type(features).__name__,
            "fields": names}


def _restore(tensors: dict[str, Tensor], entry: dict[str, Any], model: nn.Module, where: Path) -> Any:
    """One embedding back: a tensor, or a dataclass defined beside the model's class (nothing else is built); the
    image embedding in the layout the encoders give it (the file keeps no strides)."""
    key, kind = str(entry.get("key")), entry.get("type")
    device = next(model.parameters()).device
    if kind == "tensor":
        if key not in tensors:
            raise DataError(where, f"embedding {key!r} is missing from the embeddings file")
        return image_embedding_layout(tensors[key].to(device))
    cls = getattr(sys.modules.get(type(model).__module__), str(kind), None)
    if cls is None or not dataclasses.is_dataclass(cls):
        raise DataError(where, f"embedding {key!r} has an unknown type {kind!r} for {type(model).__name__}")
    try:
        fields = {name: tensors[f"{key}.{name}"].to(device) for name in entry.get("fields", [])}
        if "image_embeddings" in fields:
            fields["image_embeddings"] = image_embedding_layout(fields["image_embeddings"])
        return cls(**fields)
    except (KeyError, TypeError) as exc:
        raise DataError(where, f"embedding {key!r} does not match {kind}: {exc}") from None


__all__ = ["Action", "Session", "SessionResult", "weights_digest"]
