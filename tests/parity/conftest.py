"""Parity-suite plumbing: the summary of errors is written to JSON and printed at the end of the run."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from .report import ParityReport

REPORT_ENV = "ZOO_PARITY_REPORT"
REPORT_KEY = pytest.StashKey[ParityReport]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[REPORT_KEY] = ParityReport()


@pytest.fixture(scope="session")
def parity_report(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """Collects one row per compared tensor; written to ``<pytest basetemp>/parity_summary.json`` (and to
    ``$ZOO_PARITY_REPORT`` when set) at the end of the session."""
    report = request.config.stash[REPORT_KEY]
    yield report
    if report.rows:
        report.write(tmp_path_factory.getbasetemp() / "parity_summary.json")
        if os.environ.get(REPORT_ENV):
            report.write(Path(os.environ[REPORT_ENV]))


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    report = config.stash.get(REPORT_KEY, None)
    if not report or not report.rows:
        return
    terminalreporter.section("parity: max abs error per tensor (ours vs upstream)")
    for line in report.table():
        terminalreporter.write_line(line)
    for path in report.written_to:
        terminalreporter.write_line(f"summary written to {path}")
