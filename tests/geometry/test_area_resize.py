"""zoo.geometry.area_resize against OpenCV itself (the oracle): every pixel equal, in every regime."""

import subprocess
import sys

import cv2
import numpy as np
import pytest

from zoo.geometry.area_resize import resize_area
from zoo.geometry.image2d import longest_side_shape as longest_side_size


def _image(rng: np.random.Generator, height: int, width: int, channels: int) -> np.ndarray:
    shape = (height, width) if channels == 0 else (height, width, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _assert_same_as_opencv(image: np.ndarray, height: int, width: int) -> None:
    expected = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)
    ours = resize_area(image, height, width)
    assert ours.shape == expected.shape and ours.dtype == np.uint8
    differ = ours != expected
    assert not differ.any(), (
        f"{image.shape} -> {(height, width)}: {int(differ.sum())} values differ, first at "
        f"{tuple(int(i) for i in np.argwhere(differ)[0])}"
    )


@pytest.mark.parametrize("channels", [0, 3, 4], ids=["grey", "rgb", "rgba"])
@pytest.mark.parametrize(
    ("source", "target"),
    [
        ((64, 48), (32, 24)),  # 2x2 blocks: OpenCV's vector path rounds halves up
        ((63, 60), (21, 20)),  # 3x3 blocks: cvRound(sum * (1.f / 9)), halves to even
        ((40, 90), (20, 30)),  # 2 x 3 blocks
        ((37, 53), (24, 17)),  # non-integer shrink: overlap weights in float32
        ((512, 384), (256, 192)),
        ((101, 122), (212, 256)),  # enlarge: the LiteMedSAM fixture's slice
        ((17, 69), (86, 101)),
        ((45, 37), (11, 103)),  # shrink one axis, enlarge the other
        ((1, 1), (7, 5)),
        ((1, 40), (1, 256)),
        ((300, 1), (256, 1)),
        ((9, 7), (1, 1)),
        ((5, 5), (5, 5)),
    ],
)
def test_named_regimes_match_opencv(source, target, channels):
    rng = np.random.default_rng(hash((source, target, channels)) % 2**32)
    _assert_same_as_opencv(_image(rng, *source, channels), *target)


def test_random_sizes_match_opencv():
    rng = np.random.default_rng(0)
    for _ in range(300):
        height, width, new_height, new_width = (int(v) for v in rng.integers(1, 90, 4))
        channels = int(rng.choice([0, 3]))
        _assert_same_as_opencv(_image(rng, height, width, channels), new_height, new_width)


def test_longest_side_resizes_to_256_match_opencv():
    rng = np.random.default_rng(1)
    for _ in range(40):
        height, width = (int(v) for v in rng.integers(1, 700, 2))
        _assert_same_as_opencv(_image(rng, height, width, 3), *longest_side_size(height, width, 256))


def test_longest_side_size_rounds_like_the_authors():
    assert longest_side_size(101, 122, 256) == (212, 256)
    for height, width in [(512, 512), (333, 1000), (1, 999), (700, 3)]:
        scale = 256 / max(height, width)
        assert longest_side_size(height, width, 256) == (int(height * scale + 0.5), int(width * scale + 0.5))


def test_a_single_channel_third_axis_is_kept():
    image = np.arange(24, dtype=np.uint8).reshape(4, 6, 1)
    assert resize_area(image, 2, 3).shape == (2, 3, 1)
    assert np.array_equal(resize_area(image, 2, 3)[:, :, 0], resize_area(image[:, :, 0], 2, 3))


@pytest.mark.parametrize(
    ("image", "size", "problem"),
    [
        (np.zeros((4, 4), dtype=np.float32), (2, 2), "expected a uint8"),
        (np.zeros((4,), dtype=np.uint8), (2, 2), "expected a uint8"),
        (np.zeros((4, 4), dtype=np.uint8), (0, 2), "sizes must be positive"),
    ],
)
def test_bad_input_is_refused(image, size, problem):
    with pytest.raises(ValueError, match=problem):
        resize_area(image, *size)


def test_the_product_code_does_not_import_opencv():
    code = "import sys, zoo.geometry.area_resize; print('cv2' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
