"""``zoo.from_pretrained``: build the right model class from a Hub-format folder or Hub repo id."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.constants import CONFIG_NAME
from torch import nn

_DOWNLOAD_OPTIONS = ("cache_dir", "force_download", "token", "local_files_only")


def from_pretrained(path_or_repo_id: str | Path, revision: str | None = None, **kwargs: Any) -> nn.Module:
    """Load any zoo model saved with ``save_pretrained``/``push_to_hub`` or written by ``zoo convert``.

    ``config.json``'s ``family`` picks the class; ``kwargs`` go to that class's ``from_pretrained``
    (``cache_dir``, ``force_download``, ``token``, ``local_files_only``, ``map_location``, ``strict``).
    """
    from zoo.registry import family_class

    config = read_hub_config(path_or_repo_id, revision, **{k: kwargs[k] for k in _DOWNLOAD_OPTIONS if k in kwargs})
    family = config.get("family")
    if not family:
        raise ValueError(f"{path_or_repo_id}: {CONFIG_NAME} has no 'family' field; it was not written by zoo")
    return family_class(family).from_pretrained(path_or_repo_id, revision=revision, **kwargs)


def read_hub_config(path_or_repo_id: str | Path, revision: str | None = None, **download_options: Any) -> dict:
    """The ``config.json`` of a local Hub-format folder or a Hub repo (downloaded or taken from the cache)."""
    if os.path.isdir(path_or_repo_id):
        config_file = Path(path_or_repo_id) / CONFIG_NAME
        if not config_file.is_file():
            raise FileNotFoundError(f"{path_or_repo_id}: no {CONFIG_NAME}; not a Hub-format model folder")
    else:
        config_file = Path(hf_hub_download(str(path_or_repo_id), CONFIG_NAME, revision=revision, **download_options))
    with config_file.open(encoding="utf-8") as handle:
        return json.load(handle)
