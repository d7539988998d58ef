"""The benchmark's tables: the tidy results (one row per model x case x target x protocol x step), the papers'
summary layout (mean +- std per model and step), per-class means, throughput, and paired comparisons between models
(per-target differences, a seeded percentile bootstrap interval of their mean, and Wilcoxon's signed-rank test).

The tidy table is written so that the same inputs give the same bytes: rows in a fixed order, floats as Python's
shortest round-trip ``repr``, a missing value as an empty CSV field and ``null`` in JSON.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

#: Columns of the tidy table, in order (``hd95`` only when asked).
ID_COLUMNS = ("model", "dataset", "case", "target", "class", "protocol", "step", "step_label")
METRICS = ("dice", "nsd", "hd95")


def _cell(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def columns(rows: Sequence[dict[str, Any]]) -> list[str]:
    present = set().union(*(row.keys() for row in rows)) if rows else set()
    return [*ID_COLUMNS, *(m for m in METRICS if m in present)]


def to_csv(rows: Sequence[dict[str, Any]]) -> str:
    """The tidy table as CSV text (``\\n`` line ends)."""
    names = columns(rows)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(names)
    for row in rows:
        writer.writerow([_cell(row.get(name)) for name in names])
    return buffer.getvalue()


def to_json(content: Any) -> str:
    """JSON text with non-finite floats as ``null`` and a final newline."""

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return _json_value(value)

    return json.dumps(clean(content), indent=1, allow_nan=False) + "\n"


# ------------------------------------------------------------------------------------------------ summaries
@dataclass(frozen=True)
class Summary:
    """Mean, standard deviation (``ddof=1``; 0 for one value) and count of a metric over targets; ``missing`` counts
    undefined values (NaN: HD95 of an empty mask, NSD of two empty masks), which the mean leaves out."""

    mean: float
    std: float
    n: int
    missing: int = 0

    def text(self, scale: float = 1.0, digits: int = 2) -> str:
        if self.n == 0:
            return "n/a"
        return f"{self.mean * scale:.{digits}f} ± {self.std * scale:.{digits}f}"


def summarise(values: Iterable[float | None]) -> Summary:
    raw = [v for v in values]
    finite = np.array([v for v in raw if v is not None and not math.isnan(v)], dtype=np.float64)
    missing = len(raw) - len(finite)
    if not len(finite):
        return Summary(math.nan, math.nan, 0, missing)
    std = float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0
    return Summary(float(np.mean(finite)), std, len(finite), missing)


def group(rows: Iterable[dict[str, Any]], keys: Sequence[str], metric: str) -> dict[tuple[Any, ...], Summary]:
    """``metric`` summarised per value of ``keys`` (in first-seen order)."""
    values: dict[tuple[Any, ...], list[float]] = defaultdict(list)
    for row in rows:
        if metric in row:
            values[tuple(row[k] for k in keys)].append(row[metric])
    return {key: summarise(v) for key, v in values.items()}


# ------------------------------------------------------------------------------------------------ paired tests
@dataclass(frozen=True)
class Paired:
    """Model ``a`` minus model ``b`` on the targets both were scored on, at one protocol and step."""

    protocol: str
    step: int
    a: str
    b: str
    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    p_value: float
    note: str = ""


def bootstrap_interval(
    differences: np.ndarray, samples: int, confidence: float, rng: np.random.Generator
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``differences`` (resampling targets with replacement)."""
    if len(differences) == 0:
        return math.nan, math.nan
    draws = rng.integers(0, len(differences), size=(samples, len(differences)))
    means = differences[draws].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail], method="linear")
    return float(low), float(high)


def wilcoxon_p(differences: np.ndarray) -> tuple[float, str]:
    """Two-sided Wilcoxon signed-rank p-value of paired differences (zeros dropped, as Wilcoxon's original test);
    NaN with a note when there is nothing to test."""
    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        return math.nan, "identical on every target"
    result = stats.wilcoxon(
        differences, zero_method="wilcox", correction=False, alternative="two-sided", method="auto",
        nan_policy="raise",
    )
    return float(result.pvalue), ("" if len(nonzero) >= 6 else f"only {len(nonzero)} non-zero differences")


def paired_comparisons(
    rows: Sequence[dict[str, Any]],
    metric: str,
    models: Sequence[str],
    seed: int,
    samples: int,
    confidence: float,
    steps: dict[str, Sequence[int]],
) -> list[Paired]:
    """Every pair of models on every protocol and table step, matched on (dataset, case, target)."""
    from zoo.evaluation.runner import stream_seed

    by_key: dict[tuple[str, int, str], dict[tuple[str, str, str], float]] = defaultdict(dict)
    for row in rows:
        value = row.get(metric)
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        by_key[(row["protocol"], row["step"], row["model"])][(row["dataset"], row["case"], row["target"])] = value
    out = []
    for protocol, table_steps in steps.items():
        for step in table_steps:
            for a, b in combinations(models, 2):
                left, right = by_key.get((protocol, step, a)), by_key.get((protocol, step, b))
                if not left or not right:
                    continue
                shared = sorted(set(left) & set(right))
                if not shared:
                    continue
                differences = np.array([left[k] - right[k] for k in shared], dtype=np.float64)
                rng = np.random.default_rng(stream_seed(seed, "bootstrap", metric, protocol, step, a, b))
                low, high = bootstrap_interval(differences, samples, confidence, rng)
                p_value, note = wilcoxon_p(differences)
                out.append(Paired(protocol, step, a, b, len(shared), float(differences.mean()), low, high, p_value,
                                  note))
    return out


def markdown_table(header: Sequence[str], body: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    return "\n".join(lines)


__all__ = [
    "ID_COLUMNS",
    "METRICS",
    "Paired",
    "Summary",
    "bootstrap_interval",
    "columns",
    "group",
    "markdown_table",
    "paired_comparisons",
    "summarise",
    "to_csv",
    "to_json",
    "wilcoxon_p",
]
