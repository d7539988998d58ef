"""The model card of a published weight set: ``huggingface_hub.ModelCard`` with the zoo's provenance metadata.

The card is the model's own (its template in :mod:`zoo.models.base`: title, paper, licence, source file and sha256,
usage, input, configuration) with, in its YAML metadata:

* ``promptable_medseg_zoo``: the weight set, paper, licence, the source file, its URL and sha256, the conversion
  tool and its version, the preprocessing, and the parity cases the implementation passes (declared in the
  weight-set card, not computed at publish time);
* ``model-index``: benchmark results, when a benchmark report is given;
* an ``arxiv:<id>`` tag for the paper, which the Hub links.

A benchmark report is a JSON file (written by a benchmark run, or by hand)::

    {"model": "litemedsam",
     "results": [{"dataset": "TotalSegmentator example CT", "task": "box-prompted 2D segmentation",
                  "metric": "dice", "value": 0.89, "name": "mean Dice", "split": "held-out slices"},
                 {"dataset": "...", "metrics": {"dice": 0.9, "nsd": 0.95}}]}

(a bare list of results is accepted too). Each result names its ``dataset`` and gives ``metric`` and ``value``, or
a ``metrics`` object of name -> value; ``task``, ``name``, ``split`` and ``protocol`` are optional.

The ``results.json`` of a zoo benchmark run (tidy ``rows``: one per model, case, target, protocol and step, with
``dice`` and ``nsd``) is accepted as well when it holds one model: each metric's mean per dataset, protocol and
step becomes one result.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard
from torch import nn

from zoo.errors import DataError
from zoo.hub.registry_cards import WeightSet

#: The YAML metadata key under which the zoo's provenance goes.
METADATA_KEY = "promptable_medseg_zoo"
_TASK_TYPE = "image-segmentation"


@dataclass(frozen=True)
class BenchmarkResult:
    """One metric on one dataset, from a benchmark report."""

    dataset: str
    metric: str
    value: float
    task: str | None = None
    name: str | None = None
    split: str | None = None
    protocol: str | None = None

    def eval_result(self) -> EvalResult:
        """The Hub's ``model-index`` entry for this result."""
        return EvalResult(
            task_type=_TASK_TYPE,
            task_name=self.task or self.protocol,
            dataset_type=_slug(self.dataset),
            dataset_name=self.dataset,
            dataset_split=self.split,
            metric_type=self.metric,
            metric_name=self.name,
            metric_value=self.value,
        )


def read_benchmark_report(path: str | Path) -> list[BenchmarkResult]:
    """The results of a benchmark report JSON file (format in the module docstring)."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: benchmark report not found") from None
    except ValueError as err:
        raise DataError(path, f"is not a JSON benchmark report ({err})") from None
    if isinstance(content, dict) and isinstance(content.get("rows"), list):
        return _results_of_benchmark_rows(content["rows"], path)
    entries = content.get("results") if isinstance(content, dict) else content
    if not isinstance(entries, list) or not entries:
        raise DataError(path, "holds no results: expected {\"results\": [{\"dataset\", \"metric\", \"value\"}, ...]}")
    results = []
    for index, entry in enumerate(entries):
        results += _results_of(entry, f"results[{index}]", path)
    return results


def _results_of_benchmark_rows(rows: list[Any], path: Path) -> list[BenchmarkResult]:
    """Means per dataset, protocol and step of a zoo benchmark's tidy rows (one model)."""
    models = sorted({str(row.get("model")) for row in rows if isinstance(row, dict)})
    if len(models) != 1:
        raise DataError(path, f"holds the results of {len(models)} models ({', '.join(models)}); publish needs one")
    sums: dict[tuple[str, str, str, str], list[float]] = {}
    for row in rows:
        step = f"{row.get('protocol')} @ {row.get('step_label', row.get('step'))}"
        for metric in ("dice", "nsd"):
            value = row.get(metric)
            if isinstance(value, (int, float)) and value == value:  # NaN: not scored
                sums.setdefault((str(row.get("dataset")), step, metric, str(row.get("protocol"))), []).append(value)
    if not sums:
        raise DataError(path, "holds no scored rows (dice/nsd)")
    return [
        BenchmarkResult(dataset, metric, sum(values) / len(values), task=step, name=f"mean {metric}")
        for (dataset, step, metric, _), values in sums.items()
    ]


def _results_of(entry: Any, where: str, path: Path) -> list[BenchmarkResult]:
    if not isinstance(entry, dict) or not isinstance(entry.get("dataset"), str):
        raise DataError(path, f"{where} must be an object with a 'dataset' name")
    metrics = entry.get("metrics")
    if metrics is None:
        metrics = {entry.get("metric"): entry.get("value")}
    if not isinstance(metrics, dict):
        raise DataError(path, f"{where}: 'metrics' must be an object of metric name -> value")
    extra = {key: entry.get(key) for key in ("task", "name", "split", "protocol")}
    results = []
    for metric, value in metrics.items():
        if not isinstance(metric, str) or isinstance(value, bool) or not isinstance(value, (int, float)):
            raise DataError(path, f"{where}: needs a metric name and a numeric value, got {metric!r}: {value!r}")
        results.append(BenchmarkResult(entry["dataset"], metric, float(value), **extra))
    return results


def publication_card(
    model: nn.Module,
    *,
    repo_id: str,
    record: WeightSet | None,
    source_file: str,
    source_sha256: str,
    source_url: str | None,
    tool_version: str,
    benchmark: list[BenchmarkResult] | None = None,
    revision: str | None = None,
) -> ModelCard:
    """The model card ``zoo publish`` writes as ``README.md`` (see the module docstring)."""
    fields: dict[str, Any] = record.card_fields() if record is not None else {}
    fields.update(repo_id=repo_id, source_file=source_file, source_sha256=source_sha256, source_url=source_url)
    card = model.generate_model_card(**fields)
    provenance = {
        "weight_set": record.model if record else None,
        "paper": record.paper_url if record else None,
        "license": record.license if record else None,
        "source_file": source_file,
        "source_url": source_url,
        "source_sha256": source_sha256,
        "converted_with": f"promptable-medseg-zoo {tool_version}",
        "preprocessing": record.preprocessing if record else None,
        "parity_cases": list(record.parity_cases) if record else [],
    }
    card.data[METADATA_KEY] = provenance
    arxiv = re.search(r"arxiv\.org/abs/(\d{4}\.\d{4,5})", record.paper_url) if record else None
    if arxiv:
        card.data.tags = [*(card.data.tags or []), f"arxiv:{arxiv.group(1)}"]
    if benchmark:
        card.data.model_name = repo_id
        card.data.eval_results = [result.eval_result() for result in benchmark]
    card.text = card.text.rstrip("\n") + "\n" + _sections(repo_id, revision, provenance, benchmark)
    return card


def _sections(
    repo_id: str, revision: str | None, provenance: dict[str, Any], benchmark: list[BenchmarkResult] | None
) -> str:
    lines = ["", "## Publication", ""]
    lines += [f"Published with `zoo publish` ({provenance['converted_with']}).", ""]
    if revision:
        lines += [
            f"This release is the revision `{revision}`; pin it with",
            "",
            "```python",
            f'model = zoo.from_pretrained("{repo_id}", revision="{revision}")',
            "```",
            "",
        ]
    if provenance["preprocessing"]:
        lines.append(f"- **Preprocessing** (`processor_config.json`): {provenance['preprocessing']}")
    cases = provenance["parity_cases"]
    if cases:
        listed = ", ".join(f"`{case}`" for case in cases)
        lines.append(
            f"- **Parity:** the zoo's implementation passes the parity cases {listed} (tests/parity: fixtures made "
            "by running the authors' code; declared in the weight-set card, not measured at publishing)"
        )
    else:
        lines.append("- **Parity:** no parity case is declared for these weights")
    if benchmark:
        lines += ["", "## Benchmark", "", "| dataset | task | split | metric | value |", "|---|---|---|---|---|"]
        for result in benchmark:
            cells = (result.dataset, result.task or result.protocol or "", result.split or "",
                     result.name or result.metric, f"{result.value:.4g}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "dataset"
