"""Read the registry of published weights (``zoo/resources/weights/<model>.yaml``, linked as ``checkpoints/`` in a
clone): one record per weight set.

Each card names the Hub repo ``zoo publish`` uses for the weight set (``hub_id``) and the revision
``zoo.from_pretrained(hub_id)`` pins by default (``revision``; null until published), where the authors' file comes
from (``source``: file name, URL, ``hf://`` address when the authors host it on the Hub, sha256), its licence, the
preprocessing its processor does, and the parity cases the zoo's implementation passes (``parity``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

#: Override the registry folder; default: the cards shipped in the package (``zoo/resources/weights``).
REGISTRY_DIR_ENV = "ZOO_CHECKPOINTS_DIR"
_REQUIRED = (
    "model", "family", "title", "license", "paper", "code", "input", "prompt_types", "hub_id", "revision",
    "preprocessing", "parity",
)


@dataclass(frozen=True)
class WeightSet:
    """One published weight set: provenance, licence, paper and the input the weights expect."""

    model: str
    family: str
    title: str
    hub_id: str | None
    source_file: str | None
    source_url: str | None
    source_sha256: str
    license: str
    license_note: str | None
    paper_title: str
    paper_url: str
    code_url: str
    input_spec: dict[str, str] = field(default_factory=dict)
    prompt_types: tuple[str, ...] = ()
    notes: str | None = None
    revision: str | None = None  #: what ``zoo.from_pretrained(hub_id)`` pins by default; None until published
    source_hub: str | None = None  #: ``hf://owner/repo/file`` where the authors host their file on the Hub
    preprocessing: str | None = None  #: what the processor saved beside the weights does, in one line
    parity_cases: tuple[str, ...] = ()  #: parity fixture cases (tests/parity) the implementation passes

    @property
    def source_sha256_known(self) -> bool:
        """Whether the card records the sha256 of the authors' file (not ``unknown``)."""
        return self.source_sha256 != "unknown"

    def card_fields(self) -> dict[str, Any]:
        """Model-card template fields (``model_card_kwargs`` of ``save_pretrained``)."""
        return {
            "title": self.title,
            "model_name": self.model,
            "repo_id": self.hub_id,
            "license": self.license,
            "license_note": self.license_note,
            "paper_url": self.paper_url,
            "repo_url": self.code_url,
            "source_url": self.source_url,
            "input_spec": self.input_spec,
            "prompt_types": list(self.prompt_types),
        }


def registry_dir() -> Path:
    configured = os.environ.get(REGISTRY_DIR_ENV)
    if configured:
        return Path(configured)
    from zoo.resources import resource_path

    return resource_path("weights")


def list_weight_sets() -> list[str]:
    """Names of every weight set in the registry, sorted."""
    return sorted(path.stem for path in _registry_files())


def weight_set(model: str) -> WeightSet:
    """The registry record for ``model`` (a ``zoo.create_model`` name)."""
    path = registry_dir() / f"{model}.yaml"
    if not path.is_file():
        raise KeyError(f"no weight-set record {path}; known: {', '.join(list_weight_sets()) or 'none'}")
    return _parse(path)


def weight_sets() -> list[WeightSet]:
    """Every record of the registry, sorted by name."""
    return [_parse(path) for path in _registry_files()]


def weight_set_for_hub_file(repo_id: str, filename: str) -> WeightSet | None:
    """The record whose authors' file is ``filename`` in the Hub repo ``repo_id`` (its ``source.hub``), if any."""
    address = f"hf://{repo_id}/{filename}"
    return next((record for record in _weight_sets_or_none() if record.source_hub == address), None)


def weight_set_for_repo(repo_id: str) -> WeightSet | None:
    """The record published under the Hub repo ``repo_id`` (its ``hub_id``), if any."""
    return next((record for record in _weight_sets_or_none() if record.hub_id == repo_id), None)


def _weight_sets_or_none() -> list[WeightSet]:
    try:
        return weight_sets()
    except FileNotFoundError:  # no registry folder (a custom ZOO_CHECKPOINTS_DIR that is gone): no cards
        return []


def _registry_files() -> list[Path]:
    folder = registry_dir()
    if not folder.is_dir():
        raise FileNotFoundError(
            f"weight registry folder {folder} not found; set {REGISTRY_DIR_ENV} to the repository's checkpoints/ folder"
        )
    return sorted(folder.glob("*.yaml"))


def _parse(path: Path) -> WeightSet:
    with path.open(encoding="utf-8") as handle:
        record = yaml.safe_load(handle)
    missing = [key for key in _REQUIRED if key not in (record or {})]
    if missing:
        raise ValueError(f"{path}: missing fields {', '.join(missing)}")
    if record["model"] != path.stem:
        raise ValueError(f"{path}: 'model' is {record['model']!r} but the file is named for {path.stem!r}")
    source = record.get("source") or {}
    return WeightSet(
        model=record["model"],
        family=record["family"],
        title=record["title"],
        hub_id=record.get("hub_id"),
        source_file=source.get("file"),
        source_url=source.get("url"),
        source_sha256=str(source.get("sha256", "unknown")),
        license=record["license"],
        license_note=record.get("license_note"),
        paper_title=record["paper"]["title"],
        paper_url=record["paper"]["url"],
        code_url=record["code"],
        input_spec={str(k): str(v) for k, v in record["input"].items()},
        prompt_types=tuple(record["prompt_types"]),
        notes=record.get("notes"),
        revision=record.get("revision"),
        source_hub=source.get("hub"),
        preprocessing=record.get("preprocessing"),
        parity_cases=tuple(record.get("parity") or ()),
    )
