"""``zoo demo``: the main job on bundled data. For each family: validate, fit the demo recipe, validate again,
then predict a bundled image with the trained weights, and say where the masks and metrics went."""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "recipes"
FAMILIES = ("sam_med2d", "sam_unet", "sam_med3d")
# What each family's demo predicts: a bundled image and the reference mask its prompt is derived from (the
# prediction itself sees only the image and the prompt).
PREDICT_2D = ("data/sam_med2d_demo/images/amos_0004_75.png", "data/sam_med2d_demo/masks/amos_0004_75_liver_000.png")
PREDICT_3D = ("data/totalseg_example/ct.nii.gz", "data/totalseg_example/labels.nii.gz", 2)  # kidney_right


@dataclass
class DemoResult:
    family: str
    before: dict[str, float]
    after: dict[str, float]
    seconds: float
    log_dir: str
    checkpoint: str
    masks: list[str]


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser("demo", help="train and predict every family's demo recipe on bundled data")
    parser.add_argument("--family", choices=FAMILIES, action="append", help="only these families (repeatable)")
    parser.set_defaults(run=run)


def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    keys = [k for k in metrics if k.count("/") == 2 and k.startswith("val/")]
    return {k: float(metrics[k]) for k in sorted(keys)}


def run_family(family: str) -> DemoResult:
    """Validate, fit, validate and predict one family's ``recipes/<family>/demo.yaml``."""
    from zoo.cli.lightning import cli_main
    from zoo.training.prediction import predict_masks

    start = time.perf_counter()
    cli = cli_main(["--config", str(RECIPES / family / "demo.yaml")], run=False)
    before = _headline(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = _headline(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0])
    checkpoint = cli.trainer.checkpoint_callback.last_model_path
    out_dir = Path(cli.trainer.log_dir) / "predictions"
    masks = predict_masks(cli.model.net, _prediction_data(cli.model.net, cli.datamodule), out_dir, overwrite=True)
    return DemoResult(
        family, before, after, time.perf_counter() - start, str(cli.trainer.log_dir), checkpoint, [str(m) for m in masks]
    )


def _prediction_data(net: Any, datamodule: Any) -> Any:
    """The demo's prediction input: a box around a bundled 2D mask, or a click inside a bundled 3D label."""
    import nibabel as nib
    import numpy as np

    from zoo.data import PromptedImagesDataModule, read_mask

    if net.prompt_encoder.spatial_dims == 2:
        image, mask_path = (REPO_ROOT / p for p in PREDICT_2D)
        rows, cols = np.nonzero(read_mask(mask_path))
        box = [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
        preprocessing = "sam_unet" if net.family == "sam_unet" else "sam_med2d"
        return PromptedImagesDataModule(
            images=[str(image)], box=box, image_size=net.config.image_size, preprocessing_2d=preprocessing
        )
    image, label, class_id = PREDICT_3D
    voxels = np.argwhere(np.asarray(nib.load(REPO_ROOT / label).dataobj) == class_id)
    centre = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]  # the label voxel nearest its centroid
    return PromptedImagesDataModule(
        images=[str(REPO_ROOT / image)],
        points=[[float(c) for c in centre]],
        point_labels=[1],
        coordinate_space="voxel",
        spacing=datamodule.spacing,
        crop_size=net.config.image_size,
        normalization=datamodule.normalization,
    )


def run(args: argparse.Namespace) -> int:
    results = [run_family(family) for family in (args.family or FAMILIES)]
    print("\nDemo results (validation Dice before -> after training)")
    for r in results:
        print(f"\n[{r.family}] {r.seconds:.0f} s")
        for key in r.after:
            print(f"  {key:<24} {r.before.get(key, float('nan')):.3f} -> {r.after[key]:.3f}")
        print(f"  metrics:    {r.log_dir}/metrics.csv")
        print(f"  checkpoint: {r.checkpoint}")
        for mask in r.masks:
            print(f"  mask:       {mask}")
    return 0
