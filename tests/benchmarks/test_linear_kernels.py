"""benchmarks/linear_kernels.py: its table names the kernel the zoo's rule picks, and marks a pick that is slow."""

from __future__ import annotations

import json

import pytest
import torch

from zoo.models.components import onednn_linear

SCRIPT = "linear_kernels"  # the script fixture (conftest.py) imports benchmarks/linear_kernels.py


@pytest.mark.parametrize(
    ("packed", "plain", "expected"), [(True, True, "kept"), (False, True, "oneDNN"), (False, False, "BLAS")]
)
def test_the_pick_follows_the_kept_linear_rule(script, monkeypatch, packed, plain, expected):
    monkeypatch.setattr(onednn_linear, "packed_product_applies", lambda *args: packed)
    monkeypatch.setattr(onednn_linear, "onednn_applies", lambda *args: plain)
    assert script.picked_kernel(torch.randn(7, 8), torch.randn(16, 8), torch.randn(16)) == expected


def test_a_pick_slower_than_the_fastest_kernel_is_marked(script, capsys):
    rows = [
        {"shape": "a", "rows": 7, "us": {"BLAS": 100.0, "oneDNN": 90.0, "kept": 50.0}, "picked": "BLAS",
         "fastest": "kept"},
        {"shape": "b", "rows": 7, "us": {"BLAS": 100.0, "oneDNN": 90.0, "kept": 95.0}, "picked": "kept",
         "fastest": "oneDNN"},
    ]  # fmt: skip
    script.print_table(rows, slack=0.1)
    lines = capsys.readouterr().out.splitlines()[2:]
    assert lines[0].endswith("BLAS *") and lines[1].endswith("kept"), "100 > 1.1 x 50 is marked; 95 < 1.1 x 90 is not"


def test_a_tiny_run_times_every_kernel_and_writes_its_json(script, monkeypatch, tmp_path, capsys):
    if not (onednn_linear.onednn_linear_works() and onednn_linear.onednn_packing_works()):
        pytest.skip("oneDNN's linear op or its weight reorder is not usable in this torch")
    monkeypatch.setattr(script, "SHAPES", {"decoder": [("tiny", 16, 24)]})
    monkeypatch.setattr("machine.gemm_rates", lambda device: {"torch.mm": 10.0})
    out = tmp_path / "kernels.json"
    assert script.main(["--shapes", "decoder", "--rows", "3", "9", "--rounds", "2", "--copies", "2",
                        "--json", str(out)]) == 0  # fmt: skip
    text = capsys.readouterr().out
    assert "fp32 GEMM 2048x2048: 10.0 GFLOP/s" in text and "CPU: " in text
    report = json.loads(out.read_text())
    assert report["benchmark"] == "linear_kernels" and report["gemm_gflops_before"] == 10.0
    assert [row["rows"] for row in report["rows"]] == [3, 9]
    for row in report["rows"]:
        assert set(row["us"]) == {"BLAS", "oneDNN", "kept"} and all(t > 0 for t in row["us"].values())
        x, weight = torch.randn(row["rows"], 16), torch.randn(24, 16)
        assert row["picked"] == script.picked_kernel(x, weight, torch.randn(24))
