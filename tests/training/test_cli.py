"""The ``zoo`` LightningCLI: every recipe parses, the paper recipes print the papers' values, demo recipes run."""

from __future__ import annotations

import re
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
        ("model", "train_prompts", "detach_mask_feedback"): False,
        ("model", "train_prompts", "optimizer_step"): "summed",
        ("model", "eval_prompts", "grid"): "original",
        ("model", "eval_prompts", "headline"): "class_mean",
        ("model", "eval_prompts", "nsd_tolerance_mm"): 1.0,
        ("model", "eval_prompts", "nsd_boundary"): "surfels",
        ("model", "loss", "init_args", "dice_ce"): 1.0,
        ("model", "optimizer", "class_path"): "torch.optim.AdamW",
        ("model", "optimizer", "init_args", "lr"): 8.0e-4,
        ("model", "optimizer", "init_args", "weight_decay"): 0.1,
        ("model", "lr_scheduler", "init_args", "milestones"): [120, 180],
        ("trainer", "max_epochs"): 200,
        ("trainer", "accumulate_grad_batches"): 20,
        ("trainer", "precision"): "16-mixed",
        ("data", "init_args", "total_batch_size"): 12,
        ("data", "init_args", "val_fraction"): 0.0,
        ("data", "init_args", "normalization_scope"): "batch",
        ("data", "init_args", "clip_range"): [-1000.0, 1000.0],
        ("data", "init_args", "clip_scope"): "train_ct_paths",
        ("data", "init_args", "small_target_rule"): "crop_redraw",
        ("data", "init_args", "min_target_voxels"): 1000.0,
    },
    "sam_med2d": {
        ("model", "model"): "sam_med2d_b",
        ("model", "train_prompts", "first_prompt"): "box_or_point",
        ("model", "train_prompts", "clicks_per_iteration"): [1, 3, 5, 9],
        ("model", "train_prompts", "mask_prompt"): "sigmoid",
        ("model", "train_prompts", "iterations"): 9,
        ("model", "train_prompts", "mask_only_iteration_range"): [2, 7],
        ("model", "train_prompts", "optimizer_step"): "per_pass",
        ("model", "train_prompts", "zero_grad"): "zeros",
        ("model", "eval_prompts", "clicks"): [1, 3, 5],
        ("model", "eval_prompts", "simultaneous_points"): [3, 5],
        ("model", "eval_prompts", "headline"): "mask_mean",
        ("model", "eval_prompts", "grid"): "original",
        ("model", "loss", "init_args", "focal"): 20.0,
        ("model", "loss", "init_args", "iou_mse"): 1.0,
        ("model", "optimizer", "class_path"): "torch.optim.Adam",
        ("model", "optimizer", "init_args", "lr"): 1.0e-4,
        ("model", "unfreeze"): ["image_encoder.blocks.*.Adapter.*"],
        ("model", "freeze"): [
            "image_encoder.*", "prompt_encoder.point_embeddings.0.*", "prompt_encoder.point_embeddings.1.*",
            "prompt_encoder.not_a_point_embed.*",
        ],
        ("trainer", "devices"): 1,
        ("data", "init_args", "masks_per_image"): 5,
        ("data", "init_args", "channel_order"): "bgr",
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
        ("model", "eval_prompts", "headline"): "mask_mean",
        ("model", "eval_prompts", "grid"): "original",
        ("trainer", "max_epochs"): 12,
        ("data", "init_args", "masks_per_image"): 5,
        ("data", "init_args", "channel_order"): "rgb",
    },
}

# The SAM-Med3D paper's own schedule and evaluation (paper_schedule.yaml), beside the code-faithful paper.yaml.
PAPER_SCHEDULE_VALUES = {
    ("trainer", "max_epochs"): 1000,
    ("model", "lr_scheduler", "class_path"): "zoo.training.schedules.CyclicMultiStepLR",
    ("model", "lr_scheduler", "init_args", "cycle_length"): 200,
    ("model", "lr_scheduler", "init_args", "milestones"): [120, 160, 190],
    ("model", "lr_scheduler", "init_args", "gamma"): 0.1,
    ("model", "eval_prompts", "first_click"): "crop_centre",
    ("data", "init_args", "eval_crop"): "random_foreground",
}
PAPER_RECIPES = [RECIPES / family / "paper.yaml" for family in ("sam_med2d", "sam_med3d", "sam_unet")] + [
    RECIPES / "sam_med3d" / "paper_schedule.yaml"
]


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


def test_paper_schedule_recipe_shows_the_papers_schedule_and_evaluation(capsys):
    config = printed_config(RECIPES / "sam_med3d" / "paper_schedule.yaml", capsys)
    for path, expected in PAPER_SCHEDULE_VALUES.items():
        value = config
        for key in path:
            value = value[key]
        assert value == expected, f"paper_schedule: {'.'.join(path)} is {value!r}, the paper says {expected!r}"


@pytest.mark.parametrize("family", sorted(PAPER_PREPROCESSING))
def test_the_paper_recipes_data_get_the_papers_preprocessing_from_the_model(family, capsys):
    model = printed_config(RECIPES / family / "paper.yaml", capsys)["model"]
    linked = processor_from_dict(linked_processor(model["model"], model.get("model_overrides"), model.get("weights")))
    assert linked.processor_type == family
    for field, expected in PAPER_PREPROCESSING[family].items():
        assert getattr(linked.config, field) == expected, f"{family}: processor {field}"


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_number_in_a_paper_recipe_says_where_it_comes_from(recipe):
    lines = recipe.read_text().splitlines()
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


CITATION = re.compile(r"[\w./-]+\.(?:py|sh|md):\d+")


@pytest.mark.parametrize("recipe", PAPER_RECIPES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_every_code_comment_in_a_paper_recipe_cites_a_file_and_line(recipe):
    comments = [line.split("#", 1)[1] for line in recipe.read_text().splitlines() if "#" in line]
    uncited = [c.strip() for c in comments if "code:" in c and not CITATION.search(c)]
    assert not uncited, f"'code:' comments without a file:line: {uncited}"
