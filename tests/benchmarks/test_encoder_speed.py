"""benchmarks/encoder_speed.py's own arithmetic: FLOPs of oneDNN's kernels, shares of the GEMM rate, verdicts."""

from __future__ import annotations

import pytest
import torch
from torch.nn import functional as F

SCRIPT = "encoder_speed"  # the script fixture (conftest.py) imports benchmarks/encoder_speed.py


@pytest.mark.parametrize(("stride", "groups"), [(1, 1), (2, 1), (1, 8)])
def test_onednn_convolutions_count_as_conv2d(script, stride, groups):
    op = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if op is None or not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN convolution op")
    x, weight, bias = torch.randn(1, 8, 10, 9), torch.randn(16, 8 // groups, 3, 3), torch.randn(16)
    with torch.inference_mode():
        fused = script.executed_gflop(
            lambda: op(x, weight, bias, [1, 1], [stride, stride], [1, 1], groups, "gelu", [], "none")
        )
        plain = script.executed_gflop(lambda: F.conv2d(x, weight, bias, stride, 1, 1, groups))
    out = (10 + 2 - 3) // stride + 1, (9 + 2 - 3) // stride + 1
    assert fused == plain == 2 * 16 * out[0] * out[1] * (8 // groups) * 9 / 1e9


def test_paired_runs_measure_the_gemm_rate_before_each_run(script, monkeypatch):
    events = []
    monkeypatch.setattr(script, "gemm_rate", lambda *args, **kwargs: events.append("gemm") or 100.0)
    times, rates = script.paired_runs(lambda: events.append("run"), 3, torch.device("cpu"), torch.float32)
    assert events == ["run", "gemm", "run", "gemm", "run", "gemm", "run"], "one warm-up, then GEMM before each run"
    assert len(times) == 3 and rates == [100.0] * 3


def row(**fields):
    base = dict(family="sam_med3d_turbo", path="fast", dtype="fp32", gemm_share=0.81, click_ms=4.9)
    return {**base, **fields}


def test_the_verdict_names_each_target_met_or_missed(script):
    assert script.verdict(row()) == "encoder meets >= 80% of GEMM; click meets <= 5 ms"
    assert script.verdict(row(gemm_share=0.79, click_ms=5.1)) == "encoder misses >= 80% of GEMM; click misses <= 5 ms"
    assert script.verdict(row(dtype="bf16", gemm_share=0.41)) == "encoder meets >= 40% of GEMM"
    assert script.verdict(row(family="sam_med2d_b", click_ms=2.5)).endswith("click misses <= 2 ms")
    assert script.verdict(row(family="litemedsam")) == "encoder meets >= 80% of GEMM"
    assert script.verdict(row(path="reference")) == ""


def test_bf16_rows_are_left_out_where_bf16_is_emulated(script, monkeypatch, capsys):
    """An emulated bf16 GEMM takes about a minute and every bf16 row would time out: neither runs, and it says so."""
    from zoo.models.components import onednn_linear

    measured = []
    monkeypatch.setattr(script, "native_bf16", lambda device: False)
    monkeypatch.setattr(onednn_linear, "min_multiply_adds", lambda: onednn_linear.MIN_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2)
    monkeypatch.setattr(onednn_linear, "mkl_lags_onednn", lambda: False)
    monkeypatch.setattr(onednn_linear, "mkl_on_non_intel_avx2_cpu", lambda: True)
    monkeypatch.setattr(script, "gemm_rates", lambda device, dtype=torch.float32: measured.append(dtype) or {"mm": 1.0})
    script.main(["--families", "litemedsam", "--dtypes", "bf16", "--paths", "fast"])
    out = capsys.readouterr().out
    assert "bf16 rows left out: no native bfloat16 kernels" in out
    assert "plain products on MKL, few-row products on kept weights through oneDNN" in out
    assert measured == [torch.float32, torch.float32], "the fp32 GEMM before and after, no bf16 GEMM"
    assert "litemedsam " not in out, "no row ran"
