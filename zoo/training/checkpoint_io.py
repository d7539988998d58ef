"""Checkpoints written atomically: a crash leaves either the old file or the complete new one, never half of one.

:class:`AtomicCheckpointIO` is the zoo CLI's default ``trainer.plugins`` entry. It also refuses to replace a file that
is not a Lightning checkpoint, so pointing a run at a folder that holds the user's own files cannot destroy them.
"""

import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO

# Every checkpoint Lightning writes has this key; torch.save stores dict keys verbatim in the archive's data.pkl.
LIGHTNING_CHECKPOINT_KEY = b"pytorch-lightning_version"
PARTIAL_SUFFIX = ".partial"


def is_lightning_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a torch zip archive whose pickled object has Lightning's version key (tensors unread)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            return len(pickles) == 1 and LIGHTNING_CHECKPOINT_KEY in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False


def _new_file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _fsync_directory(folder: Path) -> None:
    """Make the rename itself durable (POSIX; Windows cannot open folders and skips this)."""
    if not hasattr(os, "O_DIRECTORY"):
        return
    descriptor = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Save to a temporary file in the target folder, flush it to disk, then rename it over the target.

    The temporary file (``.<name>.<random>.partial``, created exclusively, so it never clobbers an existing file) is
    removed if saving fails; a process killed while saving can leave one behind, and no loader mistakes it for a
    checkpoint. An existing target is replaced only when it is itself a Lightning checkpoint (e.g. the previous
    ``last.ckpt``); anything else raises :class:`FileExistsError` before any byte is written.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: _PATH, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} does not take storage_options, got {storage_options!r}")
        target = Path(path)
        if target.exists() and not (target.is_file() and is_lightning_checkpoint(target)):
            raise FileExistsError(
                f"{target}: refusing to overwrite a file that is not a Lightning checkpoint; "
                "choose another checkpoint folder or move the file"
            )
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=PARTIAL_SUFFIX, dir=target.parent)
        try:
            with os.fdopen(handle, "wb") as stream:
                if hasattr(os, "fchmod"):  # mkstemp makes 0600; give the mode an ordinary open() would
                    os.fchmod(stream.fileno(), _new_file_mode())
                torch.save(checkpoint, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_name, target)
            _fsync_directory(target.parent)
        except BaseException:
            Path(temp_name).unlink(missing_ok=True)
            raise
