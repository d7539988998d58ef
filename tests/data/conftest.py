"""Fixtures for the data tests: the bundled CT in the layouts the data code reads (copies in tmp folders)."""

from __future__ import annotations

from pathlib import Path

import pytest
from bundled_data import CT, LABELS, make_nnunet, reoriented_copy


@pytest.fixture
def nnunet_root(tmp_path: Path) -> Path:
    """The bundled CT as a one-case nnU-Net dataset (dataset.json v2)."""
    return make_nnunet(tmp_path / "Dataset001_Example", {"abdomen": (CT, LABELS)})


@pytest.fixture(scope="session")
def slp_pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The bundled CT and labels stored in S-L-P voxel order (permuted and flipped relative to the RAS file)."""
    folder = tmp_path_factory.mktemp("slp")
    return (
        reoriented_copy(CT, folder / "ct_slp.nii.gz", ("S", "L", "P")),
        reoriented_copy(LABELS, folder / "labels_slp.nii.gz", ("S", "L", "P")),
    )
