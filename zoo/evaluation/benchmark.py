"""Run a benchmark: every model on every case under every protocol, cached per unit, on one or several processes,
then one table and one report.

* A **unit** is (model, case, protocol). Its result is a JSON file in ``<output>/units/``, named by the sha256 of
  everything it depends on (the model's config and weights, the case's files, the protocol, the seed, the metric
  settings), written atomically. A run that was killed continues where it stopped; a rerun with the same inputs
  reuses every unit and writes a byte-identical table.
* **Processes**: Lightning Fabric launches ``runtime.devices`` processes (``ddp_spawn`` by default; one device
  each); the cases are shared out among them, every process loads each model once, and the unit results are
  gathered across processes (``torch.distributed.all_gather_object``) before process 0 writes the outputs.
* **Outputs** (all appear together or not at all, staged like :class:`zoo.io.masks.MaskSet`): ``results.csv`` and
  ``results.json`` (the tidy table; ``results.json`` also lists what was not applicable or skipped),
  ``timings.csv``, ``report.md`` with its ``figure-*.png``, the self-contained ``report.html``, and the resolved
  ``config.yaml``.

Models are loaded by a ``loader`` (a :data:`ModelLoader`): ``zoo benchmark`` passes the command line's, which takes
what ``zoo predict --model`` takes and builds random-weight models.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from zoo.evaluation.cases import Case, file_sha256, find_dataset_cases, load_case
from zoo.evaluation.config import BenchmarkConfig, ModelSpec
from zoo.evaluation.encoding import EncodingCache
from zoo.evaluation.protocols import Protocol, not_applicable_reason
from zoo.evaluation.runner import UnitOutcome, run_unit
from zoo.io.atomic import write_atomically
from zoo.processors import Processor, processor_for

#: Changes whenever a unit file's content or meaning changes (old cached units are then ignored).
UNIT_FORMAT = 1
RANDOM_WEIGHTS = "random weights"


@dataclass
class LoadedModel:
    """A model ready to benchmark and what the report says about its weights.

    Attributes:
        model: the network (its processor travels with it).
        origin: where its weights came from, in words.
        weights_file: the file its weights were read from (hashed into the report), None when there is none.
        random_weights: True when no trained weights were loaded (the model is labelled so everywhere).
    """

    model: nn.Module
    origin: str
    weights_file: str | None = None
    random_weights: bool = False


ModelLoader = Callable[[ModelSpec], LoadedModel]


@dataclass
class ModelInfo:
    """What the report and the cache need about a loaded model."""

    name: str
    label: str
    family: str
    processor: str
    origin: str
    random_weights: bool
    weights_file: str | None
    weights_sha256: str | None
    state_dict_sha256: str
    parameters: int


@dataclass
class BenchmarkResult:
    """What a run produced: the output folder, its files, the tidy rows and the unit records."""

    output_dir: Path
    files: list[Path]
    rows: list[dict[str, Any]]
    units: list[dict[str, Any]]
    models: list[ModelInfo]
    computed: int = 0
    reused: int = 0
    throughput: list[dict[str, Any]] = field(default_factory=list)


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 of every tensor of the state dict (names, dtypes, shapes and values, in name order)."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        values = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{values.dtype}|{tuple(values.shape)}".encode())
        digest.update(values.reshape(-1).view(torch.uint8).numpy().tobytes() if values.numel() else b"")
    return digest.hexdigest()


def describe_model(spec: ModelSpec, loaded: LoadedModel, processor: Processor) -> ModelInfo:
    model = loaded.model
    weights_file = loaded.weights_file if loaded.weights_file and Path(loaded.weights_file).is_file() else None
    return ModelInfo(
        name=spec.name,
        label=f"{spec.name} ({RANDOM_WEIGHTS})" if loaded.random_weights else spec.name,
        family=str(getattr(model, "family", "?")),
        processor=type(processor).__name__,
        origin=loaded.origin,
        random_weights=loaded.random_weights,
        weights_file=weights_file,
        weights_sha256=file_sha256(weights_file) if weights_file else None,
        state_dict_sha256=state_dict_sha256(model),
        parameters=int(sum(p.numel() for p in model.parameters())),
    )


def unit_key(
    config: BenchmarkConfig, info: ModelInfo, spec: ModelSpec, case_fingerprint: str, protocol: Protocol
) -> str:
    """sha256 of everything a unit's result depends on."""
    content = {
        "format": UNIT_FORMAT,
        "model": dataclasses.asdict(spec),
        "weights": info.state_dict_sha256,
        "processor": info.processor,
        "case": case_fingerprint,
        "protocol": protocol.cache_content(),
        "seed": config.seed,
        "metrics": dataclasses.asdict(config.metrics),
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True, default=str).encode()).hexdigest()


def read_unit(path: Path, key: str) -> dict[str, Any] | None:
    """A cached unit, or None when it is missing, unreadable or for other inputs."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    valid = isinstance(record, dict) and record.get("key") == key and record.get("format") == UNIT_FORMAT
    return record if valid else None


def slug(text: str) -> str:
    """A file-name-safe form of a name (letters, digits, '.', '_', '-')."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text).strip("._") or "_"


def mask_folder(output_dir: Path, model: str, protocol: str, dataset: str) -> Path:
    """Where ``save_masks`` writes a model's masks of one protocol on one dataset."""
    return output_dir / "masks" / slug(model) / slug(protocol) / slug(dataset)


def mask_file_name(case: Case, target: str, step: int) -> str:
    ending = ".png" if case.kind == "image" else ".nii.gz"
    return f"{slug(case.case_id)}_{slug(target)}_step{step}{ending}"


def write_masks(output_dir: Path, model: str, protocol: Protocol, loaded: Any, outcome: Any) -> list[Path]:
    """A unit's masks (table steps), all together: NIfTI with the case's grid (uint8, its affine) or 0/255 PNG."""
    import nibabel as nib
    import numpy as np
    from PIL import Image

    from zoo.io.masks import MaskSet

    case = loaded.case
    with MaskSet(mask_folder(output_dir, model, protocol.name, case.dataset), overwrite=True) as masks:
        for target, steps in outcome.masks.items():
            for step, mask in steps.items():
                values = np.asarray(mask, dtype=np.uint8)
                if case.kind == "image":
                    write = lambda path, v=values: Image.fromarray(v * 255, mode="L").save(path, format="PNG")
                else:
                    image = nib.Nifti1Image(values, loaded.affine)
                    write = lambda path, i=image: nib.save(i, str(path))
                masks.add_file(mask_file_name(case, target, step), write)
    return list(masks.written)


# ------------------------------------------------------------------------------------------------ planning
def plan_cases(config: BenchmarkConfig) -> list[Case]:
    """Every case of every dataset, checked (grids, files, classes) before any model is loaded."""
    cases = []
    for dataset in config.datasets:
        cases.extend(find_dataset_cases(dataset))
    return cases


def _my_cases(cases: Sequence[Case], rank: int, world: int) -> list[Case]:
    return [case for index, case in enumerate(cases) if index % world == rank]


# ------------------------------------------------------------------------------------------------ one process
class _Job:
    """What every process gets (a plain object: Lightning's launcher refuses frozen dataclasses in its arguments)."""

    def __init__(self, config: BenchmarkConfig, loader: ModelLoader, cases: list[Case], fingerprints: dict[str, str]):
        self.config, self.loader, self.cases, self.fingerprints = config, loader, cases, fingerprints


def _run_process(fabric: Any, job: _Job) -> dict[str, Any] | None:
    """What each process runs: its share of the cases for every model; process 0 gets everything gathered."""
    from tqdm.auto import tqdm

    config, loader, cases, fingerprints = job.config, job.loader, job.cases, job.fingerprints
    if config.runtime.num_threads is not None:
        torch.set_num_threads(config.runtime.num_threads)
    rank, world = fabric.global_rank, fabric.world_size
    units_dir = Path(config.output_dir).absolute() / "units"
    protocols = config.protocol_list()
    records: list[dict[str, Any]] = []
    infos: list[ModelInfo] = []
    mine = _my_cases(cases, rank, world)
    for spec in config.models:
        loaded = loader(spec)
        model = fabric.to_device(loaded.model.eval())
        processor = processor_for(model)
        info = describe_model(spec, loaded, processor)
        infos.append(info)
        bar = tqdm(total=len(mine) * len(protocols), desc=info.label, unit="unit", position=rank,
                   disable=not config.runtime.progress, leave=True)
        for case in mine:
            bar.set_postfix_str(case.key)
            loaded_case = None
            cache = EncodingCache(model, config.runtime.encoding_cache)
            for protocol in protocols:
                key = unit_key(config, info, spec, fingerprints[case.key], protocol)
                path = units_dir / f"{key}.json"
                record = read_unit(path, key)
                if record is None:
                    reason = not_applicable_reason(protocol, processor, case.kind)
                    if reason is None and loaded_case is None:
                        loaded_case = load_case(case)
                    if reason is None:
                        assert loaded_case is not None
                        outcome = run_unit(model, processor, loaded_case, protocol,
                                           config.metrics.settings(case.kind), config.seed, cache,
                                           keep_masks=config.report.save_masks)
                        if config.report.save_masks:
                            write_masks(Path(config.output_dir).absolute(), spec.name, protocol, loaded_case, outcome)
                    else:
                        outcome = UnitOutcome("not_applicable", reason)
                    record = {
                        "format": UNIT_FORMAT, "key": key, "model": spec.name, "dataset": case.dataset,
                        "case": case.case_id, "protocol": protocol.name, "device": str(fabric.device), "process": rank,
                        **outcome.record(),
                    }
                    write_atomically(path, json.dumps(record, indent=None, allow_nan=True))
                    record["cached"] = False
                else:
                    record["cached"] = True
                records.append(record)
                bar.update(1)
        bar.close()
        del model, loaded
    if world > 1:
        import torch.distributed as dist

        gathered: list[Any] = [None] * world
        dist.all_gather_object(gathered, records)
        records = [record for part in gathered for record in part]
        # Take the process group down in every process while all are alive, as torch asks before exit: left to
        # interpreter exit, gloo's teardown can race another process's exit (one abort seen under load).
        dist.barrier()
        dist.destroy_process_group()
    if rank != 0:
        return None
    return {"records": records, "models": [dataclasses.asdict(info) for info in infos]}


def _fabric(config: BenchmarkConfig) -> Any:
    from lightning.fabric import Fabric

    runtime = config.runtime
    strategy = runtime.strategy
    if strategy == "auto" and runtime.devices > 1:
        strategy = "ddp_spawn"
    return Fabric(accelerator=runtime.accelerator, devices=runtime.devices, strategy=strategy)


# ------------------------------------------------------------------------------------------------ the run
def run_benchmark(config: BenchmarkConfig, loader: ModelLoader, write: bool = True) -> BenchmarkResult:
    """Run (or continue) the benchmark ``config`` and write its table and report into ``config.output_dir``."""
    from zoo.evaluation.report import assemble_rows, throughput, write_outputs

    output_dir = Path(config.output_dir).absolute()
    config = dataclasses.replace(config, output_dir=str(output_dir))
    start = time.perf_counter()
    cases = plan_cases(config)
    fingerprints = {case.key: case.fingerprint() for case in cases}
    fabric = _fabric(config)
    gathered = fabric.launch(_run_process, _Job(config, loader, cases, fingerprints))
    if gathered is None:  # a relaunched process of the plain "ddp" strategy: process 0 writes
        return BenchmarkResult(output_dir, [], [], [], [])
    infos = [ModelInfo(**info) for info in gathered["models"]]
    records = gathered["records"]
    rows = assemble_rows(records, infos, config, cases)
    speeds = throughput(records, infos, config)
    files = write_outputs(config, cases, infos, records, rows, speeds, time.perf_counter() - start) if write else []
    computed = sum(not r.get("cached") for r in records if r["status"] == "ok")
    reused = sum(bool(r.get("cached")) for r in records if r["status"] == "ok")
    return BenchmarkResult(output_dir, files, rows, records, infos, computed, reused, speeds)


__all__ = [
    "BenchmarkResult",
    "LoadedModel",
    "ModelInfo",
    "ModelLoader",
    "plan_cases",
    "read_unit",
    "run_benchmark",
    "state_dict_sha256",
    "unit_key",
    "write_atomically",
]
