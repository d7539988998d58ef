"""Convert an official checkpoint file into a Hub-format folder (config.json, model.safetensors, README.md)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from zoo.errors import CheckpointError
from zoo.hub.fingerprint import CheckpointKind, detect_checkpoint, is_plain_sam
from zoo.hub.loading import load_official_state_dict, state_dict_mismatches
from zoo.hub.registry_cards import weight_set
from zoo.hub.sam_init import InitReport, init_from_sam_state_dict
from zoo.hub.state_dict import StateDict, read_state_dict
from zoo.models.registry import build_network, list_models
from zoo.processors import attach_default_processor

#: The files a conversion writes; ``overwrite`` replaces exactly these.
OUTPUT_FILES = ("config.json", "model.safetensors", "README.md")


@dataclass(frozen=True)
class Conversion:
    """What :func:`convert` did."""

    destination: Path
    model_name: str
    source_sha256: str
    init_report: InitReport | None = None

    def summary(self) -> str:
        text = f"wrote {self.model_name} to {self.destination} (source sha256 {self.source_sha256})"
        return text + ("\n" + self.init_report.summary() if self.init_report else "")


def convert(
    src: str | Path,
    dst: str | Path,
    model: str | None = None,
    *,
    overwrite: bool = False,
    seed: int = 0,
    **config_overrides: Any,
) -> Conversion:
    """Convert the official checkpoint ``src`` into the Hub-format folder ``dst``.

    Args:
        src: the authors' ``.pth``/``.pt``/``.safetensors`` file (any of the official wrappings).
        dst: output folder; it must not exist or be empty unless ``overwrite``.
        model: a ``zoo.create_model`` name; inferred from the keys and shapes when omitted.
        overwrite: replace ``config.json``, ``model.safetensors`` and ``README.md`` in a non-empty ``dst``.
        seed: seeds the initialisation of tensors the source does not provide (SAM -> SAM-Med2D only).
        config_overrides: config fields that differ from the released variant's.

    SAM weights (no adapters) that do not fit the chosen SAM-Med2D-family model as they are, e.g.
    ``model="sam_med2d_b"`` on Meta's ``sam_vit_b_01ec64.pth``, are taken as SAM-Med2D's initialisation
    (:func:`zoo.hub.init_from_sam`): position tables resized, decoder heads and adapters left at initialisation,
    every key reported in the returned summary and the model card.
    """
    src, dst = Path(src), Path(dst)
    _check_destination(dst, overwrite)
    state_dict, source_name = read_state_dict(src)
    kind = detect_checkpoint(state_dict)
    name = model or _infer_model_name(kind, source_name)
    if name not in list_models():
        raise CheckpointError(source_name, f"model {name!r} is not available; known models: {', '.join(list_models())}")
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        network = attach_default_processor(build_network(name, **config_overrides))

    init_report = None
    if _is_sam_initialisation(network, state_dict):
        init_report = init_from_sam_state_dict(network, state_dict, source_name)
    else:
        load_official_state_dict(network, state_dict, source_name)

    sha256 = file_sha256(src)
    dst.mkdir(parents=True, exist_ok=True)
    for filename in OUTPUT_FILES:
        (dst / filename).unlink(missing_ok=True)
    network.save_pretrained(dst, model_card_kwargs=_card_fields(name, src, sha256, init_report, config_overrides))
    return Conversion(destination=dst, model_name=name, source_sha256=sha256, init_report=init_report)


def load_converted(src: str | Path, model: str | None = None, **config_overrides: Any) -> torch.nn.Module:
    """The authors' checkpoint ``src`` loaded strictly into the zoo model it is for (inferred from its keys unless
    ``model`` names it), in eval mode, without writing anything. Plain SAM weights are refused here (they are an
    initialisation, not a trained model: use :func:`convert` with ``model``)."""
    state_dict, source_name = read_state_dict(Path(src))
    kind = detect_checkpoint(state_dict)
    name = model or _infer_model_name(kind, source_name)
    if name not in list_models():
        raise CheckpointError(source_name, f"model {name!r} is not available; known models: {', '.join(list_models())}")
    network = attach_default_processor(build_network(name, **config_overrides))
    load_official_state_dict(network, state_dict, source_name)
    return network.eval()


def _is_sam_initialisation(network: torch.nn.Module, state_dict: StateDict) -> bool:
    """SAM weights (no adapters) that do not fit a SAM-Med2D-family model as they are: SAM-Med2D's initialisation."""
    return is_plain_sam(state_dict) and getattr(network, "family", None) == "sam_med2d" and bool(
        state_dict_mismatches(network.state_dict(), state_dict)
    )


def _check_destination(dst: Path, overwrite: bool) -> None:
    if dst.exists() and not dst.is_dir():
        raise FileExistsError(f"{dst} exists and is not a folder")
    if dst.is_dir() and any(dst.iterdir()) and not overwrite:
        raise FileExistsError(
            f"{dst} already exists and is not empty; choose another folder, or pass overwrite=True (--overwrite) "
            f"to replace {', '.join(OUTPUT_FILES)} in it"
        )


def _infer_model_name(kind: CheckpointKind | None, source_name: str) -> str:
    if kind is None:
        raise CheckpointError(
            source_name, "cannot tell which model it is for (no known key layout); pass the model name (--model NAME)"
        )
    if kind.model_name is None:
        raise CheckpointError(
            source_name,
            f"looks like a {kind.family} checkpoint ({kind.evidence}) but matches no released variant; "
            "pass the model name (--model NAME) and the config fields that differ",
        )
    return kind.model_name


def _card_fields(
    name: str, src: Path, sha256: str, init_report: InitReport | None, config_overrides: dict[str, Any]
) -> dict[str, Any]:
    fields: dict[str, Any] = {"model_name": name}
    try:
        record = weight_set(name)
    except KeyError:
        record = None
    if record is not None:
        fields.update(record.card_fields())
        if record.source_file != src.name:
            fields["source_url"] = None  # a different file than the one the authors publish under that URL
    if config_overrides:
        fields["title"] = f"{fields.get('title', name)} (modified config)"
        fields["config_overrides"] = config_overrides
    fields.update(
        source_file=src.name,
        source_sha256=sha256,
        init_report=init_report.summary(source_label=src.name) if init_report else None,
    )
    return fields


def file_sha256(path: Path, chunk_size: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
