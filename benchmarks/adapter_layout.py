"""Why SAM-Med2D's adapter makes its input contiguous: its convolutions on channels-last vs NCHW memory, on CPU.

The adapter receives channels-last tokens (``B x H x W x C``); permuting them gives a channels-last NCHW view.
This prints the median time of the adapter's two convolutions (768 channels, 16 x 16 -> 8 x 8 -> 16 x 16, as at
full size) on that view, on a contiguous NCHW copy (what ``ChannelSpatialAdapter`` does), and with channels-last
weights too, with ``--threads`` threads, and the fp32 GEMM rate before and after (``--json PATH`` writes them with
the machine: ``benchmarks/machine.py``).

    python benchmarks/adapter_layout.py
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import torch

from machine import describe_gemm, gemm_rates, load_average, timed_runs, write_record
from zoo.models.components.adapter import ChannelSpatialAdapter

CPU = torch.device("cpu")


def median_ms(fn, runs: int = 20) -> float:
    return statistics.median(timed_runs(fn, runs, warmup=3, device=CPU)) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--grid", type=int, default=16)
    parser.add_argument("--json", type=Path, help="also write the rows here (benchmarks/machine.py's record)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spatial = ChannelSpatialAdapter(args.dim).spatial.eval()
    tokens = torch.randn(1, args.grid, args.grid, args.dim)
    layouts = {
        "channels-last view (permuted tokens)": lambda: tokens.permute(0, 3, 1, 2),
        "contiguous NCHW copy (the adapter's choice)": lambda: tokens.permute(0, 3, 1, 2).contiguous(),
    }
    before = gemm_rates(CPU)
    print(f"fp32 GEMM 2048x2048: {describe_gemm(before)}; load average {load_average()}")
    print(f"adapter convolutions, {args.dim} channels, {args.grid}x{args.grid} grid, {args.threads} threads")
    rows = []
    with torch.inference_mode():
        for name, make in layouts.items():
            rows.append({"layout": name, "ms": median_ms(lambda: spatial(make()))})
            print(f"  {name:<48} {rows[-1]['ms']:7.1f} ms")
        channels_last = ChannelSpatialAdapter(args.dim).spatial.eval().to(memory_format=torch.channels_last)
        channels_last.load_state_dict(spatial.state_dict())
        view = tokens.permute(0, 3, 1, 2)
        name = "channels-last view and channels-last weights"
        rows.append({"layout": name, "ms": median_ms(lambda: channels_last(view))})
        print(f"  {name:<48} {rows[-1]['ms']:7.1f} ms")
    after = gemm_rates(CPU)
    print(f"fp32 GEMM 2048x2048 after: {describe_gemm(after)}; load average {load_average()}")
    if args.json:
        write_record(args.json, "adapter_layout", rows, before, after, dim=args.dim, grid=args.grid)


if __name__ == "__main__":
    main()
