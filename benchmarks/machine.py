"""What every benchmark script measures and records about the machine it runs on.

These machines switch between fast and slow phases and differ from session to session (vendor, vector width,
native bf16), so a time means little without the machine's GEMM rate measured in the same run. Every script prints
that rate (:func:`gemm_rates`, the faster of the BLAS's and oneDNN's 2048 x 2048 product) and the load average
before and after its rows, and with ``--json PATH`` writes one record in one schema (:func:`write_record`): the
script, the time, the machine (:func:`machine_description`), the GEMM rates and the rows, so that a report can plot
each number's history against the rate of the machine that produced it. The record is written whole or not at all.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from zoo.io.atomic import write_atomically

RECORD_SCHEMA = 1


def synchronize(device: torch.device) -> None:
    """Wait for ``device``'s queued work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_runs(fn: Callable[[], Any], runs: int, warmup: int, device: torch.device) -> list[float]:
    """Seconds of each of ``runs`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times


def gemm_rates(
    device: torch.device, size: int = 2048, runs: int = 5, dtype: torch.dtype = torch.float32
) -> dict[str, float]:
    """GFLOP/s of a ``size`` x ``size`` product in ``dtype`` by each kernel torch offers here (median of ``runs``
    after a warm-up): ``torch.mm`` (the BLAS, e.g. MKL) and, on the CPU, oneDNN's product, which the fast path
    calls and which ran at twice MKL's float32 rate on an AMD EPYC with AVX-512 (without it, MKL's was faster)."""
    from zoo.models.components.onednn_linear import onednn_bf16_linear_works, onednn_linear_works

    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    kernels = {"torch.mm": lambda: a @ b}
    onednn = onednn_linear_works() if dtype == torch.float32 else onednn_bf16_linear_works()
    if device.type == "cpu" and dtype in (torch.float32, torch.bfloat16) and onednn:
        kernels["oneDNN"] = lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "")
    return {
        name: 2 * size**3 / statistics.median(timed_runs(kernel, runs, warmup=1, device=device)) / 1e9
        for name, kernel in kernels.items()
    }


def gemm_rate(device: torch.device, size: int = 2048, runs: int = 5, dtype: torch.dtype = torch.float32) -> float:
    """The machine's GEMM rate in ``dtype``: GFLOP/s of the fastest kernel of :func:`gemm_rates`. Shares of it are
    shares of the best product this machine offers torch, not of one BLAS that may serve this CPU poorly."""
    return max(gemm_rates(device, size, runs, dtype).values())


def describe_gemm(rates: dict[str, float]) -> str:
    """``"<best> GFLOP/s (torch.mm <rate>, oneDNN <rate>)"`` for :func:`gemm_rates`' result."""
    each = ", ".join(f"{name} {rate:.1f}" for name, rate in rates.items())
    return f"{max(rates.values()):.1f} GFLOP/s ({each})"


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``"1.0 0.9 0.8"``."""
    return " ".join(f"{value:.1f}" for value in os.getloadavg())


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what ``platform`` reports."""
    from zoo.models.components.onednn_linear import cpuinfo_field

    return cpuinfo_field("model name") or platform.processor() or platform.machine()


def kernel_regime() -> str:
    """The CPU (vendor, vector capability, MKL) and which float32 products take oneDNN's kernel on it
    (``zoo.models.components.onednn_linear``), in one line."""
    from zoo.models.components import onednn_linear

    vendor = onednn_linear.cpu_vendor() or "unknown vendor"
    where = f"{vendor}, {torch.backends.cpu.get_cpu_capability()}, MKL {torch.backends.mkl.is_available()}"
    if onednn_linear.mkl_lags_onednn():
        rule = f"oneDNN from {onednn_linear.MIN_MULTIPLY_ADDS_NON_INTEL_MKL:.3g} multiply-adds (MKL lags it)"
    elif onednn_linear.mkl_on_non_intel_avx2_cpu():
        rule = "plain products on MKL, few-row products on kept weights through oneDNN"
    else:
        rule = f"oneDNN from {onednn_linear.min_multiply_adds():.3g} multiply-adds"
    return f"{where}: {rule}"


def machine_description(device: torch.device | str = "cpu") -> dict[str, Any]:
    """The software and hardware a record's numbers come from."""
    from zoo.models.components.onednn_linear import cpu_vendor, cpuinfo_field, onednn_reports_native_bf16

    device = torch.device(device)
    description: dict[str, Any] = {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpu_vendor": cpu_vendor(),
        "cpu_family_model": "/".join(cpuinfo_field(field) for field in ("cpu family", "model")),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "logical_cpus": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "mkl": torch.backends.mkl.is_available(),
        "onednn_native_bf16": onednn_reports_native_bf16(),
        "kernel_regime": kernel_regime(),
        "device": str(device),
    }
    if device.type == "cuda":
        description["gpu"] = torch.cuda.get_device_name(device)
    return description


def write_record(
    path: Path | str,
    benchmark: str,
    rows: Any,
    gemm_before: dict[str, float] | None = None,
    gemm_after: dict[str, float] | None = None,
    device: torch.device | str = "cpu",
    **extra: Any,
) -> None:
    """Write the run's record to ``path`` as JSON: schema, benchmark name, UTC time, :func:`machine_description`,
    the fp32 GEMM rates before and after the rows (each kernel's, as :func:`gemm_rates` returns them, and the best),
    ``rows`` and any ``extra`` fields, whole or not at all (:func:`zoo.io.atomic.write_atomically`): an interrupted
    run leaves what was there before."""
    path = Path(path)
    record = {
        "schema": RECORD_SCHEMA,
        "benchmark": benchmark,
        "time_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_description(device),
        "gemm_gflops_before": max(gemm_before.values()) if gemm_before else None,
        "gemm_gflops_after": max(gemm_after.values()) if gemm_after else None,
        "gemm_gflops_by_kernel": [gemm_before, gemm_after],
        **extra,
        "rows": rows,
    }
    write_atomically(path, json.dumps(record, indent=2, default=str))
