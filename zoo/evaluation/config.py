"""A benchmark's YAML config (read with OmegaConf, so ``${...}`` interpolation and dot-list overrides work),
checked into dataclasses: unknown keys and missing fields are errors that name the key.

.. code-block:: yaml

    name: bundled data
    seed: 233
    output_dir: benchmark-out
    models:
      - {name: LiteMedSAM, source: litemedsam}          # registry name, Hub folder or id, authors' file, .ckpt
      - {name: SAM-UNet, create: sam_unet_r34, overrides: {image_size: 64}, init_seed: 0}   # random weights
    datasets:
      - {name: totalseg-ct, kind: nifti, root: data/totalseg_nnunet, classes: [liver], window: [-160, 240]}
      - {name: sam-med2d-demo, kind: sa_med2d, json: data/sam_med2d_demo/label2image_test.json}
    protocols: [sam_med3d, {name: sam_med2d_points, points: [1, 3]}, litemedsam_box]
    metrics: {nsd_tolerance_mm: 1.0, nsd_tolerance_px: 1.0, nsd_boundary: surfels, hd95: false}
    runtime: {accelerator: cpu, devices: 1}
    references:
      - {model: SAM-Med3D, protocol: sam_med3d, step: 1, dice: 76.27, data: "...", source: "paper Table 3"}

Relative paths are read from the config file's folder, then from the working folder; ``data/...`` paths that are in
neither are the data bundled with the package.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from zoo.errors import DataError
from zoo.evaluation.cases import DatasetSpec
from zoo.evaluation.metrics import MetricSettings
from zoo.evaluation.protocols import Protocol, get_protocol


@dataclass(frozen=True)
class ModelSpec:
    """One model of a benchmark.

    Attributes:
        name: its name in reports (models without trained weights get " (random weights)" appended everywhere).
        source: where its weights come from: a zoo model name with reachable weights, a Hub folder or repo id, an
            authors' checkpoint file, or a zoo run's Lightning ``.ckpt`` (loaded as ``zoo predict --model`` loads).
        create: instead of ``source``: a zoo model name built with RANDOM weights (``overrides`` change its
            config; ``init_seed`` seeds the initialisation).
    """

    name: str
    source: str | None = None
    create: str | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    init_seed: int = 0

    def __post_init__(self) -> None:
        if (self.source is None) == (self.create is None):
            raise ValueError(f"model {self.name}: give exactly one of source (trained weights) or create (random)")
        if self.overrides and self.create is None:
            raise ValueError(f"model {self.name}: overrides apply to create (a model built here), not to source")


@dataclass(frozen=True)
class MetricsSpec:
    """Scores and their settings (stated in the report).

    Attributes:
        nsd_tolerance_mm: NSD tolerance on volumes, in mm at the file's spacing.
        nsd_tolerance_px: NSD tolerance on 2D images, in pixels (PNGs carry no spacing).
        nsd_boundary: ``surfels`` (boundary weighted by area, DeepMind's surface_distance) or ``voxels``.
        hd95: also compute the 95th-percentile Hausdorff distance.
    """

    nsd_tolerance_mm: float = 1.0
    nsd_tolerance_px: float = 1.0
    nsd_boundary: str = "surfels"
    hd95: bool = False

    def settings(self, kind: str) -> MetricSettings:
        tolerance = self.nsd_tolerance_mm if kind == "volume" else self.nsd_tolerance_px
        return MetricSettings(float(tolerance), self.nsd_boundary, bool(self.hd95))  # type: ignore[arg-type]

    def __post_init__(self) -> None:
        self.settings("volume"), self.settings("image")


@dataclass(frozen=True)
class RuntimeSpec:
    """How the benchmark runs (none of it changes a result).

    Attributes:
        accelerator: ``cpu``, ``cuda`` or ``auto`` (Lightning Fabric's).
        devices: processes (one device each); cases are shared out among them and the results gathered.
        strategy: Lightning's strategy; ``auto`` is ``ddp_spawn`` for several devices.
        num_threads: torch threads per process (None: torch's default).
        progress: show a progress bar per model.
        encoding_cache: image encodings kept per model and case (slices of a volume are encoded once each).
    """

    accelerator: str = "cpu"
    devices: int = 1
    strategy: str = "auto"
    num_threads: int | None = None
    progress: bool = True
    encoding_cache: int = 256


@dataclass(frozen=True)
class ReportSpec:
    """What the report shows.

    Attributes:
        title: its heading (default: the benchmark's name).
        overlay_protocol: the protocol whose masks the overlay grid shows (default: the first one).
        overlay_step: its step (default: the protocol's last table step).
        overlay_panels: how many (case, target) rows the overlay grid has.
        bootstrap_samples: resamples of the paired bootstrap.
        confidence: level of the bootstrap intervals.
        save_masks: also write every model's masks at the table steps (``masks/<model>/<protocol>/<dataset>/``:
            NIfTI on the case's grid, or PNG at the image's size).
    """

    title: str | None = None
    overlay_protocol: str | None = None
    overlay_step: int | None = None
    overlay_panels: int = 6
    bootstrap_samples: int = 2000
    confidence: float = 0.95
    save_masks: bool = False


@dataclass(frozen=True)
class ReferenceRow:
    """A number a paper reports, shown as a labelled reference row (never mixed with measured rows).

    Attributes:
        model: the model as the paper names it.
        protocol: the protocol it corresponds to; ``step`` its step.
        dice: the reported Dice, in percent as the papers print it.
        data: what it was measured on (not this benchmark's data).
        source: file and table it comes from.
    """

    model: str
    protocol: str
    step: int
    dice: float
    data: str
    source: str


@dataclass(frozen=True)
class BenchmarkConfig:
    """A whole benchmark: models x datasets x protocols, with seeds, metrics and where results go."""

    name: str
    models: tuple[ModelSpec, ...]
    datasets: tuple[DatasetSpec, ...]
    protocols: tuple[Any, ...]
    output_dir: str = "benchmark"
    seed: int = 0
    metrics: MetricsSpec = field(default_factory=MetricsSpec)
    runtime: RuntimeSpec = field(default_factory=RuntimeSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    references: tuple[ReferenceRow, ...] = ()
    source_file: str | None = None

    def __post_init__(self) -> None:
        for what, names in (("model", [m.name for m in self.models]), ("dataset", [d.name for d in self.datasets])):
            if not names:
                raise ValueError(f"a benchmark needs at least one {what}")
            duplicates = sorted({n for n in names if names.count(n) > 1})
            if duplicates:
                raise ValueError(f"{what} names must be unique; repeated: {duplicates}")
        protocols = self.protocol_list()
        names = [p.name for p in protocols]
        if len(set(names)) != len(names):
            raise ValueError(f"a protocol appears twice: {names}")

    def protocol_list(self) -> list[Protocol]:
        return [get_protocol(p) for p in self.protocols]

    def to_dict(self) -> dict[str, Any]:
        """Plain values (what the report prints and the cache keys on)."""
        return _plain(dataclasses.asdict(self))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ------------------------------------------------------------------------------------------------ building
def _build(cls: type, values: Any, where: str) -> Any:
    """``cls`` (a dataclass) from a mapping, recursively; unknown or missing keys name their place."""
    if isinstance(values, cls):
        return values
    if not isinstance(values, Mapping):
        raise ValueError(f"{where}: expected a mapping, got {values!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; known: {sorted(fields)}")
    kwargs = {}
    for name, item in values.items():
        kwargs[name] = _convert(hints[name], item, f"{where}.{name}")
    missing = sorted(
        n for n, f in fields.items()
        if n not in kwargs and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )
    if missing:
        raise ValueError(f"{where}: missing key(s) {missing}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{where}: {err}") from err


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, where)
            except (TypeError, ValueError):
                continue
        raise ValueError(f"{where}: {value!r} is not a {hint}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)
    if origin is tuple:
        if not isinstance(value, Sequence) or isinstance(value, str):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        item = args[0] if args else Any
        if len(args) == 2 and args[1] is Ellipsis or len(args) <= 1:
            return tuple(_convert(item, v, f"{where}[{i}]") for i, v in enumerate(value))
        return tuple(_convert(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"{where}: must be one of {list(args)}, got {value!r}")
        return value
    if hint in (int, float, str, bool):
        if hint is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
            raise ValueError(f"{where}: expected {hint.__name__}, got {value!r}")
        return value
    return value


def _resolve(value: str | None, base: Path | None) -> str | None:
    """A config path: from the config's folder, else the working folder, else the package's bundled data."""
    if value is None or "://" in value:
        return value
    path = Path(value).expanduser()
    if path.is_absolute():
        return str(path)
    for folder in ([base] if base is not None else []) + [Path.cwd()]:
        if (folder / path).exists():
            return str((folder / path).absolute())
    if path.parts and path.parts[0] == "data":
        from zoo.resources import data_path

        try:
            return str(data_path(*path.parts[1:]))
        except FileNotFoundError:
            pass
    return value


def _looks_like_path(value: str) -> bool:
    return "/" in value or value.endswith((".pth", ".pt", ".bin", ".safetensors", ".ckpt"))


def config_from_dict(values: Mapping[str, Any], base: str | Path | None = None) -> BenchmarkConfig:
    """A checked config from plain values; relative paths resolved against ``base`` (the config's folder)."""
    folder = Path(base) if base is not None else None
    values = dict(values)
    datasets = []
    for item in values.get("datasets") or []:
        item = dict(item)
        for key in ("root", "json", "path_root"):
            if item.get(key) is not None:
                item[key] = _resolve(str(item[key]), folder)
        datasets.append(item)
    values["datasets"] = datasets
    models = []
    for item in values.get("models") or []:
        item = dict(item)
        if isinstance(item.get("source"), str) and _looks_like_path(item["source"]):
            resolved = _resolve(item["source"], folder)
            item["source"] = resolved if resolved is not None and Path(resolved).exists() else item["source"]
        models.append(item)
    values["models"] = models
    if values.get("output_dir") is not None and folder is not None and not Path(str(values["output_dir"])).is_absolute():
        values["output_dir"] = str(Path.cwd() / str(values["output_dir"]))
    return _build(BenchmarkConfig, values, "benchmark config")


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> BenchmarkConfig:
    """Read a benchmark YAML (OmegaConf), apply ``key=value`` dot-list ``overrides``, check it."""
    from omegaconf import OmegaConf

    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"{file}: benchmark config not found")
    loaded = OmegaConf.load(file)
    for override in overrides:  # dot-list, list items by index: models.0.source=...
        key, _, text = override.partition("=")
        if not key or not _:
            raise DataError("override", f"overrides are KEY=VALUE, got {override!r}")
        OmegaConf.update(loaded, key.strip(), yaml.safe_load(text), merge=False, force_add=True)
    values = OmegaConf.to_container(loaded, resolve=True)
    if not isinstance(values, dict):
        raise ValueError(f"{file}: a benchmark config is a mapping")
    values["source_file"] = str(file.absolute())
    try:
        return config_from_dict(values, file.absolute().parent)
    except ValueError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(file, str(err)) from err


__all__ = [
    "BenchmarkConfig",
    "MetricsSpec",
    "ModelSpec",
    "ReferenceRow",
    "ReportSpec",
    "RuntimeSpec",
    "config_from_dict",
    "load_config",
]
