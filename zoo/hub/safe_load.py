"""Read checkpoint files without running code from them.

PyTorch files are read with ``torch.load(weights_only=True)``: PyTorch's restricted unpickler, which only builds
tensors and plain containers. The authors' files also pickle a few other objects (training arguments as an
``argparse.Namespace`` in SAM-Med3D's file, a whole ``torch.optim`` optimizer in SAM-Med2D's and SAM-UNet's, numpy
scalars in logged metrics). Those names are on an explicit allow-list that maps each to an inert stand-in
(:class:`UnreadObject`): the real class is never imported or constructed and its state is discarded. Anything
else in the pickle stream (``os.system``, ``builtins.exec``, any other class) is refused.
"""

from __future__ import annotations

import json
import pickle
import re
import struct
from pathlib import Path
from typing import Any, ClassVar

import torch

from zoo.errors import CheckpointError

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = 0x80

#: Pickled globals that official checkpoints are known to contain besides tensors, with why.
#: Each is replaced by an inert :class:`UnreadObject` subclass; nothing of the real class runs.
FOREIGN_OBJECTS_READ_AS_STUBS: dict[str, str] = {
    "argparse.Namespace": "training arguments (SAM-Med3D's 'args')",
    "torch.optim.adam.Adam": "whole optimizer object (SAM-Med2D, SAM-UNet)",
    "torch.optim.adamw.AdamW": "whole optimizer object",
    "torch.optim.sgd.SGD": "whole optimizer object",
    "numpy.core.multiarray.scalar": "numpy scalar in logged metrics",
    "numpy._core.multiarray.scalar": "numpy scalar in logged metrics",
    "numpy.core.multiarray._reconstruct": "numpy array in logged metrics",
    "numpy._core.multiarray._reconstruct": "numpy array in logged metrics",
    "numpy.ndarray": "numpy array in logged metrics",
    "numpy.dtype": "dtype of a numpy value in logged metrics",
}


class UnreadObject:
    """Stand-in for an allow-listed pickled object that was deliberately not reconstructed.

    It accepts whatever the pickle stream passes to the real class and keeps none of it.
    """

    pickled_type: ClassVar[str] = "?"

    def __new__(cls, *args: Any, **kwargs: Any) -> UnreadObject:
        return super().__new__(cls)

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __repr__(self) -> str:
        return f"<unread {self.pickled_type}>"


def _stub_for(pickled_name: str) -> type[UnreadObject]:
    return type(f"Unread[{pickled_name}]", (UnreadObject,), {"pickled_type": pickled_name})


def _plain_dict_for_defaultdict(*args: Any) -> dict:
    # Optimizer objects keep their state in a defaultdict; a plain dict holds the same items and calls nothing.
    return {}


def _allow_list() -> list[tuple[Any, str]]:
    entries: list[tuple[Any, str]] = [(_stub_for(name), name) for name in FOREIGN_OBJECTS_READ_AS_STUBS]
    entries.append((_plain_dict_for_defaultdict, "collections.defaultdict"))
    entries.append((dict, "builtins.dict"))  # the defaultdict's default factory
    return entries


def read_checkpoint_file(path: str | Path) -> Any:
    """Load a ``.pth``/``.pt``/``.ckpt`` or ``.safetensors`` file safely; the format is told from the content.

    Returns whatever the file holds (tensors, plain containers, :class:`UnreadObject` stand-ins).

    Raises:
        FileNotFoundError: the path does not exist.
        CheckpointError: empty, truncated, not a checkpoint, or pickles an object outside the allow-list.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such checkpoint file")
    if path.is_dir():
        raise CheckpointError(
            str(path), "is a folder, not a checkpoint file (load a Hub-format folder with zoo.from_pretrained)"
        )
    size = path.stat().st_size
    if size == 0:
        raise CheckpointError(str(path), "is empty (0 bytes); the download or copy was probably interrupted")
    with path.open("rb") as f:
        head = f.read(16)
    if head.startswith(_ZIP_MAGIC) or head[0] == _PICKLE_PROTOCOL_OPCODE:
        return _read_torch_file(path, zipped=head.startswith(_ZIP_MAGIC))
    if _looks_like_safetensors(head):
        return _read_safetensors_file(path, size)
    raise CheckpointError(
        str(path),
        "is not a checkpoint: expected a PyTorch file (.pth/.pt/.ckpt) or a .safetensors file, "
        f"but the content starts with {head[:8]!r}",
    )


def _looks_like_safetensors(head: bytes) -> bool:
    return len(head) >= 9 and head[8:9] == b"{"


def _read_torch_file(path: Path, zipped: bool) -> Any:
    try:
        with torch.serialization.safe_globals(_allow_list()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=zipped)
    except pickle.UnpicklingError as err:
        raise CheckpointError(str(path), _describe_refused_pickle(str(err))) from None
    except (RuntimeError, EOFError, ValueError, struct.error) as err:
        message = str(err)
        if zipped and "zip archive" in message:
            raise CheckpointError(
                str(path), "is truncated or corrupted (its zip archive is incomplete); download it again"
            ) from None
        if zipped and isinstance(err, RuntimeError):
            detail = message.splitlines()[0]
            problem = f"is a zip archive but not a readable PyTorch checkpoint ({detail})"
            raise CheckpointError(str(path), problem) from None
        if isinstance(err, EOFError) or any(word in message for word in ("truncated", "Ran out of input", "EOF")):
            raise CheckpointError(str(path), "is truncated (the pickle stream ends early); download it again") from None
        raise CheckpointError(str(path), f"is not a readable PyTorch checkpoint ({message.splitlines()[0]})") from None


def _describe_refused_pickle(message: str) -> str:
    if "truncated" in message or "Ran out of input" in message:
        return "is truncated (the pickle stream ends early); download it again"
    found = re.search(r"GLOBAL ([\w.]+)", message) or re.search(r"function <?([^>\s]+)", message)
    # Never echo torch's advice to retry with weights_only=False; keep only the unpickler's own reason.
    reason = re.search(r"WeightsUnpickler error: (.*)", message)
    what = found.group(1) if found else (reason.group(1).strip() if reason else "unknown")
    return (
        f"pickles a Python object ({what}) that is not on zoo's allow-list; it was refused without running it. "
        "Only tensors, plain containers and known training metadata (argparse.Namespace, torch.optim optimizers, "
        "numpy values) are read, the latter as inert stand-ins"
    )


def _read_safetensors_file(path: Path, size: int) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    with path.open("rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        if 8 + header_len > size:
            raise CheckpointError(str(path), "is truncated (its safetensors header is incomplete); download it again")
        try:
            header = json.loads(f.read(header_len))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CheckpointError(str(path), "is not a checkpoint: its safetensors header is not valid JSON") from None
    data_end = max((entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"), default=0)
    if 8 + header_len + data_end > size:
        missing = 8 + header_len + data_end - size
        raise CheckpointError(str(path), f"is truncated ({missing} bytes of tensor data missing); download it again")
    try:
        return load_file(path, device="cpu")
    except SafetensorError as err:
        raise CheckpointError(str(path), f"is not a readable safetensors file ({err})") from None
