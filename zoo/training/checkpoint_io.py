"""Lightning checkpoints written atomically and read without running code from them.

:class:`AtomicCheckpointIO` is the zoo CLI's default ``trainer.plugins`` entry. Writing: a crash leaves either the old
file or the complete new one, never half of one, and a file that is not a Lightning checkpoint is never replaced, so
pointing a run at a folder that holds the user's own files cannot destroy them. Reading: every checkpoint goes
through :func:`zoo.hub.safe_load.read_checkpoint_file` (``torch.load(weights_only=True)`` with an explicit
allow-list), whatever ``weights_only`` Lightning asks for.

Remote checkpoints: :func:`download_checkpoint` fetches an ``http(s)://`` URL into a folder the caller owns (the zoo
CLI uses a private temporary folder that it removes when the run ends); the file is then read like a local one.
Nothing is cached (``torch.hub``'s cache is not used). Other remote schemes (``s3://``, ...) are refused.
"""

import dataclasses
import os
import shutil
import urllib.error
import urllib.parse
import urllib.request
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.utilities.types import _PATH
from lightning.pytorch.plugins.io import TorchCheckpointIO
from torch import nn

from zoo.errors import CheckpointError
from zoo.hub.fingerprint import detect_checkpoint
from zoo.hub.safe_load import read_checkpoint_file
from zoo.io.atomic import atomic_output

# Every checkpoint Lightning writes has this key; torch.save stores dict keys verbatim in the archive's data.pkl.
LIGHTNING_CHECKPOINT_KEY = b"pytorch-lightning_version"
PARTIAL_SUFFIX = ".partial"
URL_SCHEMES = ("http", "https")
DOWNLOAD_TIMEOUT_S = 60
#: Where the LightningModule keeps its network: checkpoint keys are ``net.<network key>``.
NETWORK_PREFIX = "net."


def is_lightning_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a torch zip archive whose pickled object has Lightning's version key (tensors unread)."""
    try:
        with zipfile.ZipFile(path) as archive:
            pickles = [name for name in archive.namelist() if name.endswith("/data.pkl")]
            return len(pickles) == 1 and LIGHTNING_CHECKPOINT_KEY in archive.read(pickles[0])
    except (OSError, zipfile.BadZipFile):
        return False


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
        with atomic_output(target, suffix=PARTIAL_SUFFIX) as stream:
            torch.save(checkpoint, stream)

    def load_checkpoint(self, path: _PATH, map_location: Any | None = None, weights_only: bool | None = None) -> dict:
        """Read a local Lightning checkpoint with the zoo's safe loader (tensors on the CPU).

        ``weights_only`` is accepted for Lightning's signature and ignored: reading is always restricted.
        """
        return read_lightning_checkpoint(path, need_weights=False)


def is_url(source: str | os.PathLike[str]) -> bool:
    """Whether ``source`` names a remote file (``scheme://...``) rather than a local path."""
    return "://" in str(source)


def download_checkpoint(url: str, folder: Path) -> Path:
    """Download the ``http(s)://`` checkpoint ``url`` into ``folder`` (which the caller owns and removes).

    Raises:
        CheckpointError: another scheme, or the download failed; the message names the URL.
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in URL_SCHEMES:
        raise CheckpointError(url, f"only local files and http(s) URLs can be read, not {parsed.scheme}:// paths")
    name = Path(urllib.parse.unquote(parsed.path)).name or "checkpoint.ckpt"
    target = folder / name
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, target.open("xb") as stream:
            shutil.copyfileobj(response, stream)
    except urllib.error.HTTPError as err:
        raise CheckpointError(url, f"download failed: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError) as err:
        reason = err.reason if isinstance(err, urllib.error.URLError) else err
        raise CheckpointError(url, f"download failed: {reason}") from None
    return target


def read_lightning_checkpoint(path: _PATH, source: str | None = None, need_weights: bool = True) -> dict[str, Any]:
    """The content of the local Lightning checkpoint ``path``, read safely; errors name ``source`` (default: path).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: a URL or other remote path, unreadable, a refused pickle, not a dict, or (with
            ``need_weights``) no ``state_dict`` inside.
    """
    source = str(path) if source is None else source
    if is_url(path):
        raise CheckpointError(source, "is not a local file; download it first (the zoo CLI does this for http(s))")
    try:
        checkpoint = read_checkpoint_file(path)
    except CheckpointError as err:
        raise CheckpointError(source, err.problem) from None
    if not isinstance(checkpoint, Mapping) or (need_weights and not isinstance(checkpoint.get("state_dict"), Mapping)):
        raise CheckpointError(
            source,
            "is not a Lightning checkpoint (no 'state_dict' inside); an authors' checkpoint or a Hub folder goes in "
            "model.weights instead",
        )
    return dict(checkpoint)


def checkpoint_network_state(checkpoint: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The network's tensors in a Lightning checkpoint of the zoo's module, ``net.`` prefix removed."""
    state = checkpoint["state_dict"]
    return {key[len(NETWORK_PREFIX) :]: value for key, value in state.items() if key.startswith(NETWORK_PREFIX)}


def check_checkpoint_fits(
    source: str,
    checkpoint: Mapping[str, Any],
    net: nn.Module,
    model_name: str,
    checkpoint_net: nn.Module | None = None,
) -> None:
    """Refuse a checkpoint whose network is another family's, or the same family's in another shape.

    ``net`` is the configured network (built for real or on the meta device), ``model_name`` its registry name;
    ``checkpoint_net`` is the network the checkpoint's hyper-parameters describe (``None`` if they do not), used to
    name the family and the config fields that differ.

    Raises:
        CheckpointError: naming ``source``, both families, or the differing config fields and first mismatching
            weights.
    """
    found = checkpoint_network_state(checkpoint)
    family = getattr(net, "family", None)
    found_family, found_model = _checkpoint_family(checkpoint, found, checkpoint_net)
    if family is not None and found_family is not None and found_family != family:
        raise CheckpointError(
            source,
            f"is a {found_family} checkpoint ({found_model}), but the configured model is {family} ({model_name}); "
            f"give a {family} checkpoint, or configure a {found_family} model",
        )
    weights = _weight_differences(net.state_dict(), found)
    if not weights:
        return
    config = _config_differences(checkpoint_net, net)
    raise CheckpointError(
        source, f"does not fit the configured {model_name} model: " + (f"config differs in {config}; " if config else "")
        + weights,
    )


def _checkpoint_family(
    checkpoint: Mapping[str, Any], state: Mapping[str, torch.Tensor], checkpoint_net: nn.Module | None
) -> tuple[str | None, str]:
    """The checkpoint's family and how it is known: its hyper-parameters' model, else its weights' layout."""
    if checkpoint_net is not None and getattr(checkpoint_net, "family", None) is not None:
        return checkpoint_net.family, f"model {(checkpoint.get('hyper_parameters') or {}).get('model')}"

    kind = detect_checkpoint(state)
    return (kind.family, kind.evidence) if kind is not None else (None, "")


def _weight_differences(expected: Mapping[str, torch.Tensor], found: Mapping[str, torch.Tensor], shown: int = 3) -> str:
    """``"12 weights differ, first: a (checkpoint (4,), configured (8,)), b (missing), ..."``; empty if all fit."""
    problems = [
        f"{key} (missing)" if key not in found else f"{key} (checkpoint {tuple(found[key].shape)}, configured "
        f"{tuple(value.shape)})"
        for key, value in expected.items()
        if key not in found or tuple(found[key].shape) != tuple(value.shape)
    ]
    problems += [f"{key} (not in the model)" for key in found if key not in expected]
    if not problems:
        return ""
    more = ", ..." if len(problems) > shown else ""
    return f"{len(problems)} weights differ, first: " + ", ".join(problems[:shown]) + more


def _config_differences(checkpoint_net: nn.Module | None, net: nn.Module, shown: int = 3) -> str:
    """``"image_size (checkpoint 32, configured 64), depth (...)"`` for the config fields that differ."""
    found, expected = getattr(checkpoint_net, "config", None), getattr(net, "config", None)
    if not dataclasses.is_dataclass(expected) or type(found) is not type(expected):
        return ""
    own = list(vars(type(expected)).get("__annotations__", {}))  # the family's own fields first, then shared ones
    order = {
        name: (0, own.index(name)) if name in own else (1, i)
        for i, name in enumerate(f.name for f in dataclasses.fields(expected))
    }
    names = sorted(
        (f.name for f in dataclasses.fields(expected) if getattr(found, f.name) != getattr(expected, f.name)),
        key=order.__getitem__,
    )
    described = [f"{n} (checkpoint {getattr(found, n)!r}, configured {getattr(expected, n)!r})" for n in names]
    return ", ".join(described[:shown]) + (", ..." if len(described) > shown else "")
