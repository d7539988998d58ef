"""Overlay pictures (image, label outline, predicted mask) as PNG files, drawn with Pillow."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

LABEL_COLOUR = (0, 255, 0)
PREDICTION_COLOUR = (255, 40, 40)
BOX_COLOUR = (60, 140, 255)


def _outline(mask: np.ndarray) -> np.ndarray:
    return mask & ~ndimage.binary_erosion(mask)


def overlay(
    image: np.ndarray, label: np.ndarray, prediction: np.ndarray, box: Sequence[float] | None = None, alpha: float = 0.45
) -> Image.Image:
    """An ``H x W x 3`` uint8 image with the prediction filled (red), the label outlined (green) and the box."""
    canvas = image.astype(np.float32).copy()
    fill = prediction.astype(bool)
    canvas[fill] = (1 - alpha) * canvas[fill] + alpha * np.array(PREDICTION_COLOUR, dtype=np.float32)
    canvas[_outline(label.astype(bool))] = LABEL_COLOUR
    picture = Image.fromarray(canvas.clip(0, 255).astype(np.uint8))
    if box is not None:
        ImageDraw.Draw(picture).rectangle(list(box), outline=BOX_COLOUR)
    return picture


def side_by_side(pictures: Sequence[Image.Image], titles: Sequence[str], scale: int = 2) -> Image.Image:
    """Pictures of equal size next to each other, enlarged ``scale`` times, each with its title above."""
    width, height = pictures[0].size
    header = 14
    sheet = Image.new("RGB", (len(pictures) * width * scale, height * scale + header), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (picture, title) in enumerate(zip(pictures, titles)):
        sheet.paste(picture.resize((width * scale, height * scale), Image.Resampling.NEAREST), (i * width * scale, header))
        draw.text((i * width * scale + 3, 1), title, fill=(0, 0, 0))
    return sheet


def save_png(picture: Image.Image, path: Path) -> Path:
    """Write a PNG (its folder created), returning the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path, format="PNG")
    return path
