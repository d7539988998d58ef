"""The ``zoo`` LightningCLI: every recipe parses, the paper recipes print the papers' values, demo recipes run."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from zoo.cli.lightning import cli_main, linked_processor
from zoo.cli.main import main
from zoo.processors import processor_from_dict

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"

# Values from the fact sheets / upstream code that --print_config must show for each paper recipe.
PAPER_VALUES = {
    "sam_med3d": {
        ("model", "model"): "sam_med3d_turbo",
        ("model", "train_prompts", "iterations"): 11,
        ("model", "train_prompts", "mask_only_iteration_range"): [2, 8],
        ("model", "train_prompts", "click_threshold"): 0.5,
        ("model", "loss", "init_args", "dice_ce"): 1.0,
        ("model", "optimizer", "class_path"): "torch.optim.AdamW",
        ("model", "optimizer", "init_args", "lr"): 8.0e-4,
        ("model", "optimizer", "init_args", "weight_decay"): 0.1,
        ("model", "lr_scheduler", "init_args", "milestones"): [120, 180],
        ("trainer", "max_epochs"): 200,
        ("trainer", "accumulate_grad_batches"): 20,
        ("trainer", "precision"): "16-mixed",
        ("data", "init_args", "batch_size"): 12,
    },
    "sam_med2d": {
        ("model", "model"): "sam_med2d_b",
        ("model", "train_prompts", "first_prompt"): "box_or_point",
        ("model", "train_prompts", "clicks_per_iteration"): [1, 3, 5, 9],
        ("model", "train_prompts", "mask_prompt"): "sigmoid",
        ("model", "loss", "init_args", "focal"): 20.0,
        ("model", "loss", "init_args", "iou_mse"): 1.0,
        ("model", "optimizer", "class_path"): "torch.optim.Adam",
        ("model", "optimizer", "init_args", "lr"): 1.0e-4,
        ("model", "unfreeze"): ["image_encoder.blocks.*.Adapter.*"],
        ("data", "init_args", "masks_per_image"): 5,
    },
    "sam_unet": {
        ("model", "model"): "sam_unet_r34",
        ("model", "train_prompts", "first_prompt"): "box",
        ("model", "loss", "init_args", "dice"): 20.0,
        ("model", "loss", "init_args", "focal"): 1.0,
        ("model", "optimizer", "init_args", "lr"): 1.0e-4,
        ("model", "lr_scheduler", "init_args", "milestones"): [5, 10],
        ("model", "lr_scheduler", "init_args", "gamma"): 0.5,
        ("model", "freeze"): ["image_encoder.*"],
        ("trainer", "max_epochs"): 12,
        ("data", "init_args", "masks_per_image"): 5,
    },
}


# What the paper recipes' data get from the model's processor (linked, so no data flag has to agree with the weights).
PAPER_PREPROCESSING = {
    "sam_med3d": dict(image_size=128, target_spacing_mm=(1.5, 1.5, 1.5), normalization="zscore_positive"),
    "sam_med2d": dict(image_size=256, training_geometry="test_script"),  # test.py / train.py: 256, letterbox
    "sam_unet": dict(image_size=256),
}


def printed_config(recipe: Path, capsys) -> dict:
    with pytest.raises(SystemExit) as exit_info:
        main(["fit", "--config", str(recipe), "--print_config"])
    assert exit_info.value.code in (0, None)
    return yaml.safe_load(capsys.readouterr().out)


@pytest.mark.parametrize("family", sorted(PAPER_VALUES))
def test_print_config_shows_the_paper_values(family, capsys):
    config = printed_config(RECIPES / family / "paper.yaml", capsys)
    for path, expected in PAPER_VALUES[family].items():
        value = config
        for key in path:
            value = value[key]
        assert value == expected, f"{family}: {'.'.join(path)} is {value!r}, the paper's recipe says {expected!r}"


@pytest.mark.parametrize("family", sorted(PAPER_PREPROCESSING))
def test_the_paper_recipes_data_get_the_papers_preprocessing_from_the_model(family, capsys):
    model = printed_config(RECIPES / family / "paper.yaml", capsys)["model"]
    linked = processor_from_dict(linked_processor(model["model"], model.get("model_overrides"), model.get("weights")))
    assert linked.processor_type == family
    for field, expected in PAPER_PREPROCESSING[family].items():
        assert getattr(linked.config, field) == expected, f"{family}: processor {field}"


@pytest.mark.parametrize("family", sorted(PAPER_VALUES))
def test_every_number_in_a_paper_recipe_says_where_it_comes_from(family):
    lines = (RECIPES / family / "paper.yaml").read_text().splitlines()
    def value_part(line: str) -> str:
        code = line.split("#")[0]
        if code.strip().startswith("class_path:"):
            return ""  # a class name, not a number
        return code.split(":", 1)[1] if ":" in code else code

    numeric = [l for l in lines if l.strip() and not l.strip().startswith("#") and any(c.isdigit() for c in value_part(l))]
    uncommented = [l for l in numeric if "#" not in l]
    assert not uncommented, f"values without a source comment: {uncommented}"


@pytest.mark.parametrize("family", sorted(PAPER_VALUES))
def test_demo_recipe_fits_one_epoch_and_validates(family, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # recipes name bundled data relative to the repository
    root = str(tmp_path / "run")
    cli = cli_main(
        [
            "fit", "--config", str(RECIPES / family / "demo.yaml"),
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "2",
            "--trainer.check_val_every_n_epoch", "1", "--trainer.default_root_dir", root,
            "--trainer.logger.init_args.save_dir", root,
            "--trainer.callbacks.init_args.dirpath", str(tmp_path / "ckpt"),
        ]
    )
    assert cli.trainer.global_step == 2
    assert any(k.startswith("val/dice/") for k in cli.trainer.callback_metrics)
    assert (tmp_path / "ckpt" / "last.ckpt").exists()
