"""The notebooks run top to bottom on the bundled data (executed with nbclient, as nbmake does), and write only into
the test's own temporary folder.

Each notebook runs with its working folder at ``<tmp>/notebooks`` (``<tmp>/data`` links to the bundled data, which
the notebooks find at ``../data``) and with ``TMPDIR`` at ``<tmp>/tmp``, so what it puts in ``tempfile.mkdtemp()``
lands under pytest's ``tmp_path`` and not in the system's temporary folder or the repository.

The kernel talks to a Hub server on 127.0.0.1 (tests/hub/fake_hub.py), started here: its environment gets
``HF_ENDPOINT`` (read when the kernel imports huggingface_hub), a token, and a Hub cache and zoo cache under
``<tmp>/tmp`` (empty at the start), so a notebook can ``zoo publish`` and ``zoo.from_pretrained`` from the Hub
without reaching the network.
"""

from pathlib import Path

import nbformat
import pytest
from hub.fake_hub import FakeHub, hub_environment
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


#: What the kernel's environment takes from :func:`hub_environment` (threads are left as they are).
HUB_VARIABLES = ("HF_ENDPOINT", "HF_HUB_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "HF_TOKEN", "HF_HUB_DISABLE_XET",
                 "HF_HUB_DISABLE_TELEMETRY", "ZOO_CACHE_DIR", "NO_PROXY")


def top_level(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.fixture
def local_hub(tmp_path: Path, monkeypatch):
    """A Hub server on 127.0.0.1 for the kernel, with empty caches under ``<tmp>/tmp``."""
    with FakeHub() as hub:
        environment = hub_environment(hub.endpoint, tmp_path / "tmp")
        for name in HUB_VARIABLES:
            monkeypatch.setenv(name, environment[name])  # the kernel inherits this environment
        yield hub


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_writes_only_into_its_temporary_folder(
    path: Path, tmp_path: Path, monkeypatch, local_hub: FakeHub
) -> None:
    workdir, temp = tmp_path / "notebooks", tmp_path / "tmp"
    workdir.mkdir()
    temp.mkdir()
    (tmp_path / "data").symlink_to(REPO / "data", target_is_directory=True)
    monkeypatch.setenv("TMPDIR", str(temp))  # the kernel inherits this environment
    repo_before, notebooks_before = top_level(REPO), top_level(REPO / "notebooks")

    notebook = nbformat.read(path, as_version=4)
    resources = {"metadata": {"path": str(workdir)}}
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources=resources).execute()

    figures = [o for cell in notebook.cells for o in cell.get("outputs", []) if "image/png" in o.get("data", {})]
    assert figures, "the notebook drew no figure inline"
    assert top_level(REPO) == repo_before
    assert top_level(REPO / "notebooks") == notebooks_before
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written, "the notebook wrote nothing: check that its temporary files still go through tempfile"
    assert all(name.startswith(("notebooks/", "tmp/")) for name in written), written
