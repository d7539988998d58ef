"""``zoo export onnx MODEL OUT_DIR`` on a Hub folder (read by ``zoo predict``'s loader): the graphs and the folder's
processor config are written; a second run without ``--overwrite`` ends with one line naming the file."""

from __future__ import annotations

import json

from zoo.cli.main import main

from .support import tiny


def test_zoo_export_onnx_writes_the_graphs_and_the_processor_config(tmp_path, capsys) -> None:
    model = tiny("sam_med2d_b")
    model.processor_config = {**model.processor_config, "geometry": "test_script"}
    model.save_pretrained(tmp_path / "hub")
    out = tmp_path / "onnx"
    assert main(["export", "onnx", str(tmp_path / "hub"), str(out)]) == 0
    written = sorted(p.name for p in out.iterdir())
    assert written == ["image_encoder.onnx", "processor_config.json", "prompt_decoder.onnx"]
    assert json.loads((out / "processor_config.json").read_text(encoding="utf-8")) == model.processor_config
    printed = capsys.readouterr().out
    assert f"weights: {tmp_path / 'hub'}" in printed and "prompt_decoder.onnx" in printed

    assert main(["export", "onnx", str(tmp_path / "hub"), str(out)]) == 1
    error = capsys.readouterr().err
    existing = out / "image_encoder.onnx"
    assert error == f"zoo export: error: {existing}: already exists (overwrite=True / --overwrite replaces it)\n"
