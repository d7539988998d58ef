"""Time per 3D sample through the full data pipeline on the bundled CT (data/totalseg_example).

Run: ``python benchmarks/data_pipeline.py [--repeats 5] [--threads N]``

Each row times one stage on one target (right kidney) at the released settings (1.5 mm, 128^3, masked
z-score), median over ``--repeats`` runs after one warm-up; the last rows time whole ``TargetDataset`` items
(load + checks + preprocessing + output dict) for evaluation and training, and the inverse back to the file grid.
The fp32 GEMM rate and the load average are printed before and after the rows (the machine's phase: see
``benchmarks/machine.py``); ``--json PATH`` writes them with the rows and the machine.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor

from machine import describe_gemm, gemm_rates, load_average, timed_runs, write_record
from zoo.data import NiftiDataModule3D, TargetDataset, load_image, load_label, restore_to_original
from zoo.data.transforms3d import build_transforms_3d

DATA = Path(__file__).resolve().parents[1] / "data" / "totalseg_example"
KIDNEY_RIGHT = 2


def median_seconds(run: Callable[[], object], repeats: int) -> float:
    return statistics.median(timed_runs(run, repeats, warmup=1, device=torch.device("cpu")))


def nnunet_copy(folder: Path) -> Path:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    shutil.copy(DATA / "ct.nii.gz", folder / "imagesTr" / "abdomen_0000.nii.gz")
    shutil.copy(DATA / "labels.nii.gz", folder / "labelsTr" / "abdomen.nii.gz")
    names = json.loads((DATA / "labels.json").read_text())["all"]
    labels = {"background": 0, **{name: int(cid) for cid, name in names.items()}}
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz"}))
    return folder


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", type=Path, help="also write the rows here (benchmarks/machine.py's record)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    before = gemm_rates(torch.device("cpu"))
    print(f"fp32 GEMM 2048x2048: {describe_gemm(before)}; load average {load_average()}")

    image_path, label_path = DATA / "ct.nii.gz", DATA / "labels.nii.gz"
    image, label = load_image(image_path), load_label(label_path)
    affine = torch.from_numpy(image.affine)

    def fresh_input() -> dict:
        binary = torch.from_numpy(label.array == KIDNEY_RIGHT).to(torch.uint8)
        return {
            "image": MetaTensor(torch.from_numpy(image.array)[None], affine=affine),
            "label": MetaTensor(binary[None], affine=affine.clone()),
            "image_path": str(image_path),
        }

    eval_transform = build_transforms_3d(train=False)
    steps = list(eval_transform.transforms)
    cumulative = {}
    for count, name in [(1, "reorient to RAS"), (2, "+ resample to 1.5 mm"), (3, "+ crop/pad 128^3"), (4, "+ z-score")]:
        partial = steps[:count]

        def run(partial=partial) -> dict:
            data = fresh_input()
            for step in partial:
                data = step(data)
            return data

        cumulative[name] = median_seconds(run, args.repeats)
    output = eval_transform(fresh_input())
    crop_label, crop_affine = output["label"].as_tensor(), output["label"].affine

    with tempfile.TemporaryDirectory() as tmp:
        module = NiftiDataModule3D(nnunet_copy(Path(tmp) / "Dataset001"), val_fraction=0.0, classes=[KIDNEY_RIGHT])
        module.setup("fit")
        eval_set = TargetDataset(module.train_targets, build_transforms_3d(train=False))
        train_set = TargetDataset(module.train_targets, build_transforms_3d(train=True))
        rows = [
            ("load + check image and label",
             median_seconds(lambda: (load_image(image_path), load_label(label_path)), args.repeats)),
            *((f"transforms: {name}", seconds) for name, seconds in cumulative.items()),
            ("TargetDataset item, evaluation (full pipeline)", median_seconds(lambda: eval_set[0], args.repeats)),
            ("TargetDataset item, training (+ flips)", median_seconds(lambda: train_set[0], args.repeats)),
            ("inverse: 128^3 mask -> file grid", median_seconds(
                lambda: restore_to_original(crop_label, crop_affine, image.affine, image.shape), args.repeats)),
        ]

    width = max(len(name) for name, _ in rows)
    print(f"bundled CT {image.shape} at 3 mm -> 1.5 mm, 128^3 crop; torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; median of {args.repeats}")
    print(f"{'stage':<{width}}  seconds")
    print(f"{'-' * width}  -------")
    for name, seconds in rows:
        print(f"{name:<{width}}  {seconds:7.3f}")
    per_sample = rows[-3][1]
    verdict = "met" if per_sample < 2 else "NOT met"
    print(f"\ntime per 3D sample (evaluation item): {per_sample:.3f} s; target < 2 s: {verdict}")
    after = gemm_rates(torch.device("cpu"))
    print(f"fp32 GEMM 2048x2048 after the rows: {describe_gemm(after)}; load average {load_average()}")
    if args.json:
        measured = [{"stage": name, "seconds": seconds} for name, seconds in rows]
        write_record(args.json, "data_pipeline", measured, before, after, repeats=args.repeats)
    sys.exit(0)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
