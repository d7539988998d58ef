"""A saved interactive session on disk: ``session.json`` (what was clicked, on which image, with which model and
processor) and ``embeddings-<digest>.safetensors`` (the cached image embeddings), plus the session's current mask.

Safe formats only: JSON and safetensors, never pickle. A save stages every file and moves them into the folder
together (:class:`zoo.io.masks.MaskSet`), ``session.json`` last, so a failed save leaves the previous session as
it was; embedding files no longer referenced are removed afterwards.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save
from torch import Tensor

from zoo.errors import DataError
from zoo.io.json_files import read_json
from zoo.io.masks import STAGING_PREFIX, MaskSet

SESSION_FILE = "session.json"
SESSION_FORMAT = "zoo-session"
SESSION_VERSION = 1


def is_session_folder(folder: str | Path) -> bool:
    """Whether ``folder`` holds a saved session."""
    return (Path(folder) / SESSION_FILE).is_file()


def check_session_target(folder: str | Path) -> None:
    """A new session may go into a missing or empty folder, or replace a saved session; nothing else is touched."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise DataError(path, "the session folder is a file")
    if path.is_dir() and not is_session_folder(path):
        others = [p.name for p in path.iterdir() if not p.name.startswith(STAGING_PREFIX)]
        if others:
            raise DataError(path, "the folder holds other files and no session.json; give a new or empty folder")


def write_session(
    folder: str | Path,
    content: dict[str, Any],
    tensors: dict[str, Tensor],
    extra: Callable[[MaskSet], None] | None = None,
) -> Path:
    """Write a session: ``tensors`` as one safetensors file named by its digest, ``extra`` files (the current mask),
    then ``session.json`` (``content`` plus the format and the embeddings file name). Returns ``session.json``."""
    path = Path(folder)
    check_session_target(path)
    data = save({key: tensor.detach().cpu().contiguous() for key, tensor in tensors.items()})
    name = f"embeddings-{hashlib.sha256(data).hexdigest()[:16]}.safetensors"
    with MaskSet(path, overwrite=True) as files:
        files.add_file(name, lambda target: _write_bytes(target, data))
        if extra is not None:
            extra(files)
        document = {"format": SESSION_FORMAT, "version": SESSION_VERSION, **content, "embeddings_file": name}
        files.add_json(SESSION_FILE, document)
    for old in path.glob("embeddings-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)
    return path / SESSION_FILE


def read_session(folder: str | Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """``session.json``'s content and the embeddings it names (safetensors, loaded to the CPU)."""
    path = Path(folder)
    document = path / SESSION_FILE
    if not document.is_file():
        raise DataError(path, f"no {SESSION_FILE}: not a saved zoo session")
    content = read_json(document, "session file")
    if not isinstance(content, dict) or content.get("format") != SESSION_FORMAT:
        raise DataError(document, f"not a zoo session file (format {content.get('format')!r})"
                        if isinstance(content, dict) else "not a zoo session file")
    if content.get("version") != SESSION_VERSION:
        raise DataError(document, f"session version {content.get('version')!r}; this zoo reads {SESSION_VERSION}")
    name = content.get("embeddings_file")
    if not isinstance(name, str) or Path(name).name != name or not (path / name).is_file():
        raise DataError(document, f"the embeddings file {name!r} it names is missing")
    try:
        tensors = load_file(str(path / name), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for damaged files
        raise DataError(path / name, f"cannot read the embeddings ({type(exc).__name__}: {exc})") from exc
    return content, tensors


def _write_bytes(path: Path, data: bytes) -> None:
    with open(path, "wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as stream:
        for block in iter(lambda: stream.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path: str | Path) -> str:
    """The sha256 of a file's bytes (how a session recognises its image)."""
    return _sha256(Path(path))


__all__ = [
    "SESSION_FILE",
    "check_session_target",
    "file_sha256",
    "is_session_folder",
    "read_session",
    "write_session",
]
