"""The app's state and logic without any web framework: the open image, the model, the interactive sessions, the
prompts so far, undo/reset, the rendered views and the export.

Every prompt goes through :class:`zoo.inference.Session` (cached embedding, the family's click loop):

* a 3D model (SAM-Med3D) on a volume: one session on the volume; a click on any view becomes the file voxel
  ``(i, j, k)`` displayed under it;
* a 2D model on a volume: one session per displayed slice (view, slice, window), the slice as the model sees it
  (8-bit by MedSAM's rule with the chosen window); its mask is written back into that slice of the volume's mask
  (later prompts win where slices of different views cross);
* a 2D model on a 2D image: one session on the image.

Nothing is written except the exported mask, into the app's own temporary folder.
"""

from __future__ import annotations

import tempfile
import threading
import time
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from zoo.app.views import (
    AUTO_WINDOW,
    IMAGE_VIEW,
    VIEWS,
    WINDOWS,
    ImageGeometry,
    Marker,
    VolumeGeometry,
    default_window,
    draw_markers,
    overlay,
    to_uint8,
)
from zoo.errors import CheckpointError, DataError, PromptError

#: File types the app reads (NIfTI volumes, 8-bit 2D images).
VOLUME_SUFFIXES = (".nii.gz", ".nii")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
ACCEPTED_SUFFIXES = VOLUME_SUFFIXES + IMAGE_SUFFIXES
DEFAULT_MAX_FILE_MB = 512.0
MODES = ("positive click", "negative click", "box (two clicks)")
#: Errors shown to the user as a message (bad files, prompts a model cannot take, weights that cannot load).
USER_ERRORS = (DataError, PromptError, CheckpointError, FileNotFoundError)


def file_kind(path: str | Path) -> str:
    """``"volume"`` or ``"image"`` by the file's name; any other type is refused with the accepted ones listed."""
    name = Path(path).name.lower()
    if name.endswith(VOLUME_SUFFIXES):
        return "volume"
    if name.endswith(IMAGE_SUFFIXES):
        return "image"
    raise DataError(path, f"the app reads {', '.join(ACCEPTED_SUFFIXES)} files only")


def check_file(path: str | Path, max_file_mb: float) -> Path:
    """The path of a readable file of an accepted type and at most ``max_file_mb`` MB; else a DataError."""
    file = Path(path).expanduser()
    file_kind(file)
    if not file.is_file():
        raise DataError(file, "file not found")
    size_mb = file.stat().st_size / 1e6
    if size_mb > max_file_mb:
        raise DataError(file, f"the file has {size_mb:.1f} MB, above the app's limit of {max_file_mb:g} MB "
                              "(start it with zoo app --max-file-mb N to allow more)")
    return file


def stem(path: Path) -> str:
    name = path.name
    for suffix in ACCEPTED_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return path.stem


# ---------------------------------------------------------------------------------------------------- models
@dataclass
class LoadedModel:
    """A model ready for sessions, with where its weights came from (``random``: its masks mean nothing)."""

    name: str
    model: Any
    spatial_dims: int
    prompt_kinds: frozenset[str]
    weights: str
    random: bool

    @property
    def notice(self) -> str:
        if self.random:
            return (f"**{self.name} runs with RANDOM weights: its masks are meaningless.** "
                    f"({self.weights}) Convert the authors' checkpoint (zoo convert) and start the app with "
                    "--model FOLDER for real masks.")
        return f"{self.name}: {self.weights}"


def default_loader(source: str) -> Any:
    import zoo

    return zoo.from_pretrained(source)


class ModelCache:
    """Loads models by registry name or path once; a registry name without reachable weights is built with random
    weights (and says so)."""

    def __init__(self, loader: Callable[[str], Any] | None = None) -> None:
        self.loader = loader or default_loader
        self._models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    @staticmethod
    def registry_names() -> list[str]:
        import zoo

        return list(zoo.list_models())

    def get(self, name: str) -> LoadedModel:
        with self._lock:
            if name not in self._models:
                self._models[name] = self._load(name)
            return self._models[name]

    def _load(self, name: str) -> LoadedModel:
        from zoo.inference.predictor import weights_description
        from zoo.processors import processor_for

        try:
            model = self.loader(name)
            note = None
        except CheckpointError as err:
            if name not in self.registry_names():
                raise
            import zoo

            model, note = zoo.create_model(name), err.problem
        model = model.eval()
        processor = processor_for(model)
        origin = getattr(model, "weights_origin", None)
        weights = weights_description(model) if note is None else f"{weights_description(model)}; {note}"
        return LoadedModel(name, model, int(processor.spatial_dims), frozenset(processor.prompt_kinds), weights,
                           origin is None)


# ---------------------------------------------------------------------------------------------------- images
@dataclass
class OpenImage:
    """The open file: a volume (``geometry`` a VolumeGeometry, ``volume`` the float32 voxels) or a 2D RGB image."""

    path: Path
    name: str
    kind: str
    geometry: VolumeGeometry | ImageGeometry
    volume: Any = None  # zoo.io.nifti.Volume
    ras: np.ndarray | None = None  # float32 voxels in RAS order
    rgb: np.ndarray | None = None  # 2D: H x W x 3 uint8
    _uint8: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def views(self) -> tuple[str, ...]:
        return VIEWS if self.kind == "volume" else (IMAGE_VIEW,)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.volume.shape if self.kind == "volume" else self.rgb.shape[:2]

    def uint8(self, window: str) -> np.ndarray:
        """The RAS volume in 0..255 for ``window`` (cached)."""
        if window not in self._uint8:
            self._uint8[window] = to_uint8(self.ras, WINDOWS.get(window))
        return self._uint8[window]


def open_image(path: Path, name: str | None = None) -> OpenImage:
    from zoo.io.nifti import load_image
    from zoo.io.png import read_image

    if file_kind(path) == "volume":
        volume = load_image(path)
        geometry = VolumeGeometry(volume.shape, volume.affine)
        ras = np.ascontiguousarray(geometry.to_ras(volume.array))
        return OpenImage(path, name or path.name, "volume", geometry, volume=volume, ras=ras)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rgb = read_image(path)
    return OpenImage(path, name or path.name, "image", ImageGeometry(rgb.shape[:2]), rgb=rgb)


# ---------------------------------------------------------------------------------------------------- workspace
@dataclass
class Outcome:
    """What the last interaction did, for the status line."""

    message: str
    seconds: float | None = None
    encode_seconds: float | None = None
    error: bool = False


class Workspace:
    """One user's app state (see the module docstring). Every method is safe to call from several threads."""

    def __init__(self, models: ModelCache, model_name: str, temp_dir: str | Path | None = None,
                 max_file_mb: float = DEFAULT_MAX_FILE_MB) -> None:
        self.models = models
        self.temp_dir = Path(temp_dir) if temp_dir is not None else Path(tempfile.mkdtemp(prefix="zoo-app-"))
        self.max_file_mb = float(max_file_mb)
        self.lock = threading.RLock()
        self.model: LoadedModel = models.get(model_name)
        self.image: OpenImage | None = None
        self.window = AUTO_WINDOW
        self.mode = MODES[0]
        self.slices: dict[str, int] = {}
        self._clear_prompts()
        self.last = Outcome(f"Model {self.model.name} ready. Open an image or a volume.")

    # ------------------------------------------------------------------------------------------ setup
    def _clear_prompts(self) -> None:
        self.sessions: dict[Any, Any] = {}
        self.history: list[tuple[Any, Marker]] = []
        self.pending: Marker | None = None
        self._mask: np.ndarray | None = None

    def open(self, path: str | Path, name: str | None = None) -> Outcome:
        """Open a NIfTI volume or a 2D image (checked type and size); the prompts start afresh."""
        with self.lock:
            file = check_file(path, self.max_file_mb)
            image = open_image(file, name)
            self.image = image
            self.slices = {view: image.geometry.slice_count(view) // 2 for view in VIEWS} if image.kind == "volume" \
                else {IMAGE_VIEW: 0}
            self.window = default_window(image.volume.array) if image.kind == "volume" else AUTO_WINDOW
            self._clear_prompts()
            what = f"volume {image.shape} voxels" if image.kind == "volume" else f"image {image.shape[1]}x" \
                f"{image.shape[0]} pixels"
            self.last = Outcome(f"Opened {image.name}: {what}. Click on a view to segment.")
            return self.last

    def set_model(self, name: str) -> Outcome:
        """Switch to another model (loaded once); the prompts start afresh (they were the other model's)."""
        with self.lock:
            if name == self.model.name:
                return self.last
            self.model = self.models.get(name)
            self._clear_prompts()
            self.last = Outcome(f"Switched to {name}; the prompts were cleared.")
            return self.last

    def set_window(self, window: str) -> None:
        with self.lock:
            if window not in WINDOWS:
                raise DataError("window", f"unknown window {window!r}; choose one of {list(WINDOWS)}")
            self.window = window

    def set_slice(self, view: str, index: int) -> None:
        with self.lock:
            if self.image is not None and self.image.kind == "volume":
                count = self.image.geometry.slice_count(view)
                self.slices[view] = int(min(max(int(index), 0), count - 1))

    def set_mode(self, mode: str) -> None:
        if mode not in MODES:
            raise PromptError(f"unknown mode {mode!r}; choose one of {MODES}")
        with self.lock:
            if mode != self.mode:
                self.mode, self.pending = mode, None

    # ------------------------------------------------------------------------------------------ prompts
    def click(self, view: str, x: float, y: float) -> Outcome:
        """A click at screen pixel (x, y) of the displayed ``view``: a positive or negative click, or a box corner
        (by the current mode)."""
        with self.lock:
            try:
                self.last = self._click(view, x, y)
            except USER_ERRORS as err:
                self.last = Outcome(str(err), error=True)
            return self.last

    def _click(self, view: str, x: float, y: float) -> Outcome:
        image = self._checked_image()
        if view not in image.views:
            raise PromptError(f"no view {view!r} here; the views are {image.views}")
        row, col = image.geometry.display_to_pixel(view, x, y)
        index = self.slices.get(view, 0)
        if self.mode == MODES[2]:
            if self.pending is None or self.pending.view != view or self.pending.slice_index != index:
                self.pending = Marker(view, index, ((row, col),), kind="corner")
                return Outcome("First corner of the box set; click the opposite corner.")
            (row0, col0), = self.pending.points
            self.pending = None
            marker = Marker(view, index, ((row0, col0), (row, col)), kind="box")
            box = [min(col0, col), min(row0, row), max(col0, col), max(row0, row)]
            return self._prompt(marker, lambda session, where: session.add_box(box))
        positive = self.mode == MODES[0]
        marker = Marker(view, index, ((row, col),), positive=positive)
        return self._prompt(marker, lambda session, where: session.add_click(where, positive))

    def _checked_image(self) -> OpenImage:
        if self.image is None:
            raise DataError("app", "open an image or a volume first")
        if self.image.kind == "image" and self.model.spatial_dims == 3:
            raise PromptError(f"{self.model.name} is a 3D model: open a NIfTI volume, or choose a 2D model")
        return self.image

    def _prompt(self, marker: Marker, apply: Callable[[Any, Any], Any]) -> Outcome:
        """Run one prompt through the session it belongs to (created, i.e. encoded, on first use)."""
        image = self._checked_image()
        (row, col) = marker.points[-1]
        if image.kind == "volume" and self.model.spatial_dims == 3:
            key: Any = "volume"
            where: Any = list(image.geometry.pixel_to_voxel(marker.view, marker.slice_index, row, col))
        elif image.kind == "volume":
            key = (marker.view, marker.slice_index, self.window)
            where = [col, row]
        else:
            key, where = IMAGE_VIEW, [col, row]
        encode_seconds = None
        if key not in self.sessions:
            started = time.perf_counter()
            self.sessions[key] = self._new_session(key)
            encode_seconds = time.perf_counter() - started
        session = self.sessions[key]
        result = apply(session, where)
        self.history.append((key, marker))
        self._mask = None
        what = "box" if marker.kind == "box" else ("positive click" if marker.positive else "negative click")
        at = f"voxel {tuple(where)}" if key == "volume" else f"pixel (x={col}, y={row})"
        view = "" if marker.view == IMAGE_VIEW else f" on the {marker.view} slice {marker.slice_index}"
        return Outcome(f"{what} at {at}{view}", result.seconds, encode_seconds)

    def _new_session(self, key: Any) -> Any:
        from zoo.inference import Session

        image = self.image
        assert image is not None
        with warnings.catch_warnings():  # the random-weights warning is shown in the page instead
            warnings.simplefilter("ignore")
            if key == "volume":
                return Session(self.model.model, image.volume)
            if key == IMAGE_VIEW:
                return Session(self.model.model, image.rgb, source=image.name)
            view, index, window = key
            section = image.geometry.extract(image.uint8(window), view, index)
            rgb = np.ascontiguousarray(np.repeat(section[..., None], 3, axis=2))
            return Session(self.model.model, rgb, source=f"{image.name} {view} slice {index}")

    def undo(self) -> Outcome:
        with self.lock:
            if self.pending is not None:
                self.pending = None
                self.last = Outcome("The box's first corner was removed.")
                return self.last
            if not self.history:
                self.last = Outcome("Nothing to undo.")
                return self.last
            key, _ = self.history.pop()
            result = self.sessions[key].undo()
            self._mask = None
            self.last = Outcome(f"Undone; {len(self.history)} prompt(s) left.", result.seconds)
            return self.last

    def reset(self) -> Outcome:
        with self.lock:
            for session in self.sessions.values():
                session.reset()
            self.history, self.pending, self._mask = [], None, None
            self.last = Outcome("Reset: no prompt, no mask.")
            return self.last

    # ------------------------------------------------------------------------------------------ the mask
    def mask(self) -> np.ndarray:
        """The current mask on the file's own grid (file voxel order; 2D: H x W), bool."""
        with self.lock:
            image = self._checked_image()
            if self._mask is not None:
                return self._mask
            if not self.history:
                mask = np.zeros(image.shape, dtype=bool)
            elif image.kind == "image" or self.model.spatial_dims == 3:
                mask = self.sessions[self.history[-1][0]].result().mask.cpu().numpy().astype(bool)
            else:
                ras = np.zeros(image.geometry.ras_shape, dtype=bool)
                order = list(dict.fromkeys(key for key, _ in reversed(self.history)))[::-1]  # by last prompt
                for view, index, window in order:
                    section = self.sessions[(view, index, window)].result().mask.cpu().numpy().astype(bool)
                    image.geometry.insert(ras, view, index, section)
                mask = np.ascontiguousarray(image.geometry.from_ras(ras))
            self._mask = mask
            return mask

    def render(self, view: str) -> np.ndarray | None:
        """The displayed picture of ``view`` (current slice, window, mask overlay, prompts); None without an image."""
        with self.lock:
            image = self.image
            if image is None or view not in image.views:
                return None
            try:
                mask = self.mask()
            except USER_ERRORS:
                mask = None
            if image.kind == "image":
                picture = overlay(image.rgb, mask)
                index = 0
            else:
                geometry = image.geometry
                assert isinstance(geometry, VolumeGeometry)
                index = self.slices[view]
                grey = geometry.extract(image.uint8(self.window), view, index)
                section = None if mask is None else geometry.extract(geometry.to_ras(mask), view, index)
                picture = overlay(grey, section)
            picture = image.geometry.stretch(view, picture)
            markers = [marker for _, marker in self.history] + ([self.pending] if self.pending else [])
            shown = [m for m in markers if m.view == view and m.slice_index == index]
            return draw_markers(picture, shown, image.geometry, view)

    def status(self) -> str:
        """A short Markdown status: the last interaction with its latency, prompts and mask size."""
        with self.lock:
            last = self.last
            parts = [("Error: " if last.error else "") + last.message]
            if last.seconds is not None:
                parts.append(f"latency {last.seconds * 1000:.0f} ms")
            if last.encode_seconds is not None:
                parts.append(f"image encoder {last.encode_seconds * 1000:.0f} ms (once per image)")
            if self.image is not None:
                try:
                    voxels = int(self.mask().sum())
                except USER_ERRORS:
                    voxels = 0
                unit = "voxels" if self.image.kind == "volume" else "pixels"
                parts.append(f"prompts: {len(self.history)}")
                parts.append(f"mask: {voxels} {unit}")
            return " · ".join(parts)

    # ------------------------------------------------------------------------------------------ export
    def export(self) -> Path:
        """Write the mask into the app's temporary folder: NIfTI with the input's geometry (affine and header), or a
        0/255 PNG at the image's size; returns the file."""
        from zoo.io.masks import save_mask

        with self.lock:
            image = self._checked_image()
            mask = self.mask().astype(np.uint8)
            folder = self.temp_dir / "exports" / uuid.uuid4().hex[:12]
            folder.mkdir(parents=True)
            suffix = ".nii.gz" if image.kind == "volume" else ".png"
            target = folder / f"{stem(image.path)}_mask{suffix}"
            save_mask(target, mask, image.path)
            self.last = Outcome(f"Mask written: {target.name}")
            return target


__all__ = [
    "ACCEPTED_SUFFIXES",
    "MODES",
    "LoadedModel",
    "ModelCache",
    "OpenImage",
    "Outcome",
    "Workspace",
    "check_file",
    "file_kind",
    "open_image",
]
