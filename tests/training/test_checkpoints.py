"""Checkpoints are written atomically, never over a user's file, and load with ``torch.load(weights_only=True)``."""

from __future__ import annotations

import hashlib
import io
import signal
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
import torch
from run_helpers import tiny_recipe, write_recipe

from zoo.cli.lightning import cli_main
from zoo.training.checkpoint_io import AtomicCheckpointIO, is_lightning_checkpoint


def lightning_checkpoint(step: int) -> dict:
    return {"pytorch-lightning_version": "2.6.0", "global_step": step, "state_dict": {"w": torch.full((64,), step)}}


def listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (hidden ones too) with its sha256."""
    files = (p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def save_half_then_fail(real_save):
    """A torch.save that writes the first half of the checkpoint, then fails (a full disk)."""

    def save(obj, stream, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        raise OSError(28, "No space left on device")

    return save


def test_a_save_replaces_the_previous_checkpoint_in_one_step(tmp_path: Path):
    target = tmp_path / "last.ckpt"
    io_plugin = AtomicCheckpointIO()
    io_plugin.save_checkpoint(lightning_checkpoint(1), target)
    io_plugin.save_checkpoint(lightning_checkpoint(2), target)
    assert torch.load(target, weights_only=True)["global_step"] == 2
    assert sorted(listing(tmp_path)) == ["last.ckpt"]


def test_a_save_that_crashes_midway_leaves_the_previous_checkpoint_and_no_partial_file(tmp_path: Path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(lightning_checkpoint(1), target)
    before = listing(tmp_path)
    monkeypatch.setattr(torch, "save", save_half_then_fail(torch.save))
    with pytest.raises(OSError, match="No space left on device"):
        AtomicCheckpointIO().save_checkpoint(lightning_checkpoint(2), target)
    monkeypatch.undo()
    assert listing(tmp_path) == before
    assert torch.load(target, weights_only=True)["global_step"] == 1


KILLED_WRITER = textwrap.dedent(
    """
    import io, sys, time
    from pathlib import Path
    import torch
    from zoo.training.checkpoint_io import AtomicCheckpointIO

    target = Path(sys.argv[1])
    checkpoint = lambda step: {"pytorch-lightning_version": "2.6.0", "global_step": step, "w": torch.rand(1 << 20)}
    AtomicCheckpointIO().save_checkpoint(checkpoint(1), target)
    real_save = torch.save

    def save_half_then_hold(obj, stream, *args, **kwargs):
        buffer = io.BytesIO()
        real_save(obj, buffer)
        stream.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
        stream.flush()
        print("holding mid-write", flush=True)
        time.sleep(600)

    torch.save = save_half_then_hold
    AtomicCheckpointIO().save_checkpoint(checkpoint(2), target)
    """
)


def test_a_writer_killed_mid_save_leaves_the_previous_checkpoint_whole(tmp_path: Path):
    target = tmp_path / "last.ckpt"
    writer = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    watchdog = threading.Timer(120, writer.kill)
    watchdog.start()
    try:
        assert writer.stdout is not None
        lines = [writer.stdout.readline()]
        while lines[-1] and "holding mid-write" not in lines[-1]:
            lines.append(writer.stdout.readline())
        assert "holding mid-write" in lines[-1], "".join(lines)
    finally:
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=60)
        watchdog.cancel()
    assert writer.returncode == -signal.SIGKILL
    assert AtomicCheckpointIO().load_checkpoint(target)["global_step"] == 1
    leftovers = sorted(p.name for p in tmp_path.iterdir() if p != target)
    assert len(leftovers) == 1 and leftovers[0].startswith(".last.ckpt.") and leftovers[0].endswith(".partial")


def test_an_interrupted_save_leaves_the_previous_checkpoint(tmp_path: Path, monkeypatch):
    target = tmp_path / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint(lightning_checkpoint(1), target)
    before = listing(tmp_path)

    def interrupted(obj, stream, *args, **kwargs):
        stream.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint(lightning_checkpoint(2), target)
    assert listing(tmp_path) == before


def test_a_file_that_is_not_a_lightning_checkpoint_is_never_overwritten(tmp_path: Path):
    users_file = tmp_path / "model.ckpt"
    torch.save({"weights": torch.ones(3)}, users_file)  # the user's own torch file, not a Lightning checkpoint
    notes = tmp_path / "last.ckpt"
    notes.write_text("my notes")
    before = listing(tmp_path)
    for path in (users_file, notes, tmp_path):
        with pytest.raises(FileExistsError, match="refusing to overwrite a file that is not a Lightning checkpoint"):
            AtomicCheckpointIO().save_checkpoint(lightning_checkpoint(1), path)
    assert listing(tmp_path) == before


def test_lightning_checkpoints_are_recognised_without_loading_them(tmp_path: Path):
    torch.save(lightning_checkpoint(1), tmp_path / "a.ckpt")
    torch.save({"state_dict": {}}, tmp_path / "b.ckpt")
    (tmp_path / "c.ckpt").write_bytes(b"PK\x03\x04 not really a zip")
    assert [is_lightning_checkpoint(tmp_path / n) for n in ("a.ckpt", "b.ckpt", "c.ckpt")] == [True, False, False]


# Through the CLI ------------------------------------------------------------------------------------------------


def fit_in_process(recipe: Path, *extra: str) -> None:
    cli_main(["fit", "--config", str(recipe), *extra])


def test_the_cli_writes_checkpoints_with_the_atomic_plugin_by_default(tmp_path: Path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tmp_path / "run"))
    cli = cli_main(["--config", str(recipe)], run=False)  # run=False: no subcommand
    assert isinstance(cli.trainer.strategy.checkpoint_io, AtomicCheckpointIO)


def test_a_fit_leaves_every_user_file_outside_and_inside_the_checkpoint_folder_untouched(tmp_path: Path):
    (tmp_path / "notes.txt").write_text("outside the run")
    checkpoints = tmp_path / "run" / "checkpoints"
    checkpoints.mkdir(parents=True)
    (checkpoints / "last.ckpt").write_text("the user's file with Lightning's favourite name")
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tmp_path / "run", epochs=1))
    before = listing(tmp_path)
    fit_in_process(recipe, "--trainer.max_steps", "1")
    after = listing(tmp_path)
    assert {name: after[name] for name in before} == before
    assert sorted(set(after) - set(before)) == [
        "run/checkpoints/epoch=0-step=1.ckpt", "run/checkpoints/last-v1.ckpt", "run/config.yaml"
    ]


def test_checkpoints_with_a_paper_style_optimiser_and_schedule_load_with_weights_only(tmp_path: Path):
    recipe = tiny_recipe(tmp_path / "run", epochs=1)
    recipe["model"]["optimizer"] = {
        "class_path": "torch.optim.AdamW", "init_args": {"lr": 8.0e-4, "weight_decay": 0.1}
    }
    recipe["model"]["lr_scheduler"] = {
        "class_path": "torch.optim.lr_scheduler.MultiStepLR", "init_args": {"milestones": [120, 180], "gamma": 0.1}
    }
    fit_in_process(write_recipe(tmp_path / "recipe.yaml", recipe), "--trainer.max_steps", "1")
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 1 and checkpoint["lr_schedulers"][0]["milestones"] == {120: 1, 180: 1}
    assert checkpoint["hyper_parameters"]["model"] == "sam_med2d_b"
