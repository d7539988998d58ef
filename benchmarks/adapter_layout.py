"""Why SAM-Med2D's adapter makes its input contiguous: its convolutions on channels-last vs NCHW memory, on CPU.

The adapter receives channels-last tokens (``B x H x W x C``); permuting them gives a channels-last NCHW view.
This prints the median time of the adapter's two convolutions (768 channels, 16 x 16 -> 8 x 8 -> 16 x 16, as at
full size) on that view, on a contiguous NCHW copy (what ``ChannelSpatialAdapter`` does), and with channels-last
weights too, with ``--threads`` threads.

    python benchmarks/adapter_layout.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from zoo.models.components.adapter import ChannelSpatialAdapter


def median_ms(fn, runs: int = 20) -> float:
    for _ in range(3):
        fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dim", type=int, default=768)
    parser.add_argument("--grid", type=int, default=16)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spatial = ChannelSpatialAdapter(args.dim).spatial.eval()
    tokens = torch.randn(1, args.grid, args.grid, args.dim)
    layouts = {
        "channels-last view (permuted tokens)": lambda: tokens.permute(0, 3, 1, 2),
        "contiguous NCHW copy (the adapter's choice)": lambda: tokens.permute(0, 3, 1, 2).contiguous(),
    }
    print(f"adapter convolutions, {args.dim} channels, {args.grid}x{args.grid} grid, {args.threads} threads")
    with torch.inference_mode():
        for name, make in layouts.items():
            print(f"  {name:<48} {median_ms(lambda: spatial(make())):7.1f} ms")
        channels_last = ChannelSpatialAdapter(args.dim).spatial.eval().to(memory_format=torch.channels_last)
        channels_last.load_state_dict(spatial.state_dict())
        view = tokens.permute(0, 3, 1, 2)
        print(f"  {'channels-last view and channels-last weights':<48} {median_ms(lambda: channels_last(view)):7.1f} ms")


if __name__ == "__main__":
    main()
