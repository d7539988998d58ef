"""Batched mask geometry the prompt simulators build on: bounding boxes, connected components, distances.

Masks are ``B x *spatial`` (2D or 3D) and anything non-zero counts as foreground.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.transforms.utils import distance_transform_edt
from scipy import ndimage
from torch import Tensor


def bounding_boxes(mask: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Tight box of every sample's foreground.

    Returns ``lo`` and ``hi`` (``B x D`` int64; ``hi`` exclusive, i.e. last index + 1) and ``nonempty`` (``B`` bool).
    Empty samples get ``lo = hi = 0``.
    """
    foreground = mask.bool()
    ndim = foreground.ndim - 1
    lo = torch.zeros(foreground.shape[0], ndim, dtype=torch.int64, device=mask.device)
    hi = torch.zeros_like(lo)
    nonempty = foreground.flatten(1).any(dim=1)
    for axis in range(ndim):
        others = [d + 1 for d in range(ndim) if d != axis]
        occupied = foreground.any(dim=others) if others else foreground
        index = torch.arange(occupied.shape[1], device=mask.device).expand_as(occupied)
        first = torch.where(occupied, index, occupied.shape[1]).amin(dim=1)
        last = torch.where(occupied, index, -1).amax(dim=1)
        lo[:, axis] = torch.where(nonempty, first, 0)
        hi[:, axis] = torch.where(nonempty, last + 1, 0)
    return lo, hi, nonempty


def largest_component(mask: Tensor) -> Tensor:
    """Keep only the largest connected component of each sample (``B x *spatial`` bool, same device).

    Connectivity is full (8 neighbours in 2D, 26 in 3D), as ``skimage.measure.label``'s default that SAM-Med2D
    and SAM-UNet use for their box prompts. Equal sizes are broken towards the component met first in raster
    order. Empty samples stay empty. Labelling runs on the CPU with ``scipy.ndimage``.
    """
    host = mask.bool().cpu().numpy()
    structure = ndimage.generate_binary_structure(host.ndim - 1, host.ndim - 1)
    kept = np.zeros_like(host)
    for i, sample in enumerate(host):
        labelled, count = ndimage.label(sample, structure=structure)
        if count > 1:
            sizes = np.bincount(labelled.ravel())
            sizes[0] = 0
            kept[i] = labelled == int(np.argmax(sizes))
        else:
            kept[i] = sample
    return torch.from_numpy(kept).to(mask.device)


def interior_distance(mask: Tensor) -> Tensor:
    """Euclidean distance (in elements) from each foreground element to the nearest background element.

    The outside of the array counts as background, so a region touching the border is not "deep" there
    (SAM-Med3D's 'ritm' clicks use the same ``black_border`` rule). ``B x *spatial`` float32 on the input's
    device; 0 on background. MONAI picks scipy on the CPU and cuCIM on the GPU when it is installed.
    """
    foreground = mask.bool()
    padded = torch.nn.functional.pad(foreground.to(torch.uint8), [1, 1] * (foreground.ndim - 1))
    distances = distance_transform_edt(padded, float64_distances=True)
    distances = torch.as_tensor(distances, device=mask.device)
    inner = tuple(slice(None) if d == 0 else slice(1, -1) for d in range(foreground.ndim))
    return distances[inner].to(torch.float32).contiguous()
