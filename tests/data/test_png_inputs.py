"""2D image files the models cannot take unchanged are refused or flagged, with how to convert them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from zoo.errors import DataError
from zoo.io.png import AlphaDroppedWarning, read_image


def test_a_16_bit_png_is_refused_with_how_to_convert_it(tmp_path: Path) -> None:
    path = tmp_path / "slice16.png"
    Image.fromarray(np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 10).save(path)
    with pytest.raises(DataError, match=r"slice16\.png: expected an 8-bit grey or RGB image.*16-bit samples.*255"):
        read_image(path)


def test_an_rgba_png_loses_its_alpha_channel_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "rgba.png"
    pixels = np.zeros((8, 8, 4), dtype=np.uint8)
    pixels[..., 0], pixels[..., 3] = 200, 128
    Image.fromarray(pixels, mode="RGBA").save(path)
    with pytest.warns(AlphaDroppedWarning, match=r"rgba\.png: the alpha channel is dropped"):
        image = read_image(path)
    assert image.shape == (8, 8, 3) and int(image[0, 0, 0]) == 200


def test_an_rgb_png_reads_without_warning(tmp_path: Path, recwarn) -> None:
    path = tmp_path / "rgb.png"
    Image.fromarray(np.full((4, 4, 3), 7, dtype=np.uint8)).save(path)
    assert read_image(path).shape == (4, 4, 3)
    assert not [w for w in recwarn if issubclass(w.category, AlphaDroppedWarning)]
