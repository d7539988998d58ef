"""``zoo demo`` works from any folder and writes only into its output folder (a one-step run of each kind), ending
with a benchmark report of what it trained."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ZOO = [sys.executable, "-m", "zoo.cli.main"]


@pytest.mark.slow
def test_demo_runs_from_another_folder_and_writes_into_its_output(tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ZOO_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [*ZOO, "demo", "--family", "sam_unet", "--max-steps", "1", "--output-dir", "out"],
        check=False, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "RANDOM initialisation" in done.stdout
    out = tmp_path / "out"
    assert (out / "summary.md").is_file()
    assert list((out / "predictions" / "sam_unet").glob("*_mask.png"))
    # it ends with a benchmark report of what it trained (the trained SAM-UNet from its last.ckpt)
    report = (out / "benchmark" / "report.md").read_text()
    assert "SAM-UNet (demo-trained from random init)" in report
    assert (out / "benchmark" / "report.html").is_file() and (out / "benchmark" / "results.csv").is_file()
    assert "Benchmark of what it trained" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["out"]  # nothing else in the cwd
