"""Reading 2D PNG images and object masks, with bad files turned into :class:`~zoo.errors.DataError`."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from zoo.errors import DataError

# PIL modes holding 8-bit samples; they convert to 3-channel RGB as cv2.imread(..., IMREAD_COLOR) would.
_EIGHT_BIT_IMAGE_MODES = {"L", "LA", "P", "RGB", "RGBA"}
_MASK_MODES = {"1", "L", "P"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I", "F"}


def _open(path: Path) -> Image.Image:
    if not path.is_file():
        raise DataError(path, "file not found")
    try:
        image = Image.open(path)
        image.load()
    except Exception as exc:  # PIL raises OSError, SyntaxError, ValueError... for broken files
        problem = f"cannot read the image; it is truncated or not an image ({type(exc).__name__}: {exc})"
        raise DataError(path, problem) from exc
    return image


class AlphaDroppedWarning(UserWarning):
    """An image's alpha channel was dropped: the models take RGB."""


def read_image(path: str | Path) -> np.ndarray:
    """An 8-bit image as ``H x W x 3`` uint8 RGB (grey replicated; an alpha channel is dropped with a warning)."""
    file = Path(path)
    image = _open(file)
    if image.mode not in _EIGHT_BIT_IMAGE_MODES:
        if image.mode in _SIXTEEN_BIT_MODES:
            hint = (
                "it holds 16-bit samples; window or rescale them to 0..255 and save an 8-bit PNG "
                "(e.g. numpy: ((a - lo) / (hi - lo) * 255).clip(0, 255).astype('uint8')), or give the volume as NIfTI"
            )
        else:
            hint = "convert it to 8-bit grey or RGB first (e.g. PIL: Image.open(path).convert('RGB').save(...))"
        raise DataError(file, f"expected an 8-bit grey or RGB image, got PIL mode {image.mode!r}: {hint}")
    if image.mode in ("LA", "RGBA") or (image.mode == "P" and "transparency" in image.info):
        warnings.warn(f"{file}: the alpha channel is dropped (the models take RGB)", AlphaDroppedWarning, stacklevel=2)
    return np.array(image.convert("RGB"))


def read_mask(path: str | Path) -> np.ndarray:
    """A single-object mask (single channel, values {0, 255} or {0, 1}) as ``H x W`` bool; empty is an error."""
    file = Path(path)
    image = _open(file)
    if image.mode not in _MASK_MODES:
        raise DataError(file, f"expected a single-channel mask, got PIL mode {image.mode!r}")
    values = np.asarray(image)
    if image.mode == "1":
        mask = values.astype(bool)
    else:
        present = np.unique(values)
        foreground = 255 if present.max(initial=0) == 255 else 1
        if not set(present.tolist()) <= {0, foreground}:
            raise DataError(file, f"mask values must be 0/255 or 0/1, found {present[:10].tolist()}")
        mask = values == foreground
    if not mask.any():
        raise DataError(file, "mask is empty (no foreground pixel)")
    return mask
