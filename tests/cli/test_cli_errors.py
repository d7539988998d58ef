"""Expected errors end a ``zoo`` command with one short line on stderr and exit status 1; ``--debug`` or
``ZOO_DEBUG=1`` shows the traceback; usage errors keep the parser's own output and exit status 2.

Each run is a real ``zoo`` process. Lightning's own log lines (device banner, tips) are tagged ``[lightning]`` and
Python warnings are off, so what remains on stderr is what the zoo itself printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CT = REPO / "data" / "totalseg_example" / "ct.nii.gz"
TINY_3D = dict(
    image_size=32, patch_size=16, embed_dim=24, depth=2, num_heads=2, window_size=3, global_attn_indexes=[1],
    prompt_embed_dim=24, decoder_num_heads=2, decoder_mlp_dim=32, iou_head_hidden_dim=16,
)
LIGHTNING_TAG = "[lightning]"
# Runs ``zoo`` (zoo.cli.main as __main__) with Lightning's loggers tagging their lines.
ZOO_WITH_TAGGED_LIGHTNING_LOGS = f"""
import logging, runpy, sys
import lightning.pytorch
for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
    for handler in logging.getLogger(name).handlers:
        handler.setFormatter(logging.Formatter({LIGHTNING_TAG!r} + " %(message)s"))
sys.argv[0] = "zoo"
runpy.run_module("zoo.cli.main", run_name="__main__", alter_sys=True)
"""
TIMEOUT_S = 300


def zoo(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess:
    environment = {key: value for key, value in os.environ.items() if key != "ZOO_DEBUG"}
    environment.update(PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **env)
    return subprocess.run(
        [sys.executable, "-c", ZOO_WITH_TAGGED_LIGHTNING_LOGS, *args],
        cwd=cwd, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S,
    )


def zoo_report(result: subprocess.CompletedProcess) -> list[str]:
    """The stderr lines the zoo printed (Lightning's tagged log lines left out)."""
    return [line for line in result.stderr.splitlines() if line.strip() and not line.startswith(LIGHTNING_TAG)]


def predict_args(*extra: str) -> list[str]:
    """``zoo predict`` of a tiny random SAM-Med3D on ``ct.nii.gz`` in the working folder, masks under ``out/``."""
    return [
        "predict",
        "--model.model", "sam_med3d_turbo",
        "--model.model_overrides", json.dumps(TINY_3D),
        "--data", "zoo.data.predict.PromptedImagesDataModule",
        "--data.images", "ct.nii.gz",
        "--trainer.accelerator", "cpu",
        "--trainer.enable_progress_bar", "false",
        "--trainer.default_root_dir", "out",
        *extra,
    ]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    shutil.copy(CT, tmp_path / "ct.nii.gz")
    return tmp_path


def assert_one_error_line(result: subprocess.CompletedProcess, start: str, *parts: str) -> None:
    """Exit status 1, no traceback, at most two lines from the zoo, the last one ``start...`` holding ``parts``."""
    report = zoo_report(result)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert 1 <= len(report) <= 2, result.stderr
    assert report[-1].startswith(start) and all(part in report[-1] for part in parts), result.stderr


def test_a_missing_checkpoint_file_is_one_line(workspace: Path) -> None:
    result = zoo(*predict_args("--data.points", "[[60, 50, 15]]", "--ckpt_path", "missing.ckpt"), cwd=workspace)
    assert_one_error_line(result, "zoo predict: error: missing.ckpt: no such checkpoint file")
    assert result.stderr.splitlines() == ["zoo predict: error: missing.ckpt: no such checkpoint file"]


def test_a_prompt_outside_the_image_is_one_line(workspace: Path) -> None:
    result = zoo(*predict_args("--data.points", "[[500, 50, 15]]"), cwd=workspace)
    assert_one_error_line(result, "zoo predict: error: ct.nii.gz: ", "500", "outside")


def test_an_existing_output_is_one_line_and_stays_untouched(workspace: Path) -> None:
    existing = workspace / "out" / "predictions" / "ct_mask.nii.gz"
    existing.parent.mkdir(parents=True)
    existing.write_bytes(b"the user's file")
    result = zoo(*predict_args("--data.points", "[[60, 50, 15]]"), cwd=workspace)
    assert_one_error_line(result, "zoo predict: error: 1 mask file(s) already exist", str(existing))
    assert existing.read_bytes() == b"the user's file"


@pytest.mark.parametrize("how", ["--debug", "ZOO_DEBUG=1"])
def test_debug_shows_the_traceback(workspace: Path, how: str) -> None:
    args = predict_args("--data.points", "[[60, 50, 15]]", "--ckpt_path", "missing.ckpt")
    result = zoo("--debug", *args, cwd=workspace) if how == "--debug" else zoo(*args, cwd=workspace, ZOO_DEBUG="1")
    assert result.returncode != 0
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.rstrip().endswith("FileNotFoundError: missing.ckpt: no such checkpoint file")


def test_a_usage_error_keeps_the_parser_message_and_exit_status_2(workspace: Path) -> None:
    result = zoo(*predict_args("--data.points", "[[60, 50, 15]]", "--no_such_option", "1"), cwd=workspace)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "--no_such_option" in result.stderr
