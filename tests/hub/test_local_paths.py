"""A model source written as a local path that does not exist is refused in one line, not sent to the Hub as a
repo id (which fails with a validation traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

import zoo
from zoo.cli.main import main


@pytest.mark.parametrize("source", ["/no/such/model_dir", "./missing_model", "../missing_model", "~/missing_model",
                                    "runs/my_model/final"])
def test_from_pretrained_refuses_a_missing_local_path(source: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as error:
        zoo.from_pretrained(source)
    assert str(error.value) == f"{source}: no such model folder or file"


def test_zoo_predict_with_a_missing_model_folder_says_so_in_one_line(tmp_path: Path, capsys) -> None:
    image = Path(__file__).resolve().parents[2] / "data" / "sam_med2d_demo" / "images" / "amos_0004_75.png"
    missing = str(tmp_path / "no_model")
    status = main(["predict", str(image), "--model", missing, "--box", "150", "230", "230", "300",
                   "--output-dir", str(tmp_path / "out")])
    assert status == 1
    assert capsys.readouterr().err.strip() == f"zoo predict: error: {missing}: no such model folder or file"
    assert not (tmp_path / "out").exists()
