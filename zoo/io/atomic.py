"""Files that appear whole or not at all: written beside their target, flushed to disk, then renamed over it.

A reader never sees half a file, and a run that fails or is killed while writing leaves what was there before (a
killed process can leave its temporary file, ``.<name>.<random><suffix>``, which no loader takes for the target).
The file gets the permissions an ordinary ``open()`` would give it, not ``mkstemp``'s private 0600.
"""

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file under the process's umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def fsync_directory(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX; Windows cannot open folders and skips this)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


@contextmanager
def atomic_output(path: Path | str, *, text: bool = False, suffix: str = ".tmp") -> Iterator[IO]:
    """A binary (``text``: UTF-8 text) stream to a new temporary file beside ``path``, renamed over ``path`` when
    the block ends without an error and removed when it raises. Creates ``path``'s folder if needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(handle, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as stream:
            if hasattr(os, "fchmod"):
                os.fchmod(stream.fileno(), new_file_mode())
            yield stream
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
        fsync_directory(path.parent)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_atomically(path: Path | str, data: bytes | str) -> None:
    """Write ``data`` (``str``: as UTF-8 text) to ``path`` through :func:`atomic_output`."""
    with atomic_output(path, text=isinstance(data, str)) as stream:
        stream.write(data)
