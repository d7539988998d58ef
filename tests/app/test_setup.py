"""The browser the app's tests drive is installed by the project's own set-up (CI and the README's test command):
Debian's chromium through apt-get, never a browser downloaded by ``playwright install``."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
INSTALL = "apt-get install -y -q chromium"


def test_ci_and_the_readme_install_debian_chromium() -> None:
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    test_command = re.search(r"Run the tests .*?```bash\n(.*?)```", readme, re.DOTALL)
    assert test_command is not None
    for text in (ci, test_command.group(1)):
        commands = [line for line in text.splitlines() if not line.lstrip().startswith("#")]
        assert any(INSTALL in line for line in commands)
        assert not any("playwright install" in line for line in commands)
    assert ci.index(INSTALL) < ci.index("pytest")
    assert "zoo app" in readme and "## A web app for clicking" in readme
