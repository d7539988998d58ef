"""Which kernel computes a float32 linear product fastest on this CPU, and whether the zoo's rule picks it.

For weight shapes of the released networks' decoders and encoders (those small enough to be kept in oneDNN's
layout) and a range of row counts (a click's 7 prompt tokens up to an encoder's tokens), three kernels compute
``F.linear(x, W, b)``, interleaved round by round (these machines switch between fast and slow phases; medians
over ``--rounds``):

* ``BLAS``: ``F.linear`` (MKL where torch has it);
* ``oneDNN``: oneDNN's product on the plain weight, which it reorders into its own layout inside every call;
* ``kept``: oneDNN's product on the weight kept in that layout (``onednn_linear.kept_packed``).

Each timing cycles through ``--copies`` distinct weights of the shape, so that every product reads its weight from
memory as it does inside a model, where the other layers run between two uses of one weight; a single weight timed
in a loop stays in cache and flatters the few-row products. Per cell: microseconds per product of each kernel,
the kernel ``zoo.models.components.onednn_linear`` picks for an inference product of that size on this CPU
(:func:`~zoo.models.components.onednn_linear.packed_product_applies`, then
:func:`~zoo.models.components.onednn_linear.onednn_applies`), and ``*`` where the pick is more than ``--slack``
slower than the fastest. The fp32 GEMM rate (2048^2, ``machine.gemm_rates``) and the load average are printed
before and after the table, the CPU's vendor, vector capability and which of the zoo's regimes applies before it;
``--json PATH`` writes them with the rows and the machine.

    python benchmarks/linear_kernels.py                      # every shape, 1 to 512 rows (about a minute)
    python benchmarks/linear_kernels.py --shapes decoder --rows 7 14 --json /tmp/kernels.json
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch.nn import functional as F

from zoo.models.components import onednn_linear

# (name, in_features, out_features): the products the rule is about.
SHAPES = {
    "decoder": [
        ("SAM decoder MLP lin1 (2D, LiteMedSAM)", 256, 2048),
        ("SAM decoder MLP lin2 (2D, LiteMedSAM)", 2048, 256),
        ("SAM-Med3D decoder MLP lin1", 384, 2048),
        ("SAM-Med3D decoder MLP lin2", 2048, 384),
        ("SAM-Med3D decoder projection", 384, 384),
        ("SAM decoder projection", 256, 256),
        ("SAM-Med3D upscaling 1 (384 -> 96 x 8)", 384, 768),
    ],
    # The encoders' wider weights (qkv, MLP) exceed MAX_PACKED_FLOAT32_BYTES: never kept, a copy would double them.
    "encoder": [("ViT-B output projection", 768, 768)],
}
KERNELS = ("BLAS", "oneDNN", "kept")


def kernels(x: torch.Tensor, weights: list[torch.Tensor], bias: torch.Tensor) -> dict[str, Callable[[], object]]:
    """Each kernel's product of ``x`` with every one of ``weights`` in turn."""
    product = torch.ops.mkldnn._linear_pointwise
    kept = [torch.ops.mkldnn._reorder_linear_weight(weight, None) for weight in weights]
    return {
        "BLAS": lambda: [F.linear(x, weight, bias) for weight in weights],
        "oneDNN": lambda: [product(x, weight, bias, "none", [], "") for weight in weights],
        "kept": lambda: [product(x, weight, bias, "none", [], "") for weight in kept],
    }


def picked_kernel(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> str:
    """The kernel the zoo's kept-weight linear (``kept_linear``) runs for this inference product on this CPU."""
    with torch.inference_mode():
        if onednn_linear.packed_product_applies(x, weight, bias):
            return "kept"
        return "oneDNN" if onednn_linear.onednn_applies(x, weight, bias) else "BLAS"


def measure(shapes: list[tuple[str, int, int]], rows: list[int], rounds: int, copies: int) -> list[dict]:
    """One row per (shape, row count): median microseconds per product of each kernel, and the pick."""
    results = []
    for name, inputs, outputs in shapes:
        weights = [torch.randn(outputs, inputs) for _ in range(copies)]
        bias = torch.randn(outputs)
        for count in rows:
            x = torch.randn(count, inputs)
            runs = kernels(x, weights, bias)
            times: dict[str, list[float]] = {kernel: [] for kernel in KERNELS}
            with torch.inference_mode():
                for run in runs.values():
                    run()  # warm-up
                for _ in range(rounds):
                    for kernel, run in runs.items():
                        start = time.perf_counter()
                        run()
                        times[kernel].append((time.perf_counter() - start) / copies * 1e6)
            median = {kernel: statistics.median(values) for kernel, values in times.items()}
            results.append({
                "shape": name, "in": inputs, "out": outputs, "rows": count, "us": median,
                "picked": picked_kernel(x, weights[0], bias), "fastest": min(median, key=median.get),
            })  # fmt: skip
    return results


def print_table(results: list[dict], slack: float) -> None:
    print(f"{'product':<40} {'rows':>5} " + " ".join(f"{k + ' us':>10}" for k in KERNELS) + "  picked")
    print("-" * 90)
    for row in results:
        times = row["us"]
        late = times[row["picked"]] > (1 + slack) * times[row["fastest"]]
        cells = " ".join(f"{times[kernel]:>10.1f}" for kernel in KERNELS)
        print(f"{row['shape']:<40} {row['rows']:>5} {cells}  {row['picked']}{' *' if late else ''}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=sorted(SHAPES))
    parser.add_argument("--rows", nargs="+", type=int, default=[1, 7, 14, 28, 64, 128, 512])
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; medians over them")
    parser.add_argument("--copies", type=int, default=12, help="distinct weights cycled through per timing")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--slack", type=float, default=0.1, help="a pick this much slower than the best is marked")
    parser.add_argument("--json", type=Path, help="also write the rows and GEMM rates here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    from machine import describe_gemm, gemm_rates, kernel_regime, load_average, write_record

    args = parse_args(argv)
    if not (onednn_linear.onednn_linear_works() and onednn_linear.onednn_packing_works()):
        print("oneDNN's linear op or its weight reorder is not usable in this torch: nothing to compare")
        return 1
    torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, python {platform.python_version()}, {platform.machine()}, "
          f"threads {torch.get_num_threads()}, fp32")  # fmt: skip
    print(f"CPU: {kernel_regime()}")
    before = gemm_rates(device)
    print(f"fp32 GEMM 2048x2048: {describe_gemm(before)}; load average {load_average()}")
    shapes = [shape for group in args.shapes for shape in SHAPES[group]]
    results = measure(shapes, args.rows, args.rounds, args.copies)
    after = gemm_rates(device)
    print_table(results, args.slack)
    print(f"fp32 GEMM 2048x2048 after the rows: {describe_gemm(after)}; "
          f"load average {load_average()}")  # fmt: skip
    print(f"* the pick is more than {args.slack:.0%} slower than the fastest kernel of its row")
    if args.json:
        write_record(args.json, "linear_kernels", results, before, after)
    return 0


if __name__ == "__main__":
    sys.exit(main())
