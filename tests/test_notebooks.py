"""The notebooks run top to bottom on the bundled data (executed with nbclient, as nbmake does), and write only into
the test's own temporary folder.

Each notebook runs with its working folder at ``<tmp>/notebooks`` (``<tmp>/data`` links to the bundled data, which
the notebooks find at ``../data``) and with ``TMPDIR`` at ``<tmp>/tmp``, so what it puts in ``tempfile.mkdtemp()``
lands under pytest's ``tmp_path`` and not in the system's temporary folder or the repository.
"""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))


def top_level(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_and_writes_only_into_its_temporary_folder(path: Path, tmp_path: Path, monkeypatch) -> None:
    workdir, temp = tmp_path / "notebooks", tmp_path / "tmp"
    workdir.mkdir()
    temp.mkdir()
    (tmp_path / "data").symlink_to(REPO / "data", target_is_directory=True)
    monkeypatch.setenv("TMPDIR", str(temp))  # the kernel inherits this environment
    repo_before, notebooks_before = top_level(REPO), top_level(REPO / "notebooks")

    notebook = nbformat.read(path, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}).execute()

    assert top_level(REPO) == repo_before
    assert top_level(REPO / "notebooks") == notebooks_before
    written = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.is_file())
    assert written, "the notebook wrote nothing: check that its temporary files still go through tempfile"
    assert all(name.startswith(("notebooks/", "tmp/")) for name in written), written
