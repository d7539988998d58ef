"""A plain (non-editable) ``pip install .`` carries everything the code reads: the wheel holds the bundled data, the
recipes and the weight-set cards inside the package, where ``zoo.resources`` finds them."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_wheel_carries_the_data_recipes_and_cards_the_code_reads(tmp_path: Path) -> None:
    built = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert built.returncode == 0, built.stderr[-2000:]
    (wheel,) = tmp_path.glob("*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        "zoo/resources/data/NOTICE",
        "zoo/resources/data/totalseg_example/ct.nii.gz",
        "zoo/resources/data/totalseg_example/labels.nii.gz",
        "zoo/resources/data/totalseg_example/labels.json",
        "zoo/resources/data/sam_med2d_demo/images/amos_0004_75.png",
        "zoo/resources/data/totalseg_nnunet/dataset.json",
        "zoo/resources/data/totalseg_nnunet/imagesTr/totalseg_0000.nii.gz",
        "zoo/resources/weights/litemedsam.yaml",
        "zoo/resources/weights/sam_med3d_turbo.yaml",
        "zoo/py.typed",
    }
    expected |= {f"zoo/resources/recipes/{family}/{name}.yaml" for family in ("litemedsam", "sam_med2d", "sam_med3d",
                 "sam_unet") for name in ("demo", "paper")}
    expected |= {f"zoo/resources/benchmarks/{name}.yaml" for name in ("bundled", "litemedsam", "sam_med2d", "sam_med3d",
                 "sam_unet")}
    missing = sorted(expected - names)
    assert not missing, f"the wheel lacks {missing}"
    linked = {p.name for p in (REPO / "checkpoints").glob("*.yaml")}
    assert linked == {Path(n).name for n in names if n.startswith("zoo/resources/weights/") and n.endswith(".yaml")}
