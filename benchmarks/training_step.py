"""One full-size training step per family on CPU: samples/s and peak memory, with each paper's prompt schedule.

Each family's module, loss, prompt schedule, frozen parts and optimiser come from its paper recipe
(``recipes/<family>/paper.yaml``) through the zoo CLI's own parser; the batch comes from the bundled real data
through the family's DataModule (``data/totalseg_example`` as a one-case nnU-Net folder, ``data/sam_med2d_demo``):

* ``sam_med3d``: ``sam_med3d_turbo``, one 128^3 crop (right kidney), 11 prompt iterations (``--iterations-3d``);
* ``sam_med2d``: ``sam_med2d_b`` at 256, one image with 5 masks (box or point, then 8 point iterations);
* ``sam_unet``: ``sam_unet_r34`` at 256, one image with 5 masks, one box each.

A step is the module's real ``training_step`` (the interactive loop and loss), ``backward`` and the optimiser step,
in fp32 (the SAM-Med3D recipe's ``16-mixed`` applies on GPUs). Networks are randomly initialised (speed does not
depend on the weights). Each family runs in a fresh process, so its peak RSS is its own; the first step is a
warm-up and the table shows the median and the fastest of the others, and the process CPU time per step (on a
machine shared with other work, wall time inflates; CPU time / threads is the uncontended wall time at best).
Samples/s are computed from the median. The fp32 GEMM rate (``benchmarks/machine.py``) is measured before the rows
and before each family's process starts (the table's last column) and after the rows; ``--json PATH`` writes them
with the rows and the machine.

    python benchmarks/training_step.py                      # all families, 2 threads, 1 warm-up + 2 timed steps
    python benchmarks/training_step.py --families sam_med2d --steps 5
    python benchmarks/training_step.py --families sam_med3d --activation-checkpointing   # peak memory both ways
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
CT = REPO_ROOT / "data" / "totalseg_example" / "ct.nii.gz"
LABELS = REPO_ROOT / "data" / "totalseg_example" / "labels.nii.gz"
SAM_MED2D_DEMO = REPO_ROOT / "data" / "sam_med2d_demo"
KIDNEY_RIGHT = 2
FAMILIES = ("sam_med3d", "sam_med2d", "sam_unet")


def nnunet_copy(root: Path) -> Path:
    """The bundled CT and labels as a one-case nnU-Net folder (links, nothing copied)."""
    import json as json_module

    (root / "imagesTr").mkdir(parents=True)
    (root / "labelsTr").mkdir()
    os.symlink(CT, root / "imagesTr" / "abdomen_0000.nii.gz")
    os.symlink(LABELS, root / "labelsTr" / "abdomen.nii.gz")
    names = json_module.loads((CT.parent / "labels.json").read_text())["all"]
    labels = {"background": 0, **{name: int(cid) for cid, name in names.items()}}
    (root / "dataset.json").write_text(json_module.dumps({"labels": labels, "file_ending": ".nii.gz"}))
    return root


def overrides(family: str, data_root: Path, iterations_3d: int) -> list[str]:
    """Command-line overrides of the paper recipe: CPU, fp32, no logging or checkpoints, the bundled data."""
    common = [
        "--trainer.accelerator=cpu", "--trainer.devices=1", "--trainer.precision=32", "--trainer.logger=false",
        "--trainer.callbacks=[]", "--trainer.enable_checkpointing=false", f"--trainer.default_root_dir={data_root}",
        "--data.init_args.batch_size=1", "--data.init_args.num_workers=0",
    ]
    if family == "sam_med3d":
        return [
            *common, f"--data.init_args.root={data_root / 'Dataset001'}", f"--data.init_args.classes=[{KIDNEY_RIGHT}]",
            "--data.init_args.val_fraction=0.0", f"--model.train_prompts.iterations={iterations_3d}",
            # the recipe's mask-only iteration range [2, 8] must lie below the iteration count
            *(["--model.train_prompts.mask_only_iteration_range=null"] if iterations_3d <= 8 else []),
        ]
    return [*common, f"--data.init_args.root={SAM_MED2D_DEMO}", "--data.init_args.masks_per_image=5"]


def build_recipe_step(
    family: str, data_root: Path, iterations_3d: int, extra: list[str] | tuple[str, ...] = ()
) -> tuple[Any, Any, dict[str, Any]]:
    """The paper recipe's module through the zoo CLI parser (CPU, fp32, the bundled data under ``data_root``), its
    optimiser in train mode and one batch. ``extra``: more CLI overrides.

    A module that steps its optimiser after every prompt pass (SAM-Med2D's manual optimisation) gets the two
    Trainer hooks it calls, so that it runs outside a Trainer."""
    from zoo.cli.lightning import cli_main

    if family == "sam_med3d" and not (data_root / "Dataset001").exists():
        nnunet_copy(data_root / "Dataset001")
    recipe = REPO_ROOT / "recipes" / family / "paper.yaml"
    cli = cli_main(["--config", str(recipe), *overrides(family, data_root, iterations_3d), *extra], run=False)
    module, datamodule = cli.model, cli.datamodule
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    configured = module.configure_optimizers()
    optimizer = configured["optimizer"] if isinstance(configured, dict) else configured
    module.train()
    if module.train_prompts.optimizer_step == "per_pass":
        module.optimizers = lambda use_pl_optimizer=True: optimizer
        module.manual_backward = lambda loss, *args, **kwargs: loss.backward()
    return module, optimizer, batch


def train_step(module: Any, optimizer: Any, batch: dict[str, Any]) -> Any:
    """One training step: ``training_step`` (the prompt loop and loss), then, for a summed loss, its backward and
    one optimiser step (a per-pass module has stepped after each pass itself and returns None)."""
    loss = module.training_step(batch, 0)
    if loss is not None:
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return loss


def run_family(
    family: str, threads: int, steps: int, iterations_3d: int, activation_checkpointing: bool = False
) -> dict[str, Any]:
    """Build the recipe's module and data, run ``steps`` training steps, return timings and memory."""
    import torch

    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        extra = ["--model.activation_checkpointing=true"] if activation_checkpointing else []
        module, optimizer, batch = build_recipe_step(family, Path(tmp), iterations_3d, extra)
    targets = int(batch["target"].shape[0]) if "target" in batch else int(batch["masks"].shape[:2].numel())
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times, cpu_times, losses = [], [], []
    for _ in range(steps + 1):
        start, cpu_start = time.perf_counter(), time.process_time()
        loss = train_step(module, optimizer, batch)
        times.append(time.perf_counter() - start)
        cpu_times.append(time.process_time() - cpu_start)
        losses.append(loss)
    timed = times[1:] or times
    seconds = statistics.median(timed)
    images = int(batch["image"].shape[0])
    schedule = module.train_prompts
    return {
        "family": family,
        "model": module.hparams.model,
        "activation_checkpointing": activation_checkpointing,
        "input": "x".join(str(s) for s in batch["image"].shape[1:]),
        "images": images,
        "targets": targets,
        "iterations": schedule.iterations,
        "first_prompt": schedule.first_prompt,
        "trainable_params_m": sum(p.numel() for p in module.parameters() if p.requires_grad) / 1e6,
        "step_seconds": seconds,
        "fastest_step_seconds": min(timed),
        "step_cpu_seconds": statistics.median(cpu_times[1:] or cpu_times),
        "all_step_seconds": times,
        "images_per_second": images / seconds,
        "targets_per_second": targets / seconds,
        "rss_before_steps_mib": rss_before / 1024,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "threads": torch.get_num_threads(),
        "loss": None if losses[-1] is None else float(losses[-1].detach()),  # per-pass modules return None
    }


def row_from_child(command: list[str], threads: int) -> tuple[dict[str, Any] | None, subprocess.CompletedProcess]:
    """Run a benchmark's one-row child process (``threads`` OpenMP threads, the Hub offline): the dict its ``ROW``
    line holds (None if it failed) and the finished process."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    found = [line[4:] for line in result.stdout.splitlines() if line.startswith("ROW ")]
    return (json.loads(found[0]) if result.returncode == 0 and found else None), result


def print_table(rows: list[dict[str, Any]]) -> None:
    columns = [
        "family", "model", "activation checkpointing", "input", "images x targets", "prompt iterations",
        "trainable M", "s/step (median)", "s/step (fastest)", "CPU s/step", "images/s", "targets/s", "peak RSS MiB",
        "GEMM GFLOP/s before",
    ]  # fmt: skip
    print("| " + " | ".join(columns) + " |")
    print("|" + "---|" * len(columns))
    for r in rows:
        cells = [
            r["family"], r["model"], "on" if r["activation_checkpointing"] else "off", r["input"],
            f"{r['images']} x {r['targets']}", f"{r['iterations']} ({r['first_prompt']} first)",
            f"{r['trainable_params_m']:.1f}", f"{r['step_seconds']:.2f}", f"{r['fastest_step_seconds']:.2f}",
            f"{r['step_cpu_seconds']:.1f}", f"{r['images_per_second']:.3f}", f"{r['targets_per_second']:.3f}",
            f"{r['peak_rss_mib']:.0f}", f"{r['gemm_gflops_before']:.0f}",
        ]  # fmt: skip
        print("| " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up step")
    parser.add_argument("--iterations-3d", type=int, default=11, help="SAM-Med3D prompt iterations (paper: 11)")
    parser.add_argument(
        "--activation-checkpointing",
        action="store_true",
        help="also run each family with the encoder blocks recomputed in backward (peak memory both ways)",
    )
    parser.add_argument("--json", type=Path, help="also write the rows here (benchmarks/machine.py's record)")
    parser.add_argument("--one", choices=FAMILIES, help=argparse.SUPPRESS)  # internal: run one family, print JSON
    parser.add_argument("--checkpointing-on", action="store_true", help=argparse.SUPPRESS)  # internal, with --one
    args = parser.parse_args(argv)
    if args.one:
        row = run_family(args.one, args.threads, args.steps, args.iterations_3d, args.checkpointing_on)
        print("ROW " + json.dumps(row), flush=True)
        return 0

    import torch

    from machine import describe_gemm, gemm_rate, gemm_rates, load_average, write_record

    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    before = gemm_rates(cpu)
    print(f"fp32 GEMM 2048x2048: {describe_gemm(before)}; load average {load_average()}", file=sys.stderr)
    rows = []
    runs = [(family, False) for family in args.families]
    if args.activation_checkpointing:
        runs += [(family, True) for family in args.families]
    for family, checkpointing in runs:
        command = [
            sys.executable, __file__, "--one", family, "--threads", str(args.threads), "--steps", str(args.steps),
            "--iterations-3d", str(args.iterations_3d), *(["--checkpointing-on"] if checkpointing else []),
        ]
        rate = gemm_rate(cpu)
        row, result = row_from_child(command, args.threads)
        if row is None:
            print(f"{family} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}", file=sys.stderr)
            return 1
        rows.append({**row, "gemm_gflops_before": rate})
        print(f"{family}: step times {[round(t, 2) for t in rows[-1]['all_step_seconds']]} s", file=sys.stderr)
    after = gemm_rates(cpu)
    print(f"CPU ({platform.machine()}, {os.cpu_count()} cores), {args.threads} threads, fp32")
    print(f"fp32 GEMM 2048x2048 before the rows: {describe_gemm(before)}; after: {describe_gemm(after)}; "
          f"load average {load_average()}")  # fmt: skip
    print_table(rows)
    if args.json:
        write_record(args.json, "training_step", rows, before, after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
