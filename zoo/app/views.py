"""What the app shows and where a click lands: the three views of a volume (or the one view of a 2D image), their
display scaling, intensity windows, and the mask overlay with the prompts drawn on it.

The views follow :mod:`zoo.data.slicer`'s radiological display: the volume is reoriented to RAS by axis
permutations and flips only (no resampling, every displayed pixel is one voxel); axial and coronal views show the
patient's right on the image's left, axial views anterior at the top, coronal and sagittal views superior at the top,
sagittal views anterior on the left. Each view is then stretched by nearest neighbour so that one displayed pixel
covers the same millimetres along rows and columns (non-isotropic voxels are shown in their true proportions), and
:meth:`VolumeGeometry.to_voxel` inverts exactly the mapping :meth:`VolumeGeometry.render` draws with: the voxel a
click returns is the voxel displayed under it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import nibabel as nib
import numpy as np
from PIL import Image, ImageDraw

from zoo.data.slicer import to_uint8 as slicer_to_uint8

VIEWS = ("axial", "coronal", "sagittal")
IMAGE_VIEW = "image"
#: view -> (sliced RAS axis, RAS axis along displayed rows, RAS axis along displayed columns); both in-plane axes
#: are displayed reversed (rows run anterior->posterior or superior->inferior, columns right->left or A->P).
PLANES: dict[str, tuple[int, int, int]] = {"axial": (2, 1, 0), "coronal": (1, 2, 0), "sagittal": (0, 2, 1)}
#: CT windows (lower, upper) in HU; None: the volume's 0.5-99.5 percentile range.
WINDOWS: dict[str, tuple[float, float] | None] = {
    "abdomen (W400 L40)": (-160.0, 240.0),
    "liver (W150 L30)": (-45.0, 105.0),
    "lung (W1500 L-600)": (-1350.0, 150.0),
    "bone (W1800 L400)": (-500.0, 1300.0),
    "brain (W80 L40)": (0.0, 80.0),
    "auto (0.5-99.5 percentile)": None,
}
CT_WINDOW, AUTO_WINDOW = "abdomen (W400 L40)", "auto (0.5-99.5 percentile)"
#: The longest side of a displayed view, in screen pixels: at least this (smaller images are magnified), more where
#: one voxel or pixel per screen pixel needs more, up to MAX_DISPLAY_SIZE (the browser scales the picture down).
DISPLAY_SIZE = 448
MAX_DISPLAY_SIZE = 2048
MASK_COLOUR = (255, 140, 0)
MASK_ALPHA = 0.45
POSITIVE_COLOUR, NEGATIVE_COLOUR, BOX_COLOUR = (0, 230, 0), (255, 40, 40), (255, 230, 0)


def default_window(array: np.ndarray) -> str:
    """The abdomen window for what looks like CT (air near -1000 HU), else the percentile range."""
    return CT_WINDOW if array.size and float(array.min()) < -500.0 else AUTO_WINDOW


def to_uint8(array: np.ndarray, window: tuple[float, float] | None) -> np.ndarray:
    """Intensities to 0..255 by MedSAM's rule (what the 2D models were trained on, and what ``zoo predict`` gives
    them): clip to the window (or the 0.5-99.5 percentile range), min-max of the clipped values, truncate."""
    return slicer_to_uint8(array, window, rule="medsam")


def _stretch(rows: int, cols: int, row_mm: float, col_mm: float, pixel_mm: float) -> tuple[int, int]:
    return max(1, round(rows * row_mm / pixel_mm)), max(1, round(cols * col_mm / pixel_mm))


def _source_index(displayed: np.ndarray, count: int, size: int) -> np.ndarray:
    """Nearest neighbour: displayed pixel -> index of the array pixel it shows (the one rule, drawing and clicks).

    Screen pixels are integer indices, as the browser reports a click (Gradio rounds to the nearest pixel)."""
    return np.clip(np.floor((displayed + 0.5) * count / size).astype(np.int64), 0, count - 1)


def _centre(row: float, col: float, shape: tuple[int, int], shown: tuple[int, int]) -> tuple[int, int]:
    (rows, cols), (height, width) = shape, shown
    return int(np.floor((col + 0.5) * width / cols)), int(np.floor((row + 0.5) * height / rows))


@dataclass(frozen=True)
class Marker:
    """A prompt drawn on a view: a click (``positive`` or not) or a box corner pair, in array (row, col) pixels of
    one view's slice."""

    view: str
    slice_index: int
    points: tuple[tuple[float, float], ...]  # (row, col) per point; a box has two
    kind: str = "click"  # "click", "box" or "corner" (the first corner of a box being drawn)
    positive: bool = True


@dataclass
class VolumeGeometry:
    """The file's voxel grid and how each view displays it (see the module docstring).

    Args:
        shape: the file's voxel shape (3D).
        affine: its index-to-world (RAS mm) affine.
        display_size: the longest displayed side over the three views, in screen pixels.
    """

    shape: tuple[int, int, int]
    affine: np.ndarray
    display_size: int = DISPLAY_SIZE
    ornt: np.ndarray = field(init=False, repr=False)
    ras_shape: tuple[int, int, int] = field(init=False)
    ras_spacing: tuple[float, float, float] = field(init=False)
    pixel_mm: float = field(init=False)

    def __post_init__(self) -> None:
        self.shape = tuple(int(s) for s in self.shape)  # type: ignore[assignment]
        self.affine = np.asarray(self.affine, dtype=np.float64)
        self.ornt = nib.orientations.io_orientation(self.affine)
        spacing = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        ras_shape, ras_spacing = [0, 0, 0], [0.0, 0.0, 0.0]
        for axis, (ras_axis, _) in enumerate(self.ornt):
            ras_shape[int(ras_axis)], ras_spacing[int(ras_axis)] = self.shape[axis], float(spacing[axis])
        self.ras_shape = tuple(ras_shape)  # type: ignore[assignment]
        self.ras_spacing = tuple(ras_spacing)  # type: ignore[assignment]
        extent = max(n * s for n, s in zip(self.ras_shape, self.ras_spacing))
        # At least one screen pixel per voxel (every voxel can be clicked), at most MAX_DISPLAY_SIZE on a side.
        self.pixel_mm = max(min(extent / self.display_size, min(self.ras_spacing)), extent / MAX_DISPLAY_SIZE)

    # ------------------------------------------------------------------------------------------ indices
    def slice_count(self, view: str) -> int:
        return self.ras_shape[PLANES[view][0]]

    def view_shape(self, view: str) -> tuple[int, int]:
        """(rows, columns) of one slice of ``view`` in voxels."""
        _, row_axis, col_axis = PLANES[view]
        return self.ras_shape[row_axis], self.ras_shape[col_axis]

    def pixel_spacing(self, view: str) -> tuple[float, float]:
        """(row, column) voxel size of ``view`` in mm."""
        _, row_axis, col_axis = PLANES[view]
        return self.ras_spacing[row_axis], self.ras_spacing[col_axis]

    def display_shape(self, view: str) -> tuple[int, int]:
        """(height, width) of the displayed view in screen pixels (true proportions)."""
        return _stretch(*self.view_shape(view), *self.pixel_spacing(view), self.pixel_mm)

    def to_ras_index(self, voxel: Sequence[int]) -> tuple[int, int, int]:
        ras = [0, 0, 0]
        for axis, (ras_axis, flip) in enumerate(self.ornt):
            value = int(voxel[axis])
            ras[int(ras_axis)] = value if flip > 0 else self.shape[axis] - 1 - value
        return tuple(ras)  # type: ignore[return-value]

    def from_ras_index(self, ras: Sequence[int]) -> tuple[int, int, int]:
        voxel = [0, 0, 0]
        for axis, (ras_axis, flip) in enumerate(self.ornt):
            value = int(ras[int(ras_axis)])
            voxel[axis] = value if flip > 0 else self.shape[axis] - 1 - value
        return tuple(voxel)  # type: ignore[return-value]

    def pixel_to_voxel(self, view: str, slice_index: int, row: int, col: int) -> tuple[int, int, int]:
        """The file voxel ``(i, j, k)`` shown at array pixel (``row``, ``col``) of slice ``slice_index``."""
        sliced, row_axis, col_axis = PLANES[view]
        ras = [0, 0, 0]
        ras[sliced] = int(slice_index)
        ras[row_axis] = self.ras_shape[row_axis] - 1 - int(row)
        ras[col_axis] = self.ras_shape[col_axis] - 1 - int(col)
        return self.from_ras_index(ras)

    def voxel_to_pixel(self, view: str, voxel: Sequence[int]) -> tuple[int, int, int]:
        """(slice, row, col) at which ``view`` shows the file voxel ``voxel``."""
        sliced, row_axis, col_axis = PLANES[view]
        ras = self.to_ras_index(voxel)
        return ras[sliced], self.ras_shape[row_axis] - 1 - ras[row_axis], self.ras_shape[col_axis] - 1 - ras[col_axis]

    def display_to_pixel(self, view: str, x: float, y: float) -> tuple[int, int]:
        """A click at screen pixel (``x``, ``y``) of the displayed view -> the (row, col) of the slice it shows."""
        rows, cols = self.view_shape(view)
        height, width = self.display_shape(view)
        row = int(_source_index(np.asarray([float(y)]), rows, height)[0])
        col = int(_source_index(np.asarray([float(x)]), cols, width)[0])
        return row, col

    def to_voxel(self, view: str, slice_index: int, x: float, y: float) -> tuple[int, int, int]:
        """A click at screen pixel (``x``, ``y``) of slice ``slice_index`` of ``view`` -> file voxel (i, j, k)."""
        return self.pixel_to_voxel(view, slice_index, *self.display_to_pixel(view, x, y))

    def pixel_to_display(self, view: str, row: float, col: float) -> tuple[int, int]:
        """The screen pixel (x, y) at the centre of array pixel (row, col); :meth:`display_to_pixel` maps it back."""
        return _centre(row, col, self.view_shape(view), self.display_shape(view))

    # ------------------------------------------------------------------------------------------ arrays
    def to_ras(self, array: np.ndarray) -> np.ndarray:
        """A volume in the file's voxel order reordered to RAS (flips and permutations only)."""
        transform = nib.orientations.ornt_transform(self.ornt, nib.orientations.axcodes2ornt(("R", "A", "S")))
        return nib.orientations.apply_orientation(array, transform)

    def from_ras(self, array: np.ndarray) -> np.ndarray:
        transform = nib.orientations.ornt_transform(nib.orientations.axcodes2ornt(("R", "A", "S")), self.ornt)
        return nib.orientations.apply_orientation(array, transform)

    def extract(self, ras: np.ndarray, view: str, slice_index: int) -> np.ndarray:
        """Slice ``slice_index`` of ``view`` from a RAS volume, as displayed (rows x columns, not stretched)."""
        sliced, row_axis, col_axis = PLANES[view]
        section = np.take(ras, int(slice_index), axis=sliced)
        in_plane = [a for a in range(3) if a != sliced]
        section = section.transpose(in_plane.index(row_axis), in_plane.index(col_axis))
        return section[::-1, ::-1]

    def insert(self, ras: np.ndarray, view: str, slice_index: int, section: np.ndarray) -> None:
        """Write a displayed slice back into a RAS volume (inverse of :meth:`extract`)."""
        sliced, row_axis, col_axis = PLANES[view]
        in_plane = [a for a in range(3) if a != sliced]
        order = np.argsort([in_plane.index(row_axis), in_plane.index(col_axis)])
        index: list[int | slice] = [slice(None)] * 3
        index[sliced] = int(slice_index)
        ras[tuple(index)] = np.asarray(section)[::-1, ::-1].transpose(order)

    def stretch(self, view: str, section: np.ndarray) -> np.ndarray:
        """A slice (rows x columns [x channels]) stretched to its displayed size by nearest neighbour."""
        rows, cols = section.shape[:2]
        height, width = self.display_shape(view)
        row_index = _source_index(np.arange(height), rows, height)
        col_index = _source_index(np.arange(width), cols, width)
        return section[row_index][:, col_index]


@dataclass
class ImageGeometry:
    """A 2D image's one view: screen pixels <-> image pixels (x = column, y = row), scaled to fit the display."""

    shape: tuple[int, int]
    display_size: int = DISPLAY_SIZE

    def display_shape(self, view: str = IMAGE_VIEW) -> tuple[int, int]:
        rows, cols = self.shape
        scale = min(max(self.display_size / max(rows, cols), 1.0), MAX_DISPLAY_SIZE / max(rows, cols))
        return _stretch(rows, cols, scale, scale, 1.0)

    def view_shape(self, view: str = IMAGE_VIEW) -> tuple[int, int]:
        return self.shape

    def display_to_pixel(self, view: str, x: float, y: float) -> tuple[int, int]:
        rows, cols = self.shape
        height, width = self.display_shape()
        return (int(_source_index(np.asarray([float(y)]), rows, height)[0]),
                int(_source_index(np.asarray([float(x)]), cols, width)[0]))

    def pixel_to_display(self, view: str, row: float, col: float) -> tuple[int, int]:
        return _centre(row, col, self.shape, self.display_shape())

    def stretch(self, view: str, section: np.ndarray) -> np.ndarray:
        rows, cols = section.shape[:2]
        height, width = self.display_shape()
        return section[_source_index(np.arange(height), rows, height)][:, _source_index(np.arange(width), cols, width)]


def overlay(grey: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """An RGB picture of a uint8 slice (grey, or already RGB) with ``mask`` blended in colour and outlined."""
    rgb = np.repeat(grey[..., None], 3, axis=2) if grey.ndim == 2 else grey[..., :3]
    rgb = rgb.astype(np.float32)
    if mask is not None and mask.any():
        colour = np.asarray(MASK_COLOUR, dtype=np.float32)
        rgb[mask] = (1 - MASK_ALPHA) * rgb[mask] + MASK_ALPHA * colour
        inner = mask.copy()
        inner[1:, :] &= mask[:-1, :]
        inner[:-1, :] &= mask[1:, :]
        inner[:, 1:] &= mask[:, :-1]
        inner[:, :-1] &= mask[:, 1:]
        rgb[mask & ~inner] = colour
    return rgb.round().clip(0, 255).astype(np.uint8)


def draw_markers(picture: np.ndarray, markers: Sequence[Marker], geometry: VolumeGeometry | ImageGeometry,
                 view: str) -> np.ndarray:
    """The displayed picture with clicks (green: positive, red: negative) and boxes (yellow) drawn on it."""
    if not markers:
        return picture
    image = Image.fromarray(picture)
    draw = ImageDraw.Draw(image)
    radius = max(3, round(min(picture.shape[:2]) / 90))
    for marker in markers:
        corners = [geometry.pixel_to_display(view, row, col) for row, col in marker.points]
        if marker.kind == "box" and len(corners) == 2:
            (x0, y0), (x1, y1) = corners
            draw.rectangle([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], outline=BOX_COLOUR, width=2)
            continue
        for x, y in corners:
            if marker.kind == "corner":
                draw.line([x - 2 * radius, y, x + 2 * radius, y], fill=BOX_COLOUR, width=2)
                draw.line([x, y - 2 * radius, x, y + 2 * radius], fill=BOX_COLOUR, width=2)
            else:
                colour = POSITIVE_COLOUR if marker.positive else NEGATIVE_COLOUR
                draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour, outline=(255, 255, 255))
    return np.asarray(image)


__all__ = [
    "IMAGE_VIEW",
    "PLANES",
    "VIEWS",
    "WINDOWS",
    "ImageGeometry",
    "Marker",
    "VolumeGeometry",
    "default_window",
    "draw_markers",
    "overlay",
    "to_uint8",
]
