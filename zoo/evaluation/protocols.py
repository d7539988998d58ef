"""The papers' evaluation protocols, by name: what prompt each model gets, how it is simulated from the label, and
which steps are scored.

Every prompt is simulated on the ORIGINAL grid (the file's voxels, the PNG's pixels, or a slice of the volume as a
2D model sees it) by the shared seeded simulators (:mod:`zoo.prompts.simulate`), then mapped into each model's input
by its processor. Two models on one protocol therefore get the same first click, the same points and the same box
(each family writes a box in its own convention: :meth:`zoo.processors.Processor.boxes_from_masks` of the boxed
region); later clicks come from each model's own errors, drawn with the same seeded stream.

=======================  ==========  ==============================================================================
protocol                 kind        what each model gets
=======================  ==========  ==============================================================================
``sam_med3d``            clicks      SAM-Med3D (``utils/infer_utils.py``, paper Sec. 4.3): click 1 a random
                                     foreground voxel, each further click a random voxel of the error region
                                     (false negatives: label 1, false positives: label 0), clicks accumulated, the
                                     previous mask fed back as the family does; scored after every click. The crop
                                     is centred on the first click (the paper; the repo centres it on the label's
                                     box) and later clicks are drawn inside it. 2D models run it on every slice
                                     holding the target (the paper's "N points" rows: one click per slice).
                                     ``large_object: follow_mask`` (3D models only; named
                                     ``sam_med3d_follow_mask``): paper Sec. 4.3's sliding window with 50% overlap,
                                     see below.
``sam_med2d_box``        box         SAM-Med2D ``test.py --boxes_prompt``: the tight box of the label's largest
                                     connected component, no jitter.
``sam_med2d_points``     points      SAM-Med2D ``test.py --point_num n`` (n = 1, 3, 5), one pass, no mask prompt:
                                     n = 1 one random foreground pixel; n > 1 n // 2 foreground + the rest
                                     background pixels at once.
``sam_med2d_iterative``  clicks      SAM-Med2D ``test.py --iter_point n``: one random foreground point, then one
                                     error-region point per pass, accumulated, sigmoid of the previous mask fed back.
``sam_unet_box``         box         SAM-UNet ``dataset.py`` (test): the unjittered box of the largest component of
                                     the original mask (the same box as ``sam_med2d_box``, which SAM-Med2D draws
                                     on its 256 mask).
``litemedsam_box``       box         LiteMedSAM ``CVPR24_LiteMedSAM_infer.py`` (2D): the box around ALL the label's
                                     pixels.
``litemedsam_box3d``     propagation LiteMedSAM's 3D procedure (:func:`zoo.inference.propagation.propagate_box`):
                                     the label's 3D box, the middle slice first, each next slice boxed from the
                                     previous slice's mask.
=======================  ==========  ==============================================================================

On a volume, the 2D protocols run on every slice (``plane``, axial by default) that holds the target; the slices'
masks are stacked back onto the file's grid and scored there, like the 3D models' masks. Slices without the target
get no prompt and an empty mask.

**Objects larger than one crop** (``sam_med3d`` with ``large_object``): ``single_crop`` (the default) scores the
crop around the first click alone, as the authors' code does (``utils/infer_utils.py``: voxels outside the crop are
misses). ``follow_mask`` is the paper's evaluation (Sec. 4.3: a 128^3 patch around the first point and "a sliding
window with 50% overlap" that extends a patch whose edge has predictions): after each click the first crop's mask
goes through :func:`zoo.inference.large_objects.follow_mask` (further crops on a half-crop lattice beyond every face
the mask touches, up to ``max_crops`` crops, each seeded from its neighbour's mask and given the clicks so far that
fall inside it, logits blended with MONAI's Gaussian weights, pasted back once), and further clicks are drawn from
the error region inside the union of the crops that ran (where the model can see). Every crop is encoded once per
case. The variant is named ``sam_med3d_follow_mask`` (so both can run in one benchmark), draws the same random
clicks as ``sam_med3d`` (its streams are seeded from ``sam_med3d``), and applies to 3D models only (a 2D model
sees every slice whole). An object inside the first crop gets exactly the single-crop mask.

A protocol a model cannot take (boxes for SAM-Med3D, a 2D paper's protocol for a 3D model, a 3D model on 2D images)
is reported as not applicable (:func:`not_applicable_reason`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from zoo.inference.large_objects import STRATEGIES
from zoo.processors import Processor

ProtocolKind = Literal["clicks", "points", "box", "box_propagation"]
BoxRegion = Literal["largest", "all"]
CaseKind = Literal["volume", "image"]

_PROMPT_OF_KIND = {"clicks": "points", "points": "points", "box": "boxes", "box_propagation": "boxes"}


@dataclass(frozen=True)
class Protocol:
    """One evaluation protocol.

    Attributes:
        name: its name in configs and reports.
        kind: ``clicks`` (iterative, accumulated), ``points`` (non-iterative point sets), ``box`` (one box per
            slice or image) or ``box_propagation`` (LiteMedSAM's 3D box through the slices).
        steps: the steps scored: click counts (clicks; all of 1..N), points per set (points), ``(1,)`` (boxes).
        table_steps: the steps the summary table shows (the papers' columns).
        region: which part of the label a box is drawn around: its ``largest`` connected component or ``all``.
        model_dims: the model dimensionalities it applies to (2: 2D models, also slice by slice on volumes).
        title: a short heading for reports.
        source: where the protocol is defined (authors' file, paper section).
        large_object: 3D click protocols: ``single_crop`` (the authors' code) or ``follow_mask`` (the paper's
            sliding window; :mod:`zoo.inference.large_objects`).
        max_crops: with ``follow_mask``, the most crops one object may use per click, the first included.
        stream: the name its random streams are seeded from (default: ``name``); a variant keeps its protocol's,
            so both draw the same clicks.
    """

    name: str
    kind: ProtocolKind
    steps: tuple[int, ...]
    table_steps: tuple[int, ...]
    region: BoxRegion = "largest"
    model_dims: frozenset[int] = frozenset({2, 3})
    title: str = ""
    source: str = ""
    large_object: str = "single_crop"
    max_crops: int = 8
    stream: str = ""

    def __post_init__(self) -> None:
        if self.kind not in _PROMPT_OF_KIND:
            raise ValueError(f"protocol {self.name}: unknown kind {self.kind!r}; known: {sorted(_PROMPT_OF_KIND)}")
        if not self.steps or any(s < 1 for s in self.steps) or list(self.steps) != sorted(set(self.steps)):
            raise ValueError(f"protocol {self.name}: steps must be increasing positive integers, got {self.steps}")
        if self.kind == "clicks" and self.steps != tuple(range(1, self.steps[-1] + 1)):
            raise ValueError(f"protocol {self.name}: a click protocol scores every click 1..N, got {self.steps}")
        if not set(self.table_steps) <= set(self.steps):
            raise ValueError(f"protocol {self.name}: table steps {self.table_steps} are not all scored ({self.steps})")
        if self.region not in ("largest", "all"):
            raise ValueError(f"protocol {self.name}: region must be 'largest' or 'all', got {self.region!r}")
        if self.large_object not in STRATEGIES:
            raise ValueError(f"protocol {self.name}: large_object must be one of {list(STRATEGIES)}, "
                             f"got {self.large_object!r}")
        if self.large_object != "single_crop" and (self.kind != "clicks" or self.model_dims != frozenset({3})):
            raise ValueError(f"protocol {self.name}: large_object applies to click protocols of 3D models only")
        if self.max_crops < 1:
            raise ValueError(f"protocol {self.name}: max_crops must be at least 1, got {self.max_crops}")

    @property
    def stream_name(self) -> str:
        """The name its random streams are seeded from."""
        return self.stream or self.name

    def cache_content(self) -> dict[str, Any]:
        """What a unit's result depends on (the benchmark's cache key): every field; the large-object fields only
        when they differ from the default single crop, so units cached before they existed stay valid."""
        content = dataclasses.asdict(self) | {"model_dims": sorted(self.model_dims)}
        if self.large_object == "single_crop":
            del content["large_object"], content["max_crops"]
        if not self.stream:
            del content["stream"]
        return content

    @property
    def prompt_kind(self) -> str:
        """``points`` or ``boxes``: what the model's processor must take."""
        return _PROMPT_OF_KIND[self.kind]

    @property
    def iterative(self) -> bool:
        return self.kind == "clicks"

    def step_label(self, step: int) -> str:
        """How the papers head the step's column: ``3 clicks``, ``5 pts``, ``box``, ``3D box``."""
        if self.kind == "clicks":
            return f"{step} click" + ("s" if step > 1 else "")
        if self.kind == "points":
            return f"{step} pt" + ("s" if step > 1 else "")
        return "3D box" if self.kind == "box_propagation" else "box"

    def with_clicks(self, clicks: int) -> Protocol:
        """This click protocol scored up to ``clicks`` clicks (its table keeps the steps that remain)."""
        if self.kind != "clicks":
            raise ValueError(f"protocol {self.name} is not a click protocol")
        steps = tuple(range(1, clicks + 1))
        table = tuple(sorted({s for s in self.table_steps if s <= clicks} | {clicks}))
        return dataclasses.replace(self, steps=steps, table_steps=table)

    def with_points(self, points: tuple[int, ...]) -> Protocol:
        """This point protocol with other point counts."""
        if self.kind != "points":
            raise ValueError(f"protocol {self.name} is not a point protocol")
        steps = tuple(sorted(set(int(p) for p in points)))
        return dataclasses.replace(self, steps=steps, table_steps=steps)

    def with_large_object(self, strategy: str, max_crops: int | None = None) -> Protocol:
        """This 3D click protocol with another large-object strategy; ``follow_mask`` is named
        ``<name>_follow_mask``, applies to 3D models only and draws the clicks of this protocol."""
        crops = self.max_crops if max_crops is None else int(max_crops)
        if strategy == self.large_object:
            return dataclasses.replace(self, max_crops=crops)
        if self.kind != "clicks" or 3 not in self.model_dims:
            raise ValueError(f"protocol {self.name}: large_object applies to click protocols of 3D models only")
        if strategy == "single_crop":
            raise ValueError(f"protocol {self.name}: already a large-object variant ({self.large_object})")
        if strategy not in STRATEGIES:
            raise ValueError(f"protocol {self.name}: large_object must be one of {list(STRATEGIES)}, got {strategy!r}")
        return dataclasses.replace(
            self, name=f"{self.name}_{strategy}", model_dims=frozenset({3}), large_object=strategy, max_crops=crops,
            stream=self.stream_name, title=f"{self.title}; crops follow the mask (paper's 50%-overlap sliding window)",
            source=f"{self.source}; paper Sec. 4.3 sliding window with 50% overlap (zoo.inference.large_objects)",
        )


PROTOCOLS: dict[str, Protocol] = {
    p.name: p
    for p in (
        Protocol(
            "sam_med3d", "clicks", tuple(range(1, 11)), (1, 3, 5, 10),
            title="SAM-Med3D: random foreground click, then random error-region clicks",
            source=(
                "uni-medical/SAM-Med3D utils/infer_utils.py:127-168 (random_sample_next_click); paper Sec. 4.3, Table 3"
            ),
        ),
        Protocol(
            "sam_med2d_box", "box", (1,), (1,), region="largest", model_dims=frozenset({2}),
            title="SAM-Med2D: box of the largest component",
            source="OpenGVLab/SAM-Med2D test.py:33 --boxes_prompt, DataLoader.py:78 get_boxes_from_mask",
        ),
        Protocol(
            "sam_med2d_points", "points", (1, 3, 5), (1, 3, 5), model_dims=frozenset({2}),
            title="SAM-Med2D: 1/3/5 points at once",
            source="OpenGVLab/SAM-Med2D test.py:34 --point_num, utils.py:147-158 init_point_sampling",
        ),
        Protocol(
            "sam_med2d_iterative", "clicks", (1, 2, 3, 4, 5), (1, 3, 5), model_dims=frozenset({2}),
            title="SAM-Med2D: iterative points",
            source="OpenGVLab/SAM-Med2D test.py:35 --iter_point, test.py:171-179",
        ),
        Protocol(
            "sam_unet_box", "box", (1,), (1,), region="largest", model_dims=frozenset({2}),
            title="SAM-UNet: box of the largest component of the original mask",
            source="Hhankyangg/sam-unet dataset.py:78-79 (max_pixel=0), test_model_on_test_set_total.py",
        ),
        Protocol(
            "litemedsam_box", "box", (1,), (1,), region="all", model_dims=frozenset({2}),
            title="LiteMedSAM: box around the whole label, per slice",
            source="bowang-lab/MedSAM (LiteMedSAM) CVPR24_LiteMedSAM_infer.py, MedSAM_infer_npz_2D",
        ),
        Protocol(
            "litemedsam_box3d", "box_propagation", (1,), (1,), region="all", model_dims=frozenset({2}),
            title="LiteMedSAM: 3D box propagated slice by slice",
            source="bowang-lab/MedSAM (LiteMedSAM) CVPR24_LiteMedSAM_infer.py, MedSAM_infer_npz_3D",
        ),
    )
}


def get_protocol(spec: str | Mapping[str, Any]) -> Protocol:
    """A named protocol, or one with its clicks/points changed: ``"sam_med3d"`` or
    ``{"name": "sam_med3d", "clicks": 5}`` / ``{"name": "sam_med2d_points", "points": [1, 3]}``; 3D click protocols
    also take ``large_object`` (``single_crop``, the default, or ``follow_mask``) and ``max_crops``:
    ``{"name": "sam_med3d", "clicks": 10, "large_object": "follow_mask", "max_crops": 8}``."""
    if isinstance(spec, str):
        values: dict[str, Any] = {"name": spec}
    else:
        values = dict(spec)
    name = values.pop("name", None)
    if name not in PROTOCOLS:
        raise ValueError(f"unknown protocol {name!r}; known: {', '.join(PROTOCOLS)}")
    protocol = PROTOCOLS[name]
    clicks, points = values.pop("clicks", None), values.pop("points", None)
    large_object, max_crops = values.pop("large_object", None), values.pop("max_crops", None)
    if values:
        raise ValueError(f"protocol {name}: unknown settings {sorted(values)} "
                         "(known: clicks, points, large_object, max_crops)")
    if clicks is not None:
        protocol = protocol.with_clicks(int(clicks))
    if points is not None:
        protocol = protocol.with_points(tuple(points))
    if max_crops is not None and (large_object or protocol.large_object) == "single_crop":
        raise ValueError(f"protocol {name}: max_crops applies to large_object: follow_mask")
    if large_object is not None or max_crops is not None:
        protocol = protocol.with_large_object(str(large_object or protocol.large_object), max_crops)
    return protocol


def not_applicable_reason(protocol: Protocol, processor: Processor, case_kind: CaseKind) -> str | None:
    """Why ``protocol`` cannot run with this model on this kind of case (None: it can)."""
    name, dims = processor.model_name, processor.spatial_dims
    if protocol.prompt_kind not in processor.prompt_kinds:
        kinds = ", ".join(sorted(processor.prompt_kinds))
        return f"{name} takes no {protocol.prompt_kind} prompts (it takes {kinds})"
    if case_kind == "image" and dims == 3:
        return f"{name} is a 3D model; these are 2D images"
    if dims not in protocol.model_dims:
        return f"{protocol.name} is a protocol for {'/'.join(f'{d}D' for d in sorted(protocol.model_dims))} models"
    if protocol.kind == "box_propagation" and case_kind != "volume":
        return "3D box propagation needs a volume"
    return None


__all__ = ["PROTOCOLS", "BoxRegion", "CaseKind", "Protocol", "ProtocolKind", "get_protocol", "not_applicable_reason"]
