"""One benchmark unit: one model, one case, one protocol, every target of the case, every scored step.

Every image goes through the model's processor (``prepare``, ``to_model_space``, ``click``/``segment``,
``to_original``), every encoding through an :class:`~zoo.evaluation.encoding.EncodingCache` (a click costs the
prompt encoder and the decoder only), and every mask is scored on the case's own grid:

* 3D models: the processor's inverse pastes the crop's mask back onto the file's voxels;
* 2D models on volumes: each slice's mask comes back to the slice's pixels, the slices are stacked back onto the
  file's voxels (:meth:`~zoo.evaluation.cases.LoadedCase.from_display`), and the volume is scored like a 3D model's;
* 2D images: the processor's inverse to the image's pixels.

Prompts come from the label on that grid through the shared seeded simulators (:mod:`zoo.prompts.simulate`); the
random stream of each (target, slice, protocol) is seeded from the benchmark's seed and their names
(:func:`stream_seed`), so every model on a protocol draws the same numbers.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from zoo.evaluation.cases import LoadedCase
from zoo.evaluation.encoding import CachedEncoderModel, EncodingCache
from zoo.evaluation.metrics import MetricSettings, score
from zoo.evaluation.protocols import Protocol, not_applicable_reason
from zoo.inference.large_objects import LargeObjects, crop_start, follow_mask
from zoo.inference.propagation import propagate_box
from zoo.processors import ClickState, ImageFrame, Processor
from zoo.prompts.components import bounding_boxes, largest_component
from zoo.prompts.simulate import first_click_random_foreground, next_click_random_error, sam_med2d_points
from zoo.prompts.types import PADDING_LABEL, PointPrompts, Prompts

#: A logit far above any threshold: decoding it gives the processor's whole output region (its crop's footprint).
_CERTAIN = 1e4


def stream_seed(seed: int, *parts: Any) -> int:
    """A 63-bit seed for one random stream, from the benchmark's seed and the stream's names (stable across
    processes and runs, unlike Python's ``hash``)."""
    digest = hashlib.sha256(repr((int(seed), *[str(p) for p in parts])).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def generator(seed: int, *parts: Any) -> torch.Generator:
    return torch.Generator().manual_seed(stream_seed(seed, *parts))


@dataclass
class UnitOutcome:
    """What a unit produced.

    Attributes:
        status: ``ok`` or ``not_applicable`` (``reason`` says why).
        rows: one per (target, step): ``target``, ``class``, ``step`` and the scores.
        prompts: per target, the prompts simulated on the original grid (JSON-ready).
        overlays: per target, its representative display slice and the predicted slice at each step (packed bits).
        seconds: wall time of the unit (the case's reading excluded).
        encoder_calls: images encoded by the unit (cached encodings are not counted).
        peak_memory_bytes: peak CUDA memory of the unit, or peak resident memory of the process on CPU.
    """

    status: str
    reason: str | None = None
    rows: list[dict[str, Any]] = field(default_factory=list)
    prompts: dict[str, Any] = field(default_factory=dict)
    overlays: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    encoder_calls: int = 0
    peak_memory_bytes: int | None = None
    masks: dict[str, dict[int, np.ndarray]] = field(default_factory=dict, repr=False)

    def record(self) -> dict[str, Any]:
        """The JSON-ready content (without the masks, which :attr:`masks` keeps when asked)."""
        return {
            "status": self.status, "reason": self.reason, "rows": self.rows, "prompts": self.prompts,
            "overlays": self.overlays, "seconds": self.seconds, "encoder_calls": self.encoder_calls,
            "peak_memory_bytes": self.peak_memory_bytes,
        }


# ------------------------------------------------------------------------------------------------ packing
def pack_mask(mask: np.ndarray) -> dict[str, Any]:
    """A bool mask as JSON: its shape and its bits, base64."""
    values = np.asarray(mask, dtype=bool)
    return {"shape": list(values.shape), "bits": base64.b64encode(np.packbits(values.ravel()).tobytes()).decode()}


def unpack_mask(packed: dict[str, Any]) -> np.ndarray:
    shape = tuple(packed["shape"])
    bits = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    return np.unpackbits(bits, count=int(np.prod(shape))).astype(bool).reshape(shape)


def representative_slice(display_label: np.ndarray) -> int:
    """The display slice where the target is largest (the first on ties)."""
    return int(np.argmax(display_label.reshape(display_label.shape[0], -1).sum(axis=1)))


# ------------------------------------------------------------------------------------------------ prompts
def box_region(mask: Tensor, region: str) -> Tensor:
    """The filled rectangle around the label's ``largest`` connected component or ``all`` of it: boxed by any
    family's rule (:meth:`Processor.boxes_from_masks`), it gives that family's box of exactly this region."""
    selected = largest_component(mask[None])[0] if region == "largest" else mask
    lo, hi, nonempty = bounding_boxes(selected[None])
    filled = torch.zeros_like(mask, dtype=torch.bool)
    if bool(nonempty[0]):
        filled[tuple(slice(int(a), int(b)) for a, b in zip(lo[0], hi[0]))] = True
    return filled


def _points_json(points: PointPrompts) -> list[list[float]]:
    real = ~points.is_padding[0]
    coords, labels = points.coords[0][real], points.labels[0][real]
    return [[*(float(c) for c in coord), int(label)] for coord, label in zip(coords.tolist(), labels.tolist())]


class ClickLoop:
    """One object's clicks, as the click protocols run them: click 1 a random foreground element of the label,
    each further click a random element of the error region inside the model's view (label 1 on a false
    negative, 0 on a false positive), all clicks so far given each time through the processor's click loop
    (:meth:`Processor.click`: the previous mask fed back as the family does).

    ``frame_for(first_click)`` gives the frame and encoding (3D: the crop around the first click).
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Processor,
        target: Tensor,
        frame_for: Callable[[PointPrompts], tuple[ImageFrame, Any]],
        stream: torch.Generator,
        device: torch.device,
    ) -> None:
        self.model, self.processor, self.target, self.stream, self.device = model, processor, target, stream, device
        first = first_click_random_foreground(target[None], stream)
        self.frame, self.encoding = frame_for(first)
        certain = torch.full((1, 1, *processor.mask_prompt_shape(model)), _CERTAIN)
        self.view = processor.to_original(certain, self.frame).mask.reshape(target.shape).cpu()
        self.state = ClickState()
        self.prediction = torch.zeros_like(target, dtype=torch.bool)
        self.clicks: list[list[float]] = []
        self._pending: PointPrompts | None = first

    def step(self) -> Tensor:
        """One more click (none when the prediction has no error left in view); the mask on the original grid."""
        points = self._pending
        if points is None:
            points = next_click_random_error(
                (self.prediction & self.view)[None], (self.target & self.view)[None], 1, self.stream
            )
        self._pending = None
        if bool((points.labels == PADDING_LABEL).all()):
            return self.prediction
        self.clicks += _points_json(points)
        self.prediction = self._mask(points).reshape(self.target.shape).cpu()
        return self.prediction

    def _click(self, points: PointPrompts) -> Tensor:
        """The new click through the processor's click loop on the frame; the decoder's low-res logits."""
        on_model = self.processor.to_model_space(Prompts(points=points), self.frame)
        assert on_model.points is not None
        points_on_model = on_model.points.to(self.device)
        self.state, decoded = self.processor.click(self.model, self.encoding, self.state, points_on_model)
        return decoded.low_res_logits

    def _mask(self, points: PointPrompts) -> Tensor:
        """The mask after the new click, on the original grid (the processor's inverse of the frame)."""
        return self.processor.to_original(self._click(points), self.frame).mask


class _Windows:
    """A processor whose :meth:`prepare_window` keeps each crop's frame (one resampling per crop position and case,
    however many clicks); everything else is the processor's."""

    def __init__(self, processor: Processor) -> None:
        self._processor = processor
        self.frames: dict[tuple[int, int, int], ImageFrame] = {}

    def prepare_window(self, image: Any, start: Any, source: str = "image") -> ImageFrame:
        key = (int(start[0]), int(start[1]), int(start[2]))
        if key not in self.frames:
            self.frames[key] = self._processor.prepare_window(image, key, source)
        return self.frames[key]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._processor, name)


class FollowMaskLoop(ClickLoop):
    """A 3D click loop whose every mask follows the object beyond the first crop (paper Sec. 4.3's sliding window,
    :func:`zoo.inference.large_objects.follow_mask`): the first crop around the first click answers the clicks that
    fall inside it as :class:`ClickLoop` does (its previous mask fed back; a click outside it leaves its answer as
    it was); then further crops on the half-crop lattice beyond every face its mask touches, each seeded from its
    neighbour's mask and given the clicks so far that fall inside it, blended and pasted back once. Further clicks
    are drawn from the error region inside the union of the crops that ran (:attr:`view`). Every crop's encoding
    comes from ``encode`` (the unit's encoding cache) and its frame is prepared once, so a crop costs one encoding
    per case however many clicks.

    Attributes:
        crops: per step, the first voxel (resampled grid) of each crop that ran, in order.
        complete: per step, False when ``max_crops`` stopped it with the mask still at a crop's border.
    """

    def __init__(
        self,
        model: nn.Module,
        processor: Processor,
        target: Tensor,
        frame_for: Callable[[PointPrompts], tuple[ImageFrame, Any]],
        stream: torch.Generator,
        device: torch.device,
        volume: Any,
        source: str,
        options: LargeObjects,
        encode: Callable[[Tensor], Any],
    ) -> None:
        super().__init__(model, processor, target, frame_for, stream, device)
        self.volume, self.source, self.options, self.encode = volume, source, options, encode
        self.windows = _Windows(processor)
        self.views = {crop_start(self.frame): _box_of(self.view)}
        self.given: PointPrompts | None = None
        self.low_res: Tensor | None = None
        self.crops: list[list[list[int]]] = []
        self.complete: list[bool] = []

    def step(self) -> Tensor:
        ran = len(self.crops)
        mask = super().step()
        if len(self.crops) == ran:  # no error left in view, no click: the crops stay those of the last step
            self.crops.append(self.crops[-1])
            self.complete.append(self.complete[-1])
        return mask

    def _mask(self, points: PointPrompts) -> Tensor:
        real = ~points.is_padding[0]
        new = PointPrompts(points.coords[:, real].cpu(), points.labels[:, real].cpu(), points.spatial_shape)
        if self.low_res is None or _inside(new, self.frame):
            self.low_res = self._click(new)
        # else: the click lies in a further crop only (it is given there); the first crop's answer stands
        self.given = new if self.given is None else self.given.cat(new)
        result = follow_mask(self.windows, self.volume, self.frame, self.low_res, self.given,  # type: ignore[arg-type]
                             self._run_crop, self.options, self.source)
        self.view = torch.zeros_like(self.view)
        for start in result.crops:
            box, inside = self._view(start)
            self.view[box] |= inside
        self.crops.append([list(start) for start in result.crops])
        self.complete.append(result.complete)
        return result.mask

    def _run_crop(self, frame: ImageFrame, prompts: Prompts) -> Tensor:
        on_model = self.processor.to_model_space(prompts, frame, self.source)
        decoded = self.processor.segment(self.model, self.encode(frame.model_input), on_model.to(self.device))
        return decoded.low_res_logits

    def _view(self, start: tuple[int, int, int]) -> tuple[tuple[slice, ...], Tensor]:
        """Where a crop sees on the original grid (its whole output region pasted back), as its bounding box and
        the view inside it (a crop's footprint, not a volume per crop)."""
        if start not in self.views:
            frame = self.windows.frames[start]
            certain = torch.full((1, 1, *self.processor.mask_prompt_shape(self.model)), _CERTAIN)
            seen = self.processor.to_original(certain, frame).mask.reshape(self.target.shape).cpu()
            self.views[start] = _box_of(seen)
        return self.views[start]


def _box_of(mask: Tensor) -> tuple[tuple[slice, ...], Tensor]:
    """A bool mask as its bounding box and its values inside it."""
    found = torch.nonzero(mask)
    if found.numel() == 0:
        box = tuple(slice(0, 0) for _ in mask.shape)
    else:
        box = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(found.min(dim=0).values, found.max(dim=0).values))
    return box, mask[box].clone()


def _inside(points: PointPrompts, frame: ImageFrame) -> bool:
    """Whether every real point falls inside the frame's model input (index order, half-voxel margins)."""
    coords = points.mapped(frame.to_model).coords[~points.is_padding]
    limits = torch.tensor(frame.model_input.shape[1:], dtype=coords.dtype) - 0.5
    return bool(((coords >= -0.5) & (coords <= limits)).all())


def _segment(
    model: nn.Module, processor: Processor, frame: ImageFrame, encoding: Any, prompts: Prompts, shape: tuple[int, ...],
    device: torch.device,
) -> Tensor:
    """One decoder pass on a whole prompt set (the family's rule), the mask on the original grid."""
    on_model = processor.to_model_space(prompts, frame)
    decoded = processor.segment(model, encoding, on_model.to(device))
    return processor.to_original(decoded.low_res_logits, frame).mask.reshape(shape).cpu()


# ------------------------------------------------------------------------------------------------ 2D images
def _image_steps(
    model: nn.Module, processor: Processor, protocol: Protocol, image: np.ndarray, label: np.ndarray,
    cache: EncodingCache, stream_name: tuple[Any, ...], seed: int, device: torch.device,
) -> tuple[dict[int, Tensor], Any]:
    """One target on one 2D image (a picture or a volume's slice): the mask after every scored step, and the
    prompts it got (JSON-ready)."""
    target = torch.from_numpy(np.ascontiguousarray(label))
    shape = tuple(target.shape)

    def frame_and_encoding(_: Any = None) -> tuple[ImageFrame, Any]:
        frame = processor.prepare(image, source=str(stream_name[0]))
        return frame, cache.encode(frame.model_input)

    masks: dict[int, Tensor] = {}
    if protocol.kind == "clicks":
        loop = ClickLoop(model, processor, target, frame_and_encoding, generator(seed, *stream_name), device)
        for step in protocol.steps:
            masks[step] = loop.step()
        return masks, loop.clicks
    frame, encoding = frame_and_encoding()
    if protocol.kind == "points":
        given = {}
        for step in protocol.steps:
            points = sam_med2d_points(target[None], step, generator(seed, *stream_name, step))
            masks[step] = _segment(model, processor, frame, encoding, Prompts(points=points), shape, device)
            given[step] = _points_json(points)
        return masks, given
    boxes = processor.boxes_from_masks(box_region(target, protocol.region)[None])
    masks[1] = _segment(model, processor, frame, encoding, Prompts(boxes=boxes), shape, device)
    return masks, [float(v) for v in torch.cat([boxes.lo[0], boxes.hi[0]]).tolist()]


# ------------------------------------------------------------------------------------------------ volumes
def _volume_3d(
    model: nn.Module, processor: Processor, protocol: Protocol, case: LoadedCase, label: np.ndarray,
    cache: EncodingCache, stream_name: tuple[Any, ...], seed: int, device: torch.device,
) -> tuple[dict[int, np.ndarray], Any]:
    """A 3D model's click protocol on the file's voxels: the crop around the first click, error clicks inside it
    (``large_object: follow_mask``: further crops where the mask reaches the crop's border, error clicks inside
    their union; :class:`FollowMaskLoop`)."""
    target = torch.from_numpy(np.ascontiguousarray(label))
    volume = case.volume

    def crop_around(first: PointPrompts) -> tuple[ImageFrame, Any]:
        frame = processor.prepare(volume, Prompts(points=first), source=case.case.image_path)
        return frame, cache.encode(frame.model_input)

    stream = generator(seed, *stream_name)
    if protocol.large_object == "single_crop":
        loop = ClickLoop(model, processor, target, crop_around, stream, device)
        masks = {step: loop.step().numpy() for step in protocol.steps}
        return masks, {"clicks": loop.clicks}
    options = LargeObjects(protocol.large_object, max_crops=protocol.max_crops)
    follow = FollowMaskLoop(model, processor, target, crop_around, stream, device, volume, case.case.image_path,
                            options, cache.encode)
    masks = {step: follow.step().numpy() for step in protocol.steps}
    return masks, {"clicks": follow.clicks, "crops": follow.crops, "complete": follow.complete}


def _volume_slices(
    model: nn.Module, processor: Processor, protocol: Protocol, case: LoadedCase, label: np.ndarray,
    cache: EncodingCache, stream_name: tuple[Any, ...], seed: int, device: torch.device,
) -> tuple[dict[int, np.ndarray], Any]:
    """A 2D model through a volume: every display slice holding the target runs the protocol on its own (its own
    click loop, points or box), slices without it stay empty; each step's slices are stacked back onto the file."""
    slices = case.display_slices()
    display_label = case.display(label)
    holding = [int(z) for z in np.nonzero(display_label.reshape(len(display_label), -1).any(axis=1))[0]]
    stacked = {step: np.zeros(display_label.shape, dtype=bool) for step in protocol.steps}
    prompts: dict[str, Any] = {}
    if protocol.kind == "box_propagation":
        zs, rows, cols = np.nonzero(display_label)
        box3d = [int(cols.min()), int(rows.min()), int(zs.min()), int(cols.max()), int(rows.max()), int(zs.max())]
        run = propagate_box(CachedEncoderModel(cache), processor, slices, box3d, source=case.case.image_path)
        stacked[1] = run.masks.numpy().astype(bool)
        return {1: case.from_display(stacked[1])}, {"box3d": box3d}
    if protocol.kind == "clicks":  # step-major, so only one loop state per slice is held
        loops = {}
        for z in holding:
            name = (*stream_name, f"slice{z}")
            image = slices[z]

            def frame_for(_: Any, image: np.ndarray = image, name: tuple[Any, ...] = name) -> tuple[ImageFrame, Any]:
                frame = processor.prepare(image, source=f"{case.case.image_path} slice {name[-1]}")
                return frame, cache.encode(frame.model_input)

            target = torch.from_numpy(np.ascontiguousarray(display_label[z]))
            loops[z] = ClickLoop(model, processor, target, frame_for, generator(seed, *name), device)
        for step in protocol.steps:
            for z, loop in loops.items():
                stacked[step][z] = loop.step().numpy()
        prompts = {str(z): loop.clicks for z, loop in loops.items()}
    else:
        for z in holding:
            masks, given = _image_steps(model, processor, protocol, slices[z], display_label[z], cache,
                                        (*stream_name, f"slice{z}"), seed, device)
            for step, mask in masks.items():
                stacked[step][z] = mask.numpy()
            prompts[str(z)] = given
    return {step: case.from_display(volume) for step, volume in stacked.items()}, prompts


# ------------------------------------------------------------------------------------------------ a unit
class _PeakMemory:
    """Peak memory while a unit runs: CUDA's allocator peak on a GPU, else the process's resident set (sampled)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak: int | None = None

    def __enter__(self) -> _PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            import threading

            self._stop = threading.Event()
            self.peak = _rss()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            current = _rss()
            if current is not None and (self.peak is None or current > self.peak):
                self.peak = current

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self.peak = int(torch.cuda.max_memory_allocated(self.device))
        else:
            self._stop.set()
            self._thread.join()
            current = _rss()
            if current is not None and (self.peak is None or current > self.peak):
                self.peak = current


def _rss() -> int | None:
    try:
        with open("/proc/self/statm", encoding="ascii") as stream:
            import os

            return int(stream.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@torch.inference_mode()
def run_unit(
    model: nn.Module,
    processor: Processor,
    case: LoadedCase,
    protocol: Protocol,
    metrics: MetricSettings,
    seed: int,
    cache: EncodingCache,
    keep_masks: bool = False,
) -> UnitOutcome:
    """Run ``protocol`` with ``model`` on every target of ``case`` and score every step on the case's grid
    (``keep_masks``: the masks of the protocol's table steps stay in :attr:`UnitOutcome.masks`)."""
    reason = not_applicable_reason(protocol, processor, case.case.kind)
    if reason is not None:
        return UnitOutcome("not_applicable", reason)
    device = next(model.parameters()).device
    outcome = UnitOutcome("ok")
    encoded_before = cache.encoded
    start = time.perf_counter()
    with _PeakMemory(device) as memory:
        for target in case.case.targets:
            label = case.labels[target.name]
            stream_name = (case.case.key, target.name, protocol.stream_name)
            if case.case.kind == "image":
                masks_t, prompts = _image_steps(model, processor, protocol, case.image, label, cache, stream_name,
                                                seed, device)
                masks = {step: mask.numpy() for step, mask in masks_t.items()}
            elif processor.spatial_dims == 3:
                masks, prompts = _volume_3d(model, processor, protocol, case, label, cache, stream_name, seed, device)
            else:
                masks, prompts = _volume_slices(model, processor, protocol, case, label, cache, stream_name, seed,
                                                device)
            outcome.prompts[target.name] = prompts
            for step in protocol.steps:
                scores = score(masks[step], label, case.spacing, metrics)
                outcome.rows.append({"target": target.name, "class": target.class_name, "step": step, **scores})
            outcome.overlays[target.name] = _overlay(case, label, masks)
            if keep_masks:
                outcome.masks[target.name] = {step: masks[step] for step in protocol.table_steps}
    outcome.seconds = time.perf_counter() - start
    outcome.encoder_calls = cache.encoded - encoded_before
    outcome.peak_memory_bytes = memory.peak
    return outcome


def _overlay(case: LoadedCase, label: np.ndarray, masks: dict[int, np.ndarray]) -> dict[str, Any]:
    """The target's representative display slice and every step's mask on it."""
    if case.case.kind == "image":
        return {"slice": None, "masks": {str(step): pack_mask(mask) for step, mask in masks.items()}}
    index = representative_slice(case.display(label))
    return {
        "slice": index,
        "masks": {str(step): pack_mask(case.display_slice(mask, index)) for step, mask in masks.items()},
    }


__all__ = ["ClickLoop", "FollowMaskLoop", "UnitOutcome", "box_region", "pack_mask", "representative_slice", "run_unit",
           "stream_seed", "unpack_mask"]
