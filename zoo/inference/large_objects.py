"""Objects larger than one SAM-Med3D crop: further crops that follow the mask, blended without seams.

SAM-Med3D sees one ``S^3`` crop (128^3 voxels at 1.5 mm, 192 mm): an organ larger than that (a liver, a lung) is
cut at the crop's edge. Two strategies:

* ``"single_crop"`` (the default): the authors' inference, one crop around the points, exact (the parity suite's).
* ``"follow_mask"``: after the first crop (the authors' crop around the points), every face of a crop that the
  crop's mask touches (comes within one low-res cell of: 4 voxels), and beyond which the volume goes on, gets a
  neighbour crop shifted by half a crop along that axis (50% overlap, the extension the paper describes in its
  Sec. 4.3; peers do the same: VISTA3D's point-centred windows, nnInteractive's AutoZoom, SegVol's
  zoom-out/zoom-in). Crop positions lie on one lattice per axis (the first crop's, every half crop, the outermost
  moved onto the volume's ends), so crops never drift. Each further crop goes through the processor
  (:meth:`~zoo.processors.SamMed3DProcessor.prepare_window`: the same resampling, padding and z-normalisation of
  its own crop) and gets, as clicks replayed in order (the processor's ``segment``), a positive **seed** click on
  the voxel of the neighbouring crop's mask nearest to the new crop's centre, then the user's clicks that fall
  inside it. The crops' logits (upsampled to each crop) are merged on the resampled grid by MONAI's Gaussian
  sliding-window blending (``compute_importance_map(mode="gaussian", sigma_scale=0.125)``; the weighted mean of
  the overlapping logits), thresholded by the family's rule, and pasted back onto the file's grid once, with the
  same nearest-neighbour rule as one crop. It stops when no crop's mask touches a face with volume beyond it, or
  at ``max_crops`` crops (then ``complete`` is False). A mask that stays inside the first crop gives exactly the
  single-crop result.

Tiling knows nothing of the model: the caller passes ``run_crop(frame, prompts) -> low-res logits``, which encodes
(or takes a cached encoding of) the frame and decodes.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.geometry.grid3d import CropWindow
from zoo.processors import ImageFrame, Processor
from zoo.processors.volume3d import paste_back_nearest, plan_for
from zoo.prompts.types import PointPrompts, Prompts

STRATEGIES = ("single_crop", "follow_mask")

Start = tuple[int, int, int]
RunCrop = Callable[[ImageFrame, Prompts], Tensor]


@dataclass(frozen=True)
class LargeObjects:
    """How a 3D model handles an object larger than its crop (see the module docstring).

    Attributes:
        strategy: ``"single_crop"`` (the authors', exact) or ``"follow_mask"``.
        max_crops: the most crops one object may use, the first included (the size limit).
        overlap: the share of a crop that its neighbour overlaps (0.5: shifted by half a crop).
        sigma_scale: the Gaussian blending weights' sigma as a share of the crop size (MONAI's default 0.125).
    """

    strategy: str = "single_crop"
    max_crops: int = 8
    overlap: float = 0.5
    sigma_scale: float = 0.125

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"large-object strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if self.max_crops < 1:
            raise ValueError(f"max_crops must be at least 1, got {self.max_crops}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")

    @classmethod
    def of(cls, value: str | LargeObjects | None) -> LargeObjects:
        """A strategy from its name (``None``: the default single crop)."""
        if isinstance(value, LargeObjects):
            return value
        return cls() if value is None else cls(strategy=value)


@dataclass
class LargeObjectResult:
    """A mask on the original grid and how it was made.

    Attributes:
        mask: bool mask on the file's grid.
        strategy: the strategy that ran.
        crops: the first voxel of each crop on the resampled (canonical) grid, in the order they ran.
        complete: False when ``max_crops`` stopped the strategy while a crop's mask still touched a face with
            volume beyond it (the object may be cut there).
    """

    mask: Tensor
    strategy: str
    crops: list[Start] = field(default_factory=list)
    complete: bool = True


def crop_start(frame: ImageFrame) -> Start:
    """The first voxel of a SAM-Med3D frame's crop on the resampled, reoriented grid."""
    start = frame.meta["crop_start"]
    return int(start[0]), int(start[1]), int(start[2])


def follow_mask(
    processor: Processor,
    volume: Any,
    first_frame: ImageFrame,
    first_low_res: Tensor,
    points: PointPrompts | None,
    run_crop: RunCrop,
    options: LargeObjects,
    source: str = "volume",
) -> LargeObjectResult:
    """Run ``options.strategy`` from the first crop's result (see the module docstring).

    Args:
        processor: a 3D processor with ``prepare_window`` (SAM-Med3D's).
        volume: the volume ``first_frame`` was prepared from (what ``processor.prepare`` takes).
        first_frame, first_low_res: the authors' crop around the points and its ``1 x 1 x *low_res`` logits.
        points: the user's clicks on the file's grid (index order), given to every further crop they fall in.
        run_crop: encodes (or reuses) a frame's embedding and segments prompts given on the file's grid; returns
            ``1 x 1 x *low_res`` logits.
        options: the strategy and its limits.
    """
    start0 = crop_start(first_frame)
    if options.strategy == "single_crop":
        return LargeObjectResult(processor.to_original(first_low_res, first_frame).mask, "single_crop", [start0])
    plan = plan_for(volume, processor.config.target_spacing_mm, processor.config.max_resampled_bytes)
    grid_shape: Start = plan.canonical.shape
    size: Start = tuple(int(s) for s in processor.input_shape)  # type: ignore[assignment]
    original_affine = np.asarray(first_frame.meta["original_affine"], dtype=np.float64)
    to_canonical = np.linalg.inv(plan.canonical.affine) @ original_affine
    user = _user_points(points, to_canonical)
    lattice = [_positions(start0[a], size[a], grid_shape[a], options.overlap) for a in range(3)]
    low_res_shape = first_low_res.shape[-3:]
    bands = [max(1, size[a] // int(low_res_shape[a])) for a in range(3)]  # one low-res cell: 4 voxels

    logits: dict[Start, Tensor] = {start0: processor.upsample(first_low_res.float())[0, 0].cpu()}
    masks: dict[Start, Tensor] = {start0: processor.binarize(logits[start0])}
    queue = deque((start0, nxt) for nxt in _neighbours(start0, masks[start0], size, grid_shape, lattice, bands))
    while queue and len(logits) < options.max_crops:
        parent, start = queue.popleft()
        if start in logits:
            continue
        seed = _seed(parent, masks[parent], start, size)
        if seed is None:
            continue
        canonical_points, labels = [seed], [1]
        for point, label in user:
            if all(s - 0.5 <= c <= s + n - 0.5 for c, s, n in zip(point, start, size)):
                canonical_points.append(point)
                labels.append(label)
        frame = processor.prepare_window(volume, start, source)
        prompts = Prompts(points=_on_original(canonical_points, labels, to_canonical, first_frame.original_shape))
        low_res = run_crop(frame, prompts)
        logits[start] = processor.upsample(low_res.float())[0, 0].cpu()
        masks[start] = processor.binarize(logits[start])
        queue.extend((start, nxt) for nxt in _neighbours(start, masks[start], size, grid_shape, lattice, bands))
    complete = all(start in logits for _, start in queue)
    crops = list(logits)
    if len(crops) == 1:  # the mask stayed inside the first crop: the authors' result, exactly
        mask = processor.to_original(first_low_res, first_frame).mask
        return LargeObjectResult(mask, "follow_mask", crops, complete)
    mask = _blend_and_paste(processor, logits, size, grid_shape, plan.canonical.affine, original_affine,
                            first_frame.original_shape, options.sigma_scale)
    return LargeObjectResult(mask, "follow_mask", crops, complete)


def _user_points(points: PointPrompts | None, to_canonical: np.ndarray) -> list[tuple[np.ndarray, int]]:
    if points is None:
        return []
    real = ~points.is_padding[0]
    coords = points.coords[0][real].to(torch.float64).cpu().numpy()
    labels = points.labels[0][real].cpu().tolist()
    canonical = coords @ to_canonical[:3, :3].T + to_canonical[:3, 3]
    return [(c, int(label)) for c, label in zip(canonical, labels)]


def _on_original(
    canonical: Sequence[np.ndarray], labels: list[int], to_canonical: np.ndarray, shape: Sequence[int]
) -> PointPrompts:
    """Canonical points as clicks on the file's grid (clipped onto its voxels: the seed comes from a crop's mask)."""
    back = np.linalg.inv(to_canonical)
    coords = np.stack([np.asarray(c, dtype=np.float64) for c in canonical])
    original = coords @ back[:3, :3].T + back[:3, 3]
    original = np.clip(original, 0.0, np.asarray(shape, dtype=np.float64) - 1.0)
    return PointPrompts(
        torch.from_numpy(original).to(torch.float32)[None],
        torch.tensor(labels, dtype=torch.int64)[None],
        tuple(int(s) for s in shape),
    )


def _positions(first: int, size: int, grid: int, overlap: float) -> list[int]:
    """The crop positions along one axis: the first crop's, then every ``size * (1 - overlap)`` voxels both ways,
    the outermost moved onto the volume's ends (a crop never starts past them, except the first, which is the
    authors')."""
    step = max(1, int(round(size * (1.0 - overlap))))
    low, high = min(0, grid - size, first), max(0, grid - size, first)
    inner = {first + k * step for k in range(-(grid // step) - 2, grid // step + 3)}
    kept = {p for p in inner if low + step / 2 <= p <= high - step / 2}
    return sorted(kept | {first, low, high})


def _neighbours(
    start: Start, mask: Tensor, size: Start, grid: Start, lattice: list[list[int]], bands: Sequence[int]
) -> list[Start]:
    """Crops beyond each face of ``mask``'s crop that the mask touches (comes within ``bands`` voxels of) and
    beyond which the volume goes on."""
    out = []
    for axis in range(3):
        positions = lattice[axis]
        index = positions.index(start[axis])
        for side in (-1, 1):
            band = bands[axis]
            face = mask.narrow(axis, 0 if side < 0 else size[axis] - band, band)
            beyond = start[axis] > 0 if side < 0 else start[axis] + size[axis] < grid[axis]
            if not beyond or not bool(face.any()) or not 0 <= index + side < len(positions):
                continue
            nxt = list(start)
            nxt[axis] = positions[index + side]
            out.append((nxt[0], nxt[1], nxt[2]))
    return out


def _seed(parent: Start, mask: Tensor, start: Start, size: Start) -> np.ndarray | None:
    """The voxel of the parent crop's mask inside the new crop that lies nearest the new crop's centre (canonical
    indices), or None when the mask has no voxel there."""
    lo = [max(p, s) for p, s in zip(parent, start)]
    hi = [min(p + n, s + n) for p, s, n in zip(parent, start, size)]
    if any(h <= l for l, h in zip(lo, hi)):
        return None
    block = mask[tuple(slice(l - p, h - p) for l, h, p in zip(lo, hi, parent))]
    found = torch.nonzero(block).to(torch.float64)
    if found.numel() == 0:
        return None
    found += torch.tensor(lo, dtype=torch.float64)
    centre = torch.tensor([s + (n - 1) / 2 for s, n in zip(start, size)], dtype=torch.float64)
    nearest = int(torch.argmin(((found - centre) ** 2).sum(dim=1)))
    return found[nearest].numpy()


def gaussian_weights(size: Sequence[int], sigma_scale: float) -> Tensor:
    """MONAI's sliding-window importance map (``mode="gaussian"``): the weight of each voxel of a crop."""
    from monai.data.utils import compute_importance_map

    return compute_importance_map(tuple(int(s) for s in size), mode="gaussian", sigma_scale=sigma_scale,
                                  device="cpu").to(torch.float32)


def _blend_and_paste(
    processor: Processor,
    logits: dict[Start, Tensor],
    size: Start,
    grid: Start,
    canonical_affine: np.ndarray,
    original_affine: np.ndarray,
    original_shape: Sequence[int],
    sigma_scale: float,
) -> Tensor:
    """Gaussian-weighted mean of the crops' logits on the canonical grid (over the crops' union box), the family's
    threshold, then the nearest-neighbour paste-back onto the file's grid."""
    lo = [max(0, min(s[a] for s in logits)) for a in range(3)]
    hi = [min(grid[a], max(s[a] + size[a] for s in logits)) for a in range(3)]
    extent = [h - l for l, h in zip(lo, hi)]
    total = torch.zeros(extent, dtype=torch.float32)
    weight = torch.zeros(extent, dtype=torch.float32)
    weights = gaussian_weights(size, sigma_scale)
    for start, values in logits.items():
        a = [max(s, l) for s, l in zip(start, lo)]
        b = [min(s + n, h) for s, n, h in zip(start, size, hi)]
        if any(y <= x for x, y in zip(a, b)):
            continue
        inside = tuple(slice(x - s, y - s) for x, y, s in zip(a, b, start))
        target = tuple(slice(x - l, y - l) for x, y, l in zip(a, b, lo))
        total[target] += weights[inside] * values[inside]
        weight[target] += weights[inside]
    covered = weight > 0
    merged = torch.where(covered, total / weight.clamp(min=1e-12), torch.full_like(total, -1e4))
    mask = processor.binarize(merged) & covered
    window = CropWindow((lo[0], lo[1], lo[2]), (extent[0], extent[1], extent[2]), grid)
    canvas_affine = torch.as_tensor(window.affine(canonical_affine), dtype=torch.float64)
    return paste_back_nearest(mask, canvas_affine, torch.as_tensor(original_affine), tuple(original_shape))


__all__ = ["STRATEGIES", "LargeObjectResult", "LargeObjects", "crop_start", "follow_mask", "gaussian_weights"]
