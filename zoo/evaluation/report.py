"""The benchmark's outputs: the tidy table, the timings, and the report (Markdown with PNG figures, and one
self-contained HTML page with the same figures embedded as base64 PNG).

The report holds the summary table in the papers' layout (Dice % and NSD % as mean +- std per model and step), the
papers' own numbers as separate reference rows, Dice-versus-clicks curves, per-class bars, distributions, paired
differences between models (bootstrap intervals, Wilcoxon), a grid of overlays on representative slices, what was
not applicable or skipped, the throughput, and what produced it (versions, config, weight hashes, seeds).
Figures are drawn with matplotlib's object API on an Agg canvas (no global pyplot state); without matplotlib the
report says so and leaves them out.
"""

from __future__ import annotations

import base64
import html
import io
import math
import platform
import sys
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zoo.evaluation.cases import Case, load_case
from zoo.evaluation.config import BenchmarkConfig
from zoo.evaluation.overlays import overlay
from zoo.evaluation.protocols import Protocol
from zoo.evaluation.runner import unpack_mask
from zoo.evaluation.tables import (
    Paired,
    group,
    markdown_table,
    paired_comparisons,
    to_csv,
    to_json,
)

PERCENT = 100.0


@dataclass
class Figure:
    """One figure: a file name, a caption, and its PNG bytes."""

    name: str
    caption: str
    png: bytes

    @property
    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png).decode()


# ------------------------------------------------------------------------------------------------ rows
def assemble_rows(
    records: Sequence[dict[str, Any]], infos: Sequence[Any], config: BenchmarkConfig, cases: Sequence[Case]
) -> list[dict[str, Any]]:
    """The tidy table: one row per model x case x target x protocol x step, in config order."""
    label = {info.name: info.label for info in infos}
    model_order = {info.name: i for i, info in enumerate(infos)}
    protocols = {p.name: p for p in config.protocol_list()}
    protocol_order = {name: i for i, name in enumerate(protocols)}
    dataset_order = {d.name: i for i, d in enumerate(config.datasets)}
    target_order = {(c.dataset, c.case_id, t.name): i for c in cases for i, t in enumerate(c.targets)}
    rows = []
    for record in records:
        if record["status"] != "ok":
            continue
        protocol = protocols[record["protocol"]]
        for row in record["rows"]:
            entry = {
                "model": label[record["model"]],
                "dataset": record["dataset"],
                "case": record["case"],
                "target": row["target"],
                "class": row["class"],
                "protocol": record["protocol"],
                "step": int(row["step"]),
                "step_label": protocol.step_label(int(row["step"])),
                "dice": float(row["dice"]),
                "nsd": float(row["nsd"]),
            }
            if "hd95" in row:
                entry["hd95"] = float(row["hd95"]) if row["hd95"] is not None else math.nan
            order = (
                model_order[record["model"]], dataset_order[record["dataset"]], record["case"],
                target_order.get((record["dataset"], record["case"], row["target"]), 0),
                protocol_order[record["protocol"]], entry["step"],
            )
            rows.append((order, entry))
    return [entry for _, entry in sorted(rows, key=lambda item: item[0])]


def throughput(records: Sequence[dict[str, Any]], infos: Sequence[Any], config: BenchmarkConfig) -> list[dict[str, Any]]:
    """Per model and protocol: units (cases), their seconds, cases per minute, encodings, peak memory."""
    label = {info.name: info.label for info in infos}
    totals: dict[tuple[str, str], dict[str, Any]] = {}
    for record in records:
        if record["status"] != "ok":
            continue
        entry = totals.setdefault(
            (record["model"], record["protocol"]),
            {"cases": 0, "seconds": 0.0, "encoder_calls": 0, "peak_memory_bytes": 0, "reused": 0, "devices": set()},
        )
        entry["cases"] += 1
        entry["seconds"] += float(record["seconds"])
        entry["encoder_calls"] += int(record["encoder_calls"])
        entry["peak_memory_bytes"] = max(entry["peak_memory_bytes"], int(record.get("peak_memory_bytes") or 0))
        entry["reused"] += int(bool(record.get("cached")))
        entry["devices"].add(str(record.get("device", "?")))
    out = []
    for info in infos:
        for protocol in config.protocol_list():
            entry = totals.get((info.name, protocol.name))
            if entry is None:
                continue
            seconds = entry["seconds"]
            out.append({
                "model": label[info.name],
                "protocol": protocol.name,
                "cases": entry["cases"],
                "seconds": seconds,
                "cases_per_minute": entry["cases"] / seconds * 60.0 if seconds > 0 else math.inf,
                "seconds_per_case": seconds / entry["cases"],
                "encoder_calls": entry["encoder_calls"],
                "peak_memory_mib": entry["peak_memory_bytes"] / 2**20,
                "cached_units": entry["reused"],
                "devices": ",".join(sorted(entry["devices"])),
            })
    return out


def throughput_text(speeds: Sequence[dict[str, Any]]) -> str:
    """The throughput table as the benchmark prints it."""
    lines = [f"{'model':<36} {'protocol':<20} {'cases':>5} {'cases/min':>10} {'s/case':>8} {'encodings':>9} {'peak MiB':>9}"]
    for s in speeds:
        lines.append(
            f"{s['model'][:36]:<36} {s['protocol'][:20]:<20} {s['cases']:>5} {s['cases_per_minute']:>10.2f} "
            f"{s['seconds_per_case']:>8.2f} {s['encoder_calls']:>9} {s['peak_memory_mib']:>9.0f}"
        )
    return "\n".join(lines)


def timings_csv(records: Sequence[dict[str, Any]], infos: Sequence[Any]) -> str:
    label = {info.name: info.label for info in infos}
    rows = [
        {"model": label[r["model"]], "dataset": r["dataset"], "case": r["case"], "protocol": r["protocol"],
         "seconds": float(r["seconds"]), "encoder_calls": int(r["encoder_calls"]),
         "peak_memory_bytes": r.get("peak_memory_bytes"), "device": r.get("device"), "reused_from_cache": r.get("cached")}
        for r in records if r["status"] == "ok"
    ]
    import csv

    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(rows[0]) if rows else ["model"], lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ figures
def _matplotlib() -> Any:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure as MplFigure
    except ImportError:
        return None
    return MplFigure, FigureCanvasAgg


def _png(figure: Any, canvas_class: Any) -> bytes:
    canvas_class(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight", metadata={"Software": None})
    return buffer.getvalue()


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    palette = colormaps["tab10"]
    return [palette(i % 10) for i in range(n)]


def figure_clicks(rows: Sequence[dict[str, Any]], models: Sequence[str], protocols: Sequence[Protocol]) -> Figure | None:
    """Mean Dice (+- std) after each click, per model, one panel per click protocol."""
    tools = _matplotlib()
    clicks = [p for p in protocols if p.kind == "clicks" and any(r["protocol"] == p.name for r in rows)]
    if tools is None or not clicks:
        return None
    MplFigure, canvas = tools
    figure = MplFigure(figsize=(5.0 * len(clicks), 3.6))
    summary = group(rows, ("model", "protocol", "step"), "dice")
    for index, protocol in enumerate(clicks):
        axes = figure.add_subplot(1, len(clicks), index + 1)
        for model, colour in zip(models, _colours(len(models))):
            steps = [s for s in protocol.steps if (model, protocol.name, s) in summary]
            if not steps:
                continue
            mean = np.array([summary[(model, protocol.name, s)].mean for s in steps]) * PERCENT
            std = np.array([summary[(model, protocol.name, s)].std for s in steps]) * PERCENT
            axes.plot(steps, mean, marker="o", color=colour, label=model)
            axes.fill_between(steps, mean - std, mean + std, color=colour, alpha=0.12)
        axes.set_title(protocol.name)
        axes.set_xlabel("clicks (per slice for 2D models on volumes)")
        axes.set_ylabel("Dice % (mean ± std)")
        axes.set_xticks(list(protocol.steps))
        axes.set_ylim(0, 100)
        axes.grid(alpha=0.3)
        axes.legend(fontsize=7, loc="lower right")
    return Figure("figure-clicks.png", "Dice versus the number of clicks, per model (band: ± one standard deviation over "
                  "targets).", _png(figure, canvas))


def _headline_steps(protocols: Sequence[Protocol], rows: Sequence[dict[str, Any]]) -> list[tuple[Protocol, int]]:
    present = {(r["protocol"], r["step"]) for r in rows}
    return [(p, p.table_steps[-1]) for p in protocols if (p.name, p.table_steps[-1]) in present]


def figure_classes(rows: Sequence[dict[str, Any]], models: Sequence[str], protocols: Sequence[Protocol]) -> Figure | None:
    """Mean Dice per class and model, one panel per protocol at its last table step."""
    tools = _matplotlib()
    panels = _headline_steps(protocols, rows)
    if tools is None or not panels:
        return None
    MplFigure, canvas = tools
    classes = list(dict.fromkeys(r["class"] for r in rows))
    height = max(2.5, 0.28 * len(classes) * max(1, len(models)) / 2 + 1.0)
    figure = MplFigure(figsize=(4.2 * len(panels), height))
    summary = group(rows, ("model", "protocol", "step", "class"), "dice")
    width = 0.8 / max(1, len(models))
    for index, (protocol, step) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for m, (model, colour) in enumerate(zip(models, _colours(len(models)))):
            positions, values = [], []
            for c, name in enumerate(classes):
                entry = summary.get((model, protocol.name, step, name))
                if entry is not None and entry.n:
                    positions.append(c + (m - (len(models) - 1) / 2) * width)
                    values.append(entry.mean * PERCENT)
            if positions:
                axes.barh(positions, values, height=width, color=colour, label=model)
        axes.set_yticks(range(len(classes)))
        axes.set_yticklabels(classes if index == 0 else [""] * len(classes), fontsize=7)
        axes.invert_yaxis()
        axes.set_xlim(0, 100)
        axes.set_xlabel("Dice %")
        axes.set_title(f"{protocol.name}, {protocol.step_label(step)}", fontsize=9)
        axes.grid(axis="x", alpha=0.3)
    figure.axes[0].legend(fontsize=7, loc="lower left", bbox_to_anchor=(0.0, 1.08), ncol=2)
    return Figure("figure-classes.png", "Mean Dice per class (over cases), per model; each protocol at its last "
                  "table step.", _png(figure, canvas))


def figure_distributions(
    rows: Sequence[dict[str, Any]], models: Sequence[str], protocols: Sequence[Protocol]
) -> Figure | None:
    """Per-target Dice of each model, as box plots with the points, one panel per protocol and table step."""
    tools = _matplotlib()
    present = {(r["protocol"], r["step"]) for r in rows}
    panels = [(p, s) for p in protocols for s in p.table_steps if (p.name, s) in present]
    if tools is None or not panels:
        return None
    MplFigure, canvas = tools
    columns = min(4, len(panels))
    lines = math.ceil(len(panels) / columns)
    figure = MplFigure(figsize=(3.4 * columns, 3.2 * lines), layout="constrained")
    values: dict[tuple[str, str, int], list[float]] = defaultdict(list)
    for row in rows:
        values[(row["model"], row["protocol"], row["step"])].append(row["dice"] * PERCENT)
    rng = np.random.default_rng(0)  # jitter of the points only
    for index, (protocol, step) in enumerate(panels):
        axes = figure.add_subplot(lines, columns, index + 1)
        data = [values.get((m, protocol.name, step), []) for m in models]
        shown = [i for i, d in enumerate(data) if d]
        if shown:
            axes.boxplot([data[i] for i in shown], positions=[i + 1 for i in shown], widths=0.6, showfliers=False)
            for i in shown:
                axes.scatter(i + 1 + rng.uniform(-0.15, 0.15, len(data[i])), data[i], s=6, alpha=0.5,
                             color=_colours(len(models))[i])
        axes.set_xticks(range(1, len(models) + 1))
        axes.set_xticklabels([m.replace(" (random weights)", "\n(random w.)") for m in models], fontsize=6, rotation=30)
        axes.set_ylim(-2, 102)
        axes.set_ylabel("Dice %", fontsize=8)
        axes.set_title(f"{protocol.name}, {protocol.step_label(step)}", fontsize=8)
        axes.grid(axis="y", alpha=0.3)
    return Figure("figure-distributions.png", "Distribution of per-target Dice (one point per case and target).",
                  _png(figure, canvas))


def figure_paired(paired: Sequence[Paired]) -> Figure | None:
    """Mean Dice difference of each model pair with its bootstrap interval."""
    tools = _matplotlib()
    if tools is None or not paired:
        return None
    MplFigure, canvas = tools
    figure = MplFigure(figsize=(7.5, 0.32 * len(paired) + 1.2))
    axes = figure.add_subplot(1, 1, 1)
    labels = [f"{p.a} − {p.b} | {p.protocol} {p.step}" for p in paired]
    means = np.array([p.mean_difference for p in paired]) * PERCENT
    low = np.array([p.ci_low for p in paired]) * PERCENT
    high = np.array([p.ci_high for p in paired]) * PERCENT
    positions = np.arange(len(paired))
    axes.errorbar(means, positions, xerr=[means - low, high - means], fmt="o", color="black", ecolor="grey", capsize=2)
    axes.axvline(0.0, color="red", linewidth=0.8)
    axes.set_yticks(positions)
    axes.set_yticklabels(labels, fontsize=6)
    axes.invert_yaxis()
    axes.set_xlabel("Dice difference, percentage points (mean, bootstrap interval)")
    axes.grid(axis="x", alpha=0.3)
    return Figure("figure-paired.png", "Paired per-target Dice differences between models with bootstrap intervals.",
                  _png(figure, canvas))


def _overlay_choice(config: BenchmarkConfig, records: Sequence[dict[str, Any]]) -> tuple[Protocol, int] | None:
    protocols = config.protocol_list()
    ok = {r["protocol"] for r in records if r["status"] == "ok"}
    named = [p for p in protocols if p.name == config.report.overlay_protocol]
    candidates = named or [p for p in protocols if p.name in ok]
    if not candidates:
        return None
    protocol = candidates[0]
    step = config.report.overlay_step or protocol.table_steps[-1]
    return protocol, step


def _unit_for_overlay(
    records: dict[tuple[str, str, str, str], dict[str, Any]], protocols: Sequence[Protocol], preferred: Protocol,
    step: int, model: str, case: Case, target: str,
) -> tuple[dict[str, Any], Protocol, int] | None:
    """The unit whose mask a model's overlay shows: the preferred protocol's, else (not applicable to this model)
    the model's first protocol that ran, at its last table step."""
    for protocol in [preferred, *[p for p in protocols if p.name != preferred.name]]:
        record = records.get((model, case.dataset, case.case_id, protocol.name))
        if record is not None and record["status"] == "ok" and target in record["overlays"]:
            return record, protocol, (step if protocol.name == preferred.name else protocol.table_steps[-1])
    return None


def figure_overlays(
    config: BenchmarkConfig, cases: Sequence[Case], records: Sequence[dict[str, Any]], infos: Sequence[Any]
) -> Figure | None:
    """Image, label and each model's mask on the representative slice of a few targets."""
    tools = _matplotlib()
    choice = _overlay_choice(config, records)
    if tools is None or choice is None:
        return None
    preferred, step = choice
    protocols = config.protocol_list()
    by_unit = {(r["model"], r["dataset"], r["case"], r["protocol"]): r for r in records}
    candidates = [
        (case, target) for case in cases for target in case.targets
        if any(_unit_for_overlay(by_unit, protocols, preferred, step, i.name, case, target.name) for i in infos)
    ]
    if not candidates:
        return None
    seen: set[str] = set()  # distinct classes first, then more of the same, in case order
    ordered = [c for c in candidates if not (c[1].class_name in seen or seen.add(c[1].class_name))]
    ordered += [c for c in candidates if c not in ordered]
    chosen = ordered[: config.report.overlay_panels]
    MplFigure, canvas = tools
    columns = 2 + len(infos)
    figure = MplFigure(figsize=(1.9 * columns, 2.0 * len(chosen) + 0.4), layout="constrained")
    loaded_cases: dict[str, Any] = {}
    for row, (case, target) in enumerate(chosen):
        if case.key not in loaded_cases:
            loaded_cases[case.key] = load_case(case)
        loaded = loaded_cases[case.key]
        label_full = loaded.labels[target.name]
        units = {i.name: _unit_for_overlay(by_unit, protocols, preferred, step, i.name, case, target.name)
                 for i in infos}
        index = next(u[0]["overlays"][target.name]["slice"] for u in units.values() if u is not None)
        if case.kind == "image":
            image, label = loaded.image, label_full
        else:
            grey = loaded.display_slices()[index]
            image, label = np.repeat(grey[..., None], 3, axis=2), loaded.display_slice(label_full, index)
        panels = [("image", np.asarray(image)), ("label", np.asarray(overlay(image, label, label)))]
        for info in infos:
            unit = units[info.name]
            packed = None if unit is None else unit[0]["overlays"][target.name]["masks"].get(str(unit[2]))
            if unit is None or packed is None:
                panels.append((f"{info.label}\nnot applicable", None))
                continue
            record, protocol, shown = unit
            dice = next((r["dice"] for r in record["rows"] if r["target"] == target.name and r["step"] == shown),
                        math.nan)
            title = f"{info.label}\n{protocol.name} {protocol.step_label(shown)}: Dice {dice:.2f}"
            panels.append((title, np.asarray(overlay(image, label, unpack_mask(packed)))))
        for column, (title, picture) in enumerate(panels):
            axes = figure.add_subplot(len(chosen), columns, row * columns + column + 1)
            axes.set_xticks([])
            axes.set_yticks([])
            if picture is None:
                axes.text(0.5, 0.5, "n/a", ha="center", va="center")
            else:
                axes.imshow(picture, interpolation="nearest")
            axes.set_title(title, fontsize=5.5)
            if column == 0:
                where = f"slice {index}" if index is not None else "image"
                axes.set_ylabel(f"{case.case_id}\n{target.name}\n{where}", fontsize=6)
    caption = (f"Overlays: the label outlined in green, each model's mask filled in red, under {preferred.name} "
               f"{preferred.step_label(step)} (a model that cannot take it: its first protocol that ran, named above "
               "the panel); Dice of the whole target on its grid; rows are the targets' largest slices.")
    return Figure("figure-overlays.png", caption, _png(figure, canvas))


# ------------------------------------------------------------------------------------------------ text
def _versions() -> dict[str, str]:
    from importlib import metadata

    found = {"python": sys.version.split()[0], "platform": platform.platform()}
    for name in ("promptable-medseg-zoo", "torch", "lightning", "monai", "numpy", "scipy", "matplotlib", "nibabel"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


@dataclass
class ReportContent:
    """Every section of the report as plain data (rendered to Markdown and HTML)."""

    title: str
    sections: list[tuple[str, list[Any]]]


def _summary_tables(rows: Sequence[dict[str, Any]], models: Sequence[str], protocols: Sequence[Protocol],
                    metric: str) -> tuple[list[str], list[list[str]]]:
    summary = group(rows, ("model", "protocol", "step"), metric)
    present = {(r["protocol"], r["step"]) for r in rows}
    columns = [(p, s) for p in protocols for s in p.table_steps if (p.name, s) in present]
    header = ["model"] + [f"{p.name}<br>{p.step_label(s)}" for p, s in columns]
    body = []
    for model in models:
        cells = [model]
        for protocol, step in columns:
            entry = summary.get((model, protocol.name, step))
            cells.append("n/a" if entry is None else entry.text(PERCENT))
        body.append(cells)
    return header, body


def build_content(
    config: BenchmarkConfig,
    cases: Sequence[Case],
    infos: Sequence[Any],
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    speeds: Sequence[dict[str, Any]],
    seconds: float,
) -> tuple[ReportContent, list[Figure], list[Paired]]:
    protocols = config.protocol_list()
    models = [info.label for info in infos]
    sections: list[tuple[str, list[Any]]] = []

    metric_note = (
        f"Scores on each case's own grid (the file's voxels for volumes, the image's pixels for 2D images), through "
        f"each model's processor and its inverse. Dice, and NSD at {config.metrics.nsd_tolerance_mm:g} mm on volumes and "
        f"{config.metrics.nsd_tolerance_px:g} px on 2D images ({config.metrics.nsd_boundary} boundary), from "
        "monai.metrics; mean ± standard deviation (ddof 1) over (case, target) pairs, in percent."
        + (" HD95 in mm (volumes) or px (images); undefined (empty mask) values are left out of its means."
           if config.metrics.hd95 else "")
    )
    random = [i.label for i in infos if i.random_weights]
    notes = [metric_note]
    if random:
        notes.append("Models marked (random weights) have no trained weights: their masks mean nothing; they show "
                     "that the pipeline runs, not how the architecture performs.")
    header, body = _summary_tables(rows, models, protocols, "dice")
    sections.append(("Summary: Dice %", [*notes, ("table", header, body)]))
    header, body = _summary_tables(rows, models, protocols, "nsd")
    sections.append(("Summary: NSD %", [("table", header, body)]))
    if config.metrics.hd95:
        summary = group(rows, ("model", "protocol", "step"), "hd95")
        present = {(r["protocol"], r["step"]) for r in rows}
        columns = [(p, s) for p in protocols for s in p.table_steps if (p.name, s) in present]
        body = [[m] + [("n/a" if (e := summary.get((m, p.name, s))) is None else e.text(1.0)
                        + (f" ({e.missing} undefined)" if e.missing else "")) for p, s in columns] for m in models]
        sections.append(("Summary: HD95", [("table", ["model"] + [f"{p.name}<br>{p.step_label(s)}" for p, s in columns],
                                            body)]))
    if config.references:
        body = [[f"{r.model} (paper)", r.protocol, r.step, f"{r.dice:.2f}", r.data, r.source] for r in config.references]
        sections.append(("Reported in the papers (reference rows, other data)", [
            "The numbers the papers report for the released models, with their source, for orientation: they were "
            "measured on the papers' data, not on this benchmark's cases.",
            ("table", ["model", "protocol", "step", "Dice %", "data", "source"], body),
        ]))

    per_class = group(rows, ("model", "protocol", "step", "class"), "dice")
    headline = _headline_steps(protocols, rows)
    if headline:
        classes = list(dict.fromkeys(r["class"] for r in rows))
        blocks: list[Any] = []
        for protocol, step in headline:
            body = [[name] + [("n/a" if (e := per_class.get((m, protocol.name, step, name))) is None or not e.n
                               else e.text(PERCENT)) for m in models] for name in classes]
            if any(cell != "n/a" for line in body for cell in line[1:]):
                blocks += [f"{protocol.name}, {protocol.step_label(step)}", ("table", ["class", *models], body)]
        sections.append(("Dice % per class", blocks))

    figures = [f for f in (
        figure_clicks(rows, models, protocols),
        figure_classes(rows, models, protocols),
        figure_distributions(rows, models, protocols),
    ) if f is not None]
    paired = paired_comparisons(
        rows, "dice", models, config.seed, config.report.bootstrap_samples, config.report.confidence,
        {p.name: p.table_steps for p in protocols},
    )
    for extra in (figure_paired(paired), figure_overlays(config, cases, records, infos)):
        if extra is not None:
            figures.append(extra)
    if _matplotlib() is None:
        sections.append(("Figures", ["matplotlib is not installed, so the figures are left out "
                                     "(pip install 'promptable-medseg-zoo[notebooks]')."]))
    else:
        sections.append(("Figures", [("figure", f) for f in figures]))

    level = int(round(config.report.confidence * 100))
    body = [[p.protocol, p.step, p.a, p.b, p.n, f"{p.mean_difference * PERCENT:+.2f}",
             f"[{p.ci_low * PERCENT:+.2f}, {p.ci_high * PERCENT:+.2f}]",
             "n/a" if math.isnan(p.p_value) else f"{p.p_value:.3g}", p.note] for p in paired]
    sections.append(("Paired differences (Dice)", [
        f"Per (case, target) Dice of model a minus model b on the targets both were scored on; the mean with a "
        f"{level}% percentile bootstrap interval ({config.report.bootstrap_samples} resamples, seeded from the "
        "benchmark's seed) and the two-sided Wilcoxon signed-rank test (scipy.stats.wilcoxon, zero differences "
        "dropped). Percentage points.",
        ("table", ["protocol", "step", "model a", "model b", "targets", "mean a − b", f"{level}% interval", "p",
                   "note"], body),
    ]))

    label = {info.name: info.label for info in infos}
    not_applicable = sorted({(label[r["model"]], r["protocol"], r["reason"]) for r in records
                             if r["status"] == "not_applicable"})
    skipped = [(c.dataset, c.case_id, name, reason) for c in cases for name, reason in c.skipped]
    blocks = []
    if not_applicable:
        blocks.append(("table", ["model", "protocol", "why not applicable"], [list(x) for x in not_applicable]))
    if skipped:
        blocks.append("Targets skipped (nothing to segment):")
        blocks.append(("list", [f"{d}/{c}: {name} skipped: {reason}" for d, c, name, reason in skipped]))
    if blocks:
        sections.append(("Not applicable and skipped", blocks))

    body = [[s["model"], s["protocol"], s["cases"], f"{s['cases_per_minute']:.2f}", f"{s['seconds_per_case']:.2f}",
             s["encoder_calls"], f"{s['peak_memory_mib']:.0f}", s["cached_units"], s["devices"]] for s in speeds]
    sections.append(("Throughput", [
        f"Wall time per unit (one model, one case, one protocol; reading the case excluded), {seconds:.1f} s for the "
        "whole run. Peak memory: CUDA's allocator peak on GPUs, the process's resident set on CPUs. Units reused "
        "from the cache keep the time they took when they ran.",
        ("table", ["model", "protocol", "cases", "cases/min", "s/case", "image encodings", "peak MiB", "cached",
                   "device"], body),
    ]))

    body = [[i.label, i.family, i.processor, i.origin, i.weights_file or "none", i.weights_sha256 or "none",
             i.state_dict_sha256, f"{i.parameters:,}"] for i in infos]
    protocols_body = [[p.name, p.kind, ", ".join(str(s) for s in p.steps), p.title, p.source] for p in protocols]
    data_body = [[c.dataset, c.case_id, c.kind, len(c.targets), len(c.skipped), c.image_path] for c in cases]
    import yaml

    sections.append(("What produced this report", [
        ("table", ["model", "family", "processor", "weights from", "weights file", "file sha256", "state-dict sha256",
                   "parameters"], body),
        ("table", ["protocol", "kind", "steps", "what", "source"], protocols_body),
        ("table", ["dataset", "case", "kind", "targets", "skipped", "image"], data_body),
        f"Seeds: benchmark {config.seed} (every prompt stream and the bootstrap derive from it); model "
        "initialisation " + ", ".join(f"{m.name}: {m.init_seed}" for m in config.models if m.create) + ".",
        ("table", ["package", "version"], [[k, v] for k, v in _versions().items()]),
        ("code", yaml.safe_dump(config.to_dict(), sort_keys=False)),
    ]))
    return ReportContent(config.report.title or config.name, sections), figures, paired


def render_markdown(content: ReportContent) -> str:
    lines = [f"# {content.title}", ""]
    for heading, blocks in content.sections:
        lines += [f"## {heading}", ""]
        for block in blocks:
            if isinstance(block, str):
                lines += [block, ""]
            elif block[0] == "table":
                header = [h.replace("<br>", " ") for h in block[1]]
                lines += [markdown_table(header, [[str(c).replace("|", "\\|").replace("\n", " ") for c in r]
                                                  for r in block[2]]), ""]
            elif block[0] == "figure":
                figure = block[1]
                lines += [f"![{figure.caption}]({figure.name})", "", f"*{figure.caption}*", ""]
            elif block[0] == "list":
                lines += [f"- {item}" for item in block[1]] + [""]
            elif block[0] == "code":
                lines += ["```yaml", block[1].rstrip(), "```", ""]
    return "\n".join(lines)


_STYLE = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.85em}th,td{border:1px solid #ccc;padding:.25em
.5em;text-align:left;vertical-align:top}th{background:#f3f3f3}img{max-width:100%}figure{margin:1em 0}figcaption{
font-size:.85em;color:#555}pre{background:#f6f6f6;padding:.8em;overflow-x:auto;font-size:.8em}"""


def render_html(content: ReportContent) -> str:
    """One self-contained page: inline style, figures as base64 PNG, no external asset."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{esc(content.title)}</title>",
             f"<style>{_STYLE}</style></head><body>", f"<h1>{esc(content.title)}</h1>"]
    for heading, blocks in content.sections:
        parts.append(f"<h2>{esc(heading)}</h2>")
        for block in blocks:
            if isinstance(block, str):
                parts.append(f"<p>{esc(block)}</p>")
            elif block[0] == "table":
                head = "".join(f"<th>{'<br>'.join(esc(x) for x in str(h).split('<br>'))}</th>" for h in block[1])
                body = "".join(
                    "<tr>" + "".join(f"<td>{'<br>'.join(esc(x) for x in str(c).splitlines())}</td>" for c in row)
                    + "</tr>" for row in block[2]
                )
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif block[0] == "figure":
                figure = block[1]
                parts.append(f'<figure><img alt="{esc(figure.caption)}" src="{figure.data_uri}">'
                             f"<figcaption>{esc(figure.caption)}</figcaption></figure>")
            elif block[0] == "list":
                parts.append("<ul>" + "".join(f"<li>{esc(item)}</li>" for item in block[1]) + "</ul>")
            elif block[0] == "code":
                parts.append(f"<pre>{esc(block[1])}</pre>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


# ------------------------------------------------------------------------------------------------ writing
def results_json(
    config: BenchmarkConfig, cases: Sequence[Case], records: Sequence[dict[str, Any]], infos: Sequence[Any],
    rows: Sequence[dict[str, Any]],
) -> str:
    """The tidy rows plus what was not applicable or skipped (no timings: the same inputs give the same bytes)."""
    label = {info.name: info.label for info in infos}
    not_applicable = sorted(
        ({"model": label[r["model"]], "dataset": r["dataset"], "case": r["case"], "protocol": r["protocol"],
          "reason": r["reason"]} for r in records if r["status"] == "not_applicable"),
        key=lambda item: (item["model"], item["dataset"], item["case"], item["protocol"]),
    )
    skipped = [{"dataset": c.dataset, "case": c.case_id, "target": name, "reason": reason}
               for c in cases for name, reason in c.skipped]
    return to_json({
        "benchmark": config.name,
        "seed": config.seed,
        "metrics": {"nsd_tolerance_mm": config.metrics.nsd_tolerance_mm,
                    "nsd_tolerance_px": config.metrics.nsd_tolerance_px,
                    "nsd_boundary": config.metrics.nsd_boundary},
        "models": [{"name": i.label, "weights_sha256": i.weights_sha256, "state_dict_sha256": i.state_dict_sha256,
                    "random_weights": i.random_weights} for i in infos],
        "rows": list(rows),
        "not_applicable": not_applicable,
        "skipped": skipped,
    })


def write_outputs(
    config: BenchmarkConfig,
    cases: Sequence[Case],
    infos: Sequence[Any],
    records: Sequence[dict[str, Any]],
    rows: Sequence[dict[str, Any]],
    speeds: Sequence[dict[str, Any]],
    seconds: float,
) -> list[Path]:
    """Every output file, staged and moved into ``config.output_dir`` together (replacing a previous report)."""
    import yaml

    from zoo.io.masks import MaskSet

    content, figures, _ = build_content(config, cases, infos, records, rows, speeds, seconds)
    texts = {
        "results.csv": to_csv(rows),
        "results.json": results_json(config, cases, records, infos, rows),
        "timings.csv": timings_csv(records, infos),
        "report.md": render_markdown(content),
        "report.html": render_html(content),
        "config.yaml": yaml.safe_dump(config.to_dict(), sort_keys=False),
    }
    with MaskSet(config.output_dir, overwrite=True) as outputs:
        for name, text in texts.items():
            outputs.add_file(name, lambda path, text=text: path.write_text(text, encoding="utf-8"))
        for figure in figures:
            outputs.add_file(figure.name, lambda path, png=figure.png: path.write_bytes(png))
    return list(outputs.written)


__all__ = [
    "Figure",
    "assemble_rows",
    "build_content",
    "render_html",
    "render_markdown",
    "results_json",
    "throughput",
    "throughput_text",
    "timings_csv",
    "write_outputs",
]
