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
# The prompt each family's demo predicts with, on a bundled image that has no label file involved.
PREDICT_INPUTS = {
    "sam_med2d": ("data/sam_med2d_demo/images/amos_0004_75.png", {"boxes": [[[300, 150, 430, 330]]]}),
    "sam_unet": ("data/sam_med2d_demo/images/amos_0004_75.png", {"boxes": [[[300, 150, 430, 330]]]}),
    "sam_med3d": ("data/totalseg_example/ct.nii.gz", {"points": [[[40, 50, 15]]], "point_labels": [[1]]}),
}


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
    from zoo.training.prediction import predict_files

    start = time.perf_counter()
    cli = cli_main(["--config", str(RECIPES / family / "demo.yaml")], run=False)
    before = _headline(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = _headline(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0])
    checkpoint = cli.trainer.checkpoint_callback.last_model_path
    image, prompts = PREDICT_INPUTS[family]
    out_dir = Path(cli.trainer.log_dir) / "predictions"
    masks = predict_files(cli.model.net, [REPO_ROOT / image], prompts, out_dir)
    return DemoResult(
        family, before, after, time.perf_counter() - start, str(cli.trainer.log_dir), checkpoint, [str(m) for m in masks]
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
