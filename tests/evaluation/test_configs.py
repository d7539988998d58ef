"""The benchmark configs shipped in the package: each loads, names known protocols and bundled data, and says where
every number comes from (as the recipes do); the papers' numbers are the research notes' own."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from zoo.cli.benchmark import benchmarks_folder, config_path
from zoo.evaluation.config import load_config

CONFIGS = sorted(benchmarks_folder().glob("*.yaml"))
RESEARCH = Path(__file__).resolve().parents[3] / "shared" / "research"
CITATION = re.compile(r"[\w./-]+\.(?:py|sh|md):\d+")
NUMBER = re.compile(r":\s*\[?-?\d|,\s*-?\d")


def test_the_shipped_configs_are_one_per_paper_and_the_bundled_run():
    assert {p.stem for p in CONFIGS} == {"bundled", "litemedsam", "sam_med2d", "sam_med3d", "sam_unet"}
    assert config_path("sam_med3d") == benchmarks_folder() / "sam_med3d.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_a_shipped_config_loads_with_its_data_in_the_package(path):
    config = load_config(path)
    assert config.protocol_list()
    for dataset in config.datasets:
        assert Path(dataset.root or dataset.json).exists()


def _commented(lines: list[str], index: int) -> bool:
    """A line's comment, or one on a line it belongs to (a parent with less indentation)."""
    if "#" in lines[index]:
        return True
    indent = len(lines[index]) - len(lines[index].lstrip())
    for previous in reversed(lines[:index]):
        own = len(previous) - len(previous.lstrip())
        if previous.strip() and own < indent:
            if "#" in previous:
                return True
            indent = own
    return False


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_number_in_a_shipped_config_says_where_it_comes_from(path):
    lines = path.read_text(encoding="utf-8").splitlines()
    body = [i for i, line in enumerate(lines) if not line.lstrip().startswith(("#", "name:"))]
    uncommented = [lines[i] for i in body if NUMBER.search(lines[i].split("#")[0]) and not _commented(lines, i)]
    assert not uncommented, f"numbers without a source: {uncommented}"
    comments = [line.split("#", 1)[1] for line in lines if "#" in line and not line.lstrip().startswith("#")]
    uncited = [c.strip() for c in comments if "code:" in c and not CITATION.search(c)]
    assert not uncited, f"'code:' comments without a file:line: {uncited}"


@pytest.mark.skipif(not RESEARCH.is_dir(), reason="the research notes (../shared/research) are not here")
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_the_papers_numbers_are_the_research_notes_own(path):
    notes = "\n".join(p.read_text(encoding="utf-8") for p in RESEARCH.glob("*.md"))
    for reference in load_config(path).references:
        written = f"{reference.dice:.2f}".rstrip("0").rstrip(".")
        as_fraction = f"{reference.dice / 100:.3f}"
        assert f"{reference.dice:.2f}" in notes or written in notes or as_fraction in notes, reference
