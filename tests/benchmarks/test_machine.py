"""benchmarks/machine.py: the GEMM rate every script prints, and the one JSON record every script writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

SCRIPT = "machine"  # the script fixture (conftest.py) imports benchmarks/machine.py
# Every script that times something; each prints the GEMM rate and takes --json.
TIMING_SCRIPTS = [
    "adapter_layout", "authors_training_step", "data_pipeline", "encoder_speed", "inference_workflows",
    "linear_kernels", "onnx_speed", "training_step", "upstream_speed",
]  # fmt: skip


def test_every_timing_script_is_listed():
    scripts = {path.stem for path in (Path(__file__).resolve().parents[2] / "benchmarks").glob("*.py")} - {"machine"}
    assert scripts == set(TIMING_SCRIPTS)


def test_the_gemm_rate_is_the_faster_kernels(script, monkeypatch):
    """On a CPU the BLAS serves poorly (MKL on AMD) torch.mm understates the machine; the share is of the best."""
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN")
    seconds = {"torch.mm": 2.0, "oneDNN": 1.0}
    kernel_of = {}

    def timed(kernel, runs, warmup, device):
        name = kernel_of.setdefault(id(kernel), list(seconds)[len(kernel_of)])
        return [seconds[name]] * runs

    monkeypatch.setattr(script, "timed_runs", timed)
    rates = script.gemm_rates(torch.device("cpu"), size=8, runs=1)
    assert rates == {"torch.mm": 2 * 8**3 / 2.0 / 1e9, "oneDNN": 2 * 8**3 / 1.0 / 1e9}
    kernel_of.clear()
    assert script.gemm_rate(torch.device("cpu"), size=8, runs=1) == rates["oneDNN"]
    described = script.describe_gemm({"torch.mm": 225.04, "oneDNN": 489.96})
    assert described == "490.0 GFLOP/s (torch.mm 225.0, oneDNN 490.0)"


def test_a_record_holds_the_machine_the_gemm_rates_and_the_rows(script, tmp_path):
    path = tmp_path / "runs" / "record.json"
    rows = [{"family": "x", "seconds": 1.5}]
    script.write_record(path, "demo", rows, {"torch.mm": 100.0, "oneDNN": 120.0}, {"torch.mm": 90.0}, note="n")
    record = json.loads(path.read_text())
    assert record["schema"] == script.RECORD_SCHEMA and record["benchmark"] == "demo"
    assert record["gemm_gflops_before"] == 120.0 and record["gemm_gflops_after"] == 90.0
    assert record["gemm_gflops_by_kernel"] == [{"torch.mm": 100.0, "oneDNN": 120.0}, {"torch.mm": 90.0}]
    assert record["rows"] == rows and record["note"] == "n" and record["time_utc"].endswith("+00:00")
    machine = record["machine"]
    assert machine["torch"] == torch.__version__ and machine["threads"] == torch.get_num_threads()
    assert machine["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert [p.name for p in path.parent.iterdir()] == ["record.json"], "no temporary file left behind"


def test_a_failed_write_leaves_the_previous_record_whole(script, tmp_path, monkeypatch):
    path = tmp_path / "record.json"
    path.write_text('{"previous": true}')

    def failing_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(script.json, "dumps", failing_dump)
    with pytest.raises(OSError, match="disk full"):
        script.write_record(path, "demo", [])
    assert path.read_text() == '{"previous": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


@pytest.mark.parametrize("name", TIMING_SCRIPTS)
def test_every_timing_script_takes_json(name, load_script, capsys):
    with pytest.raises(SystemExit) as exited:
        load_script(name).main(["--help"])
    assert exited.value.code == 0
    assert "--json" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("mkl_lags", "avx2_regime", "threshold_name", "expected"),
    [
        (True, False, "MIN_MULTIPLY_ADDS_NON_INTEL_MKL", "oneDNN from 2.1e+06 multiply-adds (MKL lags it)"),
        (False, True, "MIN_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2", "plain products on MKL, few-row products on kept"),
        (False, False, "MIN_MULTIPLY_ADDS", "oneDNN from 2.68e+08 multiply-adds"),
    ],
)
def test_the_kernel_regime_names_what_takes_onednn(script, monkeypatch, mkl_lags, avx2_regime, threshold_name,
                                                   expected):  # fmt: skip
    from zoo.models.components import onednn_linear

    monkeypatch.setattr(onednn_linear, "mkl_lags_onednn", lambda: mkl_lags)
    monkeypatch.setattr(onednn_linear, "mkl_on_non_intel_avx2_cpu", lambda: avx2_regime)
    monkeypatch.setattr(onednn_linear, "min_multiply_adds", lambda: getattr(onednn_linear, threshold_name))
    regime = script.kernel_regime()
    assert expected in regime and torch.backends.cpu.get_cpu_capability() in regime
    assert script.machine_description()["kernel_regime"] == regime
