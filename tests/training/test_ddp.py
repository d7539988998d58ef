"""The same recipe runs on several processes by configuration only: DDP on 2 CPU processes, FSDP as far as CPU allows.

``ddp_spawn`` (not ``ddp``) inside pytest: plain ``ddp`` re-runs the pytest command for rank 1 and can hang. With
``ddp_spawn`` the main process's ``trainer.global_step`` stays 0, so the checks read what the ranks wrote.

Every paper's step leaves some parameters without a gradient (box steps skip the point embeddings, point steps the
box corners, and SAM-Med2D's mask prompt is only embedded in its decoder-only iterations), so DDP needs
``find_unused_parameters=True``: ``strategy: ddp_find_unused_parameters_true`` in a recipe.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from run_helpers import SAM_MED2D_DEMO, tiny_recipe, write_recipe

from zoo.cli.lightning import cli_main
from zoo.data.sa_med2d import read_image2label

EPOCHS = 2
DDP_SPAWN = "ddp_spawn_find_unused_parameters_true"


def recipe_with_recorder(tmp_path: Path) -> Path:
    recipe = tiny_recipe(tmp_path / "run", epochs=EPOCHS)
    recipe["trainer"]["callbacks"].append(
        {"class_path": "run_helpers.ShardRecorder", "init_args": {"folder": str(tmp_path)}}
    )
    return write_recipe(tmp_path / "recipe.yaml", recipe)


def test_two_processes_train_on_disjoint_shards_in_step_and_save_a_loadable_checkpoint(tmp_path: Path):
    recipe = recipe_with_recorder(tmp_path)
    cli_main(["fit", "--config", str(recipe), "--trainer.strategy", DDP_SPAWN, "--trainer.devices", "2"])

    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    train_images = {path.name for path, _ in read_image2label(SAM_MED2D_DEMO / "image2label_train.json")}
    for epoch in range(EPOCHS):
        seen = [set(r["epoch_images"][epoch]) for r in ranks]
        assert seen[0] and seen[1] and seen[0].isdisjoint(seen[1]), f"epoch {epoch}: ranks read the same images"
        assert seen[0] | seen[1] == train_images
    assert ranks[0]["weights"] == ranks[1]["weights"], "gradients are averaged, so both ranks hold the same weights"

    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == EPOCHS  # 2 images over 2 ranks: one step per epoch
    assert checkpoint["epoch"] == EPOCHS - 1


def test_a_recipe_selects_fsdp_by_configuration_which_lightning_runs_on_gpus_only(tmp_path: Path):
    """FSDP cannot run on CPU here: Lightning's FSDP strategy refuses any accelerator but CUDA, and torch's FSDP
    itself raises "FSDP needs a non-CPU accelerator device". On CPU the recipe's switch is checked up to the
    Trainer; the GPU test below fits."""
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tmp_path / "run"))
    strategy = {
        "class_path": "lightning.pytorch.strategies.FSDPStrategy", "init_args": {"sharding_strategy": "FULL_SHARD"}
    }
    with pytest.raises(ValueError, match="The strategy `fsdp` requires a GPU accelerator"):
        cli_main(["--config", str(recipe), "--trainer.strategy", json.dumps(strategy)], run=False)
    with pytest.raises(ValueError, match="The strategy `fsdp` requires a GPU accelerator"):
        cli_main(["--config", str(recipe), "--trainer.strategy", "fsdp"], run=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FSDP needs a CUDA GPU (Lightning and torch refuse CPU)")
def test_a_recipe_fits_with_fsdp_on_a_gpu(tmp_path: Path):
    recipe = write_recipe(tmp_path / "recipe.yaml", tiny_recipe(tmp_path / "run", epochs=1))
    cli_main(["fit", "--config", str(recipe), "--trainer.strategy", "fsdp", "--trainer.accelerator", "gpu"])
    checkpoint = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert checkpoint["global_step"] == 2
