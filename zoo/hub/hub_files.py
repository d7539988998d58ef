"""The authors' checkpoint files where they live on the Hugging Face Hub, loaded by an ``hf://`` address.

``zoo.from_pretrained("hf://blueyo0/SAM-Med3D/sam_med3d_turbo.pth")`` needs no separate convert step:

1. the file is downloaded with ``hf_hub_download`` (the Hub cache, ``revision``, ``token``, ``local_files_only`` and
   ``HF_HUB_OFFLINE`` behave as everywhere in ``huggingface_hub``: with a warm cache and ``HF_HUB_OFFLINE=1`` nothing
   goes over the network);
2. its sha256 is compared with the one the weight-set card that names this file records (``source.hub`` and
   ``source.sha256`` in ``checkpoints/<model>.yaml``), or with ``sha256=`` when given; a different file is refused;
3. it is converted by :func:`zoo.hub.convert.convert`, which reads it with the safe loader, into the zoo's cache
   (``$ZOO_CACHE_DIR/hf/<owner>--<repo>/<commit>/<sha256>``), written into a temporary folder and renamed into place;
   the next load reuses that folder.

Address forms: ``hf://<owner>/<repo>/<path/in/repo>``, ``hf://<owner>/<repo>@<revision>/<path/in/repo>`` (a branch,
tag or commit id without ``/``; others go in ``revision=``), and ``hf://<owner>/<repo>[@<revision>]`` for a repo in
the zoo's own Hub format.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zoo.errors import CheckpointError
from zoo.hub.convert import file_sha256
from zoo.hub.packaged import cache_dir, convert_into_cache, is_complete_folder
from zoo.hub.registry_cards import weight_set_for_hub_file

HF_SCHEME = "hf://"
#: The folder under ``$ZOO_CACHE_DIR`` that holds conversions of files downloaded from the Hub.
CACHE_SUBDIR = "hf"


@dataclass(frozen=True)
class HubAddress:
    """A parsed ``hf://`` address: a repo, an optional revision and, for an authors' file, its path in the repo."""

    repo_id: str
    revision: str | None
    filename: str | None

    def uri(self, revision: str | None = None) -> str:
        """The address, at ``revision`` (e.g. the commit it resolved to) or the one it was given."""
        at = revision or self.revision
        text = f"{HF_SCHEME}{self.repo_id}{'@' + at if at else ''}"
        return f"{text}/{self.filename}" if self.filename else text


def is_hub_address(value: object) -> bool:
    """Whether ``value`` is an ``hf://`` address (a string)."""
    return isinstance(value, str) and value.startswith(HF_SCHEME)


def parse_hub_address(address: str, revision: str | None = None) -> HubAddress:
    """Split ``hf://owner/repo[@revision][/path]``; ``revision`` (an argument) must agree with one in the address."""
    parts = address[len(HF_SCHEME) :].split("/")
    if len(parts) < 2 or not all(parts):
        raise CheckpointError(
            address, "is not an hf:// address: expected hf://<owner>/<repo>[@<revision>]/<file in the repo>"
        )
    name, at, in_address = parts[1].partition("@")
    if at and not in_address:
        raise CheckpointError(address, "has '@' but no revision after it")
    if in_address and revision and in_address != revision:
        raise CheckpointError(address, f"names revision {in_address!r} but revision={revision!r} was also given")
    return HubAddress(f"{parts[0]}/{name}", in_address or revision, "/".join(parts[2:]) or None)


def converted_hub_file(
    address: HubAddress,
    *,
    sha256: str | None = None,
    model_name: str | None = None,
    config_overrides: dict[str, Any] | None = None,
    cache_dir_hf: str | Path | None = None,
    token: str | bool | None = None,
    force_download: bool = False,
    local_files_only: bool = False,
) -> tuple[Path, str]:
    """Download, check and convert the authors' file at ``address``; returns the converted Hub folder in the zoo's
    cache and the address at the commit it resolved to (``hf://owner/repo@<commit>/file``).

    Args:
        sha256: the file's expected sha256; default: the weight-set card's, when it knows it.
        model_name: the ``zoo.create_model`` name; default: the card's, else inferred from the keys.
        config_overrides: config fields that differ from the released variant's (part of the cache key).
        cache_dir_hf, token, force_download, local_files_only: as ``hf_hub_download``'s ``cache_dir`` etc.

    Raises:
        CheckpointError: the file's sha256 differs from the expected one, or the file is not a checkpoint the zoo
            can read (the safe loader refuses pickled code) or convert. The message names the address and the file.
    """
    from huggingface_hub import hf_hub_download

    if address.filename is None:
        raise CheckpointError(address.uri(), "names a repo, not a file in it")
    path = Path(
        hf_hub_download(
            address.repo_id,
            address.filename,
            revision=address.revision,
            cache_dir=cache_dir_hf,
            token=token,
            force_download=force_download,
            local_files_only=local_files_only,
        )
    )
    commit = _snapshot_commit(path, address.filename)
    pinned = address.uri(commit)
    label = f"{pinned} (downloaded to {path})"
    card = weight_set_for_hub_file(address.repo_id, address.filename)
    expected, expected_from = sha256, "the sha256 given"
    if expected is None and card is not None and card.source_sha256_known:
        expected, expected_from = card.source_sha256, f"its weight-set card checkpoints/{card.model}.yaml"
    digest = file_sha256(path)
    if expected is not None and digest != expected.lower():
        raise CheckpointError(
            label,
            f"has sha256 {digest}, but {expected_from} expects {expected}; the file is not the one the card "
            "describes (changed on the Hub, or damaged): pin a revision that holds it, or download it again with "
            "force_download=True",
        )
    name = model_name or (card.model if card is not None else None)
    destination = cache_dir() / CACHE_SUBDIR / address.repo_id.replace("/", "--") / commit
    destination = destination / _cache_key(digest, model_name, config_overrides)
    if not is_complete_folder(destination):
        try:
            convert_into_cache(path, destination, model=name, sha256=digest, **(config_overrides or {}))
        except CheckpointError as err:
            raise CheckpointError(label, err.problem) from None
    return destination, pinned


def _snapshot_commit(path: Path, filename: str) -> str:
    """The commit id in ``.../snapshots/<commit>/<filename>``, the layout of the Hub cache."""
    snapshot = path
    for _ in Path(filename).parts:
        snapshot = snapshot.parent
    if snapshot.parent.name != "snapshots":
        raise CheckpointError(str(path), "is not inside a Hub cache snapshot folder; cannot tell its commit")
    return snapshot.name


def _cache_key(digest: str, model_name: str | None, config_overrides: dict[str, Any] | None) -> str:
    """The file's sha256, plus a short hash of the conversion options when the caller chose any."""
    if model_name is None and not config_overrides:
        return digest
    options = json.dumps({"model": model_name, "config": config_overrides or {}}, sort_keys=True, default=list)
    return f"{digest}-{hashlib.sha256(options.encode()).hexdigest()[:12]}"
