"""What the training tests' subprocess runs need: a tiny recipe and a callback that reports (and can hold) steps.

Runs go through the real ``zoo`` CLI in a subprocess; this folder is on its ``PYTHONPATH`` so the recipe can name
:class:`StepReporter` by class path.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
SAM_MED2D_DEMO = REPO / "data" / "sam_med2d_demo"
STEP_MARKER = "zoo-test-step"
HOLD_MARKER = "zoo-test-holding"

#: A tiny SAM-Med3D (32^3 input, 2x2x2 token grid) shared by the module and prediction tests.
TINY_3D = dict(
    image_size=32, patch_size=16, embed_dim=24, depth=2, num_heads=2, window_size=3, global_attn_indexes=[1],
    prompt_embed_dim=24, decoder_num_heads=2, decoder_mlp_dim=32, iou_head_hidden_dim=16,
)
TINY_SAM_MED2D_64 = dict(
    image_size=64, patch_size=16, embed_dim=32, depth=2, num_heads=2, window_size=2, global_attn_indexes=[1],
    prompt_embed_dim=16, decoder_num_heads=2, decoder_mlp_dim=32, iou_head_hidden_dim=16,
)


class StepReporter(pl.Callback):
    """Prints ``zoo-test-step <global step> <epoch> <rank>`` before each training batch; at ``hold_at_step`` it
    prints ``zoo-test-holding`` and waits there (mid-epoch, weights updated since the last checkpoint) to be killed."""

    def __init__(self, hold_at_step: int | None = None) -> None:
        self.hold_at_step = hold_at_step

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        print(STEP_MARKER, trainer.global_step, trainer.current_epoch, trainer.global_rank, flush=True)
        if trainer.global_step == self.hold_at_step:
            print(HOLD_MARKER, flush=True)
            time.sleep(600)


class ShardRecorder(pl.Callback):
    """Writes ``rank<r>.json`` into ``folder``: the images each training step of this rank read (per epoch), and a
    digest of this rank's final weights."""

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.images: list[list[str]] = []

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.images.append([])

    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.images[-1].extend(Path(p).name for p in batch["image_path"])

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.state_dict().items()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        record = {"world_size": trainer.world_size, "epoch_images": self.images, "weights": digest.hexdigest()}
        (Path(self.folder) / f"rank{trainer.global_rank}.json").write_text(json.dumps(record))


def tiny_recipe(run_dir: Path, epochs: int = 3, hold_at_step: int | None = None, **trainer: Any) -> dict[str, Any]:
    """A tiny SAM-Med2D fit on the bundled demo slices: 2 images, so 2 steps per epoch at batch size 1.

    The prompt schedule is SAM-Med2D's (box or point first, error clicks, sigmoid mask prompt, decoder-only later
    iterations, multimask output), so clicks, boxes and mask draws all take part in what must replay.
    """
    return {
        "seed_everything": 0,
        "trainer": {
            "max_epochs": epochs,
            "accelerator": "cpu",
            "devices": 1,
            "use_distributed_sampler": False,
            "limit_val_batches": 0,
            "num_sanity_val_steps": 0,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "default_root_dir": str(run_dir),
            "logger": False,
            "callbacks": [
                {
                    "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
                    "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True, "save_top_k": 1},
                },
                {"class_path": "run_helpers.StepReporter", "init_args": {"hold_at_step": hold_at_step}},
            ],
            **trainer,
        },
        "model": {
            "model": "sam_med2d_b",
            "model_overrides": TINY_SAM_MED2D_64,
            "loss": {
                "class_path": "zoo.training.losses.SegmentationLoss",
                "init_args": {"focal": 20.0, "dice": 1.0, "iou_mse": 1.0},
            },
            "train_prompts": {
                "iterations": 3,
                "first_prompt": "box_or_point",
                "clicks_per_iteration": [1, 3],
                "mask_prompt": "sigmoid",
                "mask_only_last": True,
                "decoder_only_after_first": True,
                "multimask_output": True,
            },
            "optimizer": {"class_path": "torch.optim.Adam", "init_args": {"lr": 1.0e-3}},
        },
        "data": {
            "class_path": "zoo.data.SAMed2DDataModule",
            "init_args": {"root": str(SAM_MED2D_DEMO), "masks_per_image": 3, "image_size": 64, "batch_size": 1},
        },
    }


def write_recipe(path: Path, recipe: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def zoo_command(*args: str) -> list[str]:
    """``zoo ARGS`` in this interpreter."""
    return [sys.executable, "-m", "zoo.cli.main", *args]


def subprocess_env() -> dict[str, str]:
    """One thread per process (reproducible and gentle on shared CPUs), this folder importable, no network."""
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(HERE), env.get("PYTHONPATH", "")) if p)
    return env
