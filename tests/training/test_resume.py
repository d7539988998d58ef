"""A run SIGKILLed mid-epoch and resumed with ``ckpt_path=last`` ends with exactly the weights of an uninterrupted run.

Both runs are real ``zoo fit`` processes on the bundled SAM-Med2D demo slices (tiny model, 3 epochs of 2 steps,
``last.ckpt`` at every epoch end). The interrupted one is held at global step 3, the middle of epoch 1, after its
weights have moved past the epoch-0 checkpoint, and killed there with SIGKILL: no handler, no cleanup.
"""

from __future__ import annotations

import signal
import subprocess
import threading
from pathlib import Path

import torch
from run_helpers import HOLD_MARKER, STEP_MARKER, subprocess_env, tiny_recipe, write_recipe, zoo_command

TIMEOUT_S = 300
HOLD_AT_STEP = 3  # epoch 1 is steps 2 and 3


def start_fit(recipe: Path, *extra: str) -> subprocess.Popen:
    process = subprocess.Popen(
        zoo_command("fit", "--config", str(recipe), *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=subprocess_env(),
        cwd=recipe.parent,
    )
    watchdog = threading.Timer(TIMEOUT_S, process.kill)
    watchdog.daemon = True
    watchdog.start()
    return process


def finish(process: subprocess.Popen) -> list[str]:
    output = process.communicate()[0].splitlines()
    assert process.returncode == 0, "\n".join(output[-40:])
    return output


def steps_run(output: list[str]) -> list[int]:
    return [int(line.split()[1]) for line in output if line.startswith(STEP_MARKER)]


def kill_when_holding(process: subprocess.Popen) -> list[str]:
    seen = []
    assert process.stdout is not None
    for line in process.stdout:
        seen.append(line.rstrip("\n"))
        if line.startswith(HOLD_MARKER):
            process.send_signal(signal.SIGKILL)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "\n".join(seen[-40:])
    return seen


def load(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path: Path):
    straight_dir, killed_dir = tmp_path / "straight", tmp_path / "killed"
    straight_dir.mkdir(), killed_dir.mkdir()
    straight = start_fit(write_recipe(straight_dir / "recipe.yaml", tiny_recipe(straight_dir / "run")))
    killed_recipe = write_recipe(killed_dir / "recipe.yaml", tiny_recipe(killed_dir / "run", hold_at_step=HOLD_AT_STEP))
    killed = start_fit(killed_recipe)

    assert steps_run(kill_when_holding(killed)) == [0, 1, 2, 3]
    last = killed_dir / "run" / "checkpoints" / "last.ckpt"
    at_kill = load(last)
    assert (at_kill["epoch"], at_kill["global_step"]) == (0, 2), "the kill lost step 2's update: it must replay"

    resumed = finish(start_fit(write_recipe(killed_recipe, tiny_recipe(killed_dir / "run")), "--ckpt_path", "last"))
    assert steps_run(resumed) == [2, 3, 4, 5], "the resumed run starts at epoch 1 from the checkpoint"
    assert steps_run(finish(straight)) == [0, 1, 2, 3, 4, 5]

    expected = load(straight_dir / "run" / "checkpoints" / "last.ckpt")
    final = load(last)
    assert final["global_step"] == expected["global_step"] == 6
    assert final["state_dict"].keys() == expected["state_dict"].keys()
    different = [k for k, v in expected["state_dict"].items() if not torch.equal(final["state_dict"][k], v)]
    assert not different, f"weights differ after resume: {different}"
    assert any(not torch.equal(at_kill["state_dict"][k], v) for k, v in final["state_dict"].items())
    assert tensors_of(final["optimizer_states"]) == tensors_of(expected["optimizer_states"]) != {}


def tensors_of(state: object, prefix: str = "") -> dict[str, tuple]:
    """Every tensor in a nested optimizer state, as comparable values keyed by its path."""
    if isinstance(state, torch.Tensor):
        return {prefix: (state.dtype, tuple(state.shape), state.flatten().tolist())}
    items = state.items() if isinstance(state, dict) else enumerate(state) if isinstance(state, list) else []
    return {k: v for key, value in items for k, v in tensors_of(value, f"{prefix}/{key}").items()}

