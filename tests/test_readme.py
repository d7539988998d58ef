"""The README's Python examples run as written (the blocks marked ``<!-- readme-test: run -->``), each in a fresh
process in an empty folder, offline."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
MARKED_BLOCK = re.compile(r"<!-- readme-test: run -->\s*```python\n(.*?)```", re.DOTALL)
BLOCKS = MARKED_BLOCK.findall(README.read_text(encoding="utf-8"))


def test_the_readme_marks_its_runnable_examples() -> None:
    assert len(BLOCKS) >= 2, "the README's Python examples lost their '<!-- readme-test: run -->' markers"


@pytest.mark.parametrize("code", BLOCKS, ids=[f"example{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs_as_written(code: str, tmp_path: Path) -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ZOO_CACHE_DIR": str(tmp_path / "cache")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, f"the README example failed:\n{code}\n--- stderr ---\n{done.stderr[-3000:]}"
    assert done.stdout.strip(), "the example printed nothing"
