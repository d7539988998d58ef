"""ONNX Runtime vs PyTorch on this machine's CPU: encoder and per-click latency of every family, and the graphs' sizes.

For each released architecture at full size (LiteMedSAM with its released weights, the others randomly initialised:
speed does not depend on the weights), fp32, batch 1, on ``--threads`` threads (PyTorch's and each ONNX Runtime
session's intra-op threads), the model is exported with ``zoo.deploy.onnx_export.export_onnx`` and timed three ways,
interleaved run by run so that a change of the machine's load hits all of them alike:

* ``torch``: the PyTorch model as the Predictor runs it (the exact fast kernels, the default);
* ``torch-ref``: PyTorch on upstream's literal computation (``reference_computation()``, what the graphs hold);
* ``onnxruntime``: the exported graphs on ONNX Runtime's CPU provider (all graph optimisations).

The input is the bundled CT (3D) or CT slice (2D) through the family's processor, with a click on the liver
(LiteMedSAM: its box); a click is the prompt encoder, the mask decoder, the decode policy and the upsampling to the
model grid, on the cached embedding (the decoder graph; in PyTorch the processor's ``decode`` + ``upsample``). Per
row: median encoder latency over ``--runs`` runs after one warm-up, median click latency over ``--clicks`` clicks,
the graph files' sizes, and ONNX Runtime's largest absolute difference from PyTorch (embedding, low-res logits).
The fp32 GEMM rate (2048 x 2048) is printed before and after the rows: numbers from runs at different rates are not
comparable. ``--json PATH`` writes the rows with the machine and its GEMM rates (``benchmarks/machine.py``).

    python benchmarks/onnx_speed.py                               # every family (minutes on 2 cores)
    python benchmarks/onnx_speed.py --families litemedsam sam_med2d_b --runs 3
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from encoder_speed import data_root, prepared_inputs, randomise_positions
from machine import describe_gemm, gemm_rates, load_average, write_record

from zoo.models.components.compute_path import reference_computation

FAMILIES = ("sam_med3d_turbo", "sam_med2d_b", "sam_unet_r34", "sam_vit_b", "litemedsam")
PATHS = ("torch", "torch-ref", "onnxruntime")


def interleaved(calls: dict[str, Callable[[], Any]], runs: int) -> dict[str, list[float]]:
    """Each call once as a warm-up, then ``runs`` rounds of every call in turn; seconds per call."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(runs):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return times


class FamilyBench:
    """One family: the model, its processor, the prepared input and click, the exported graphs."""

    def __init__(self, family: str, folder: Path, args: argparse.Namespace) -> None:
        import onnxruntime

        import zoo
        from zoo.deploy.onnx_export import export_onnx
        from zoo.processors import processor_for

        torch.manual_seed(0)
        self.model = zoo.create_model(family, pretrained=family == "litemedsam").eval()
        if family != "litemedsam":
            randomise_positions(self.model)
        self.processor = processor_for(self.model)
        self.image, kwargs = prepared_inputs(self.model, family, data_root(args.data))
        self.points, self.boxes, self.masks = kwargs["points"], kwargs["boxes"], kwargs["masks"]
        started = time.perf_counter()
        export = export_onnx(self.model, folder)
        self.export_s = time.perf_counter() - started
        self.sizes_mib = [export.encoder.stat().st_size / 2**20, export.decoder.stat().st_size / 2**20]
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = args.threads
        options.inter_op_num_threads = 1
        # ONNX Runtime's idle threads spin-wait for the next run by default: on a 2-core machine that takes the
        # cores from the PyTorch run interleaved after it (measured: PyTorch's encoder up to 3x slower).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.encoder = onnxruntime.InferenceSession(str(export.encoder), options, providers=["CPUExecutionProvider"])
        self.decoder = onnxruntime.InferenceSession(str(export.decoder), options, providers=["CPUExecutionProvider"])
        self.feeds = self._prompt_feeds()
        self.prompts = self._prompts()

    def _prompt_feeds(self) -> dict[str, np.ndarray]:
        """The click as the decoder graph takes it (absent prompts: no rows, or the mask flag at 0)."""
        dims = int(self.model.spatial_dims)
        feeds: dict[str, np.ndarray] = {}
        if self.points is None:
            feeds["point_coords"] = np.zeros((1, 0, dims), np.float32)
            feeds["point_labels"] = np.zeros((1, 0), np.int64)
        else:
            feeds["point_coords"], feeds["point_labels"] = (t.numpy() for t in self.points)
        if dims == 2:
            no_box = np.zeros((1, 0, 4), np.float32)
            feeds["boxes"] = no_box if self.boxes is None else self.boxes.reshape(1, 1, 4).numpy()
        low_res = (1, 1, *self.model.mask_input_size)
        feeds["mask_input"] = np.zeros(low_res, np.float32) if self.masks is None else self.masks.numpy()
        feeds["has_mask_input"] = np.array([0.0 if self.masks is None else 1.0], np.float32)
        return feeds

    # PyTorch ----------------------------------------------------------------------------------------------
    def torch_encode(self) -> Any:
        with torch.inference_mode():
            return self.model.encode_image(self.image)

    def torch_click(self, encoding: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """The processor's decode and upsampling (the graph's work): upsampled and low-res logits."""
        with torch.inference_mode():
            decoded = self.processor.decode(self.model, encoding, self.prompts)
            return self.processor.upsample(decoded.low_res_logits), decoded.low_res_logits

    def _prompts(self) -> Any:
        """The click as prompt containers (``model_kwargs``' inverse: the network's (x, y) back to index order)."""
        from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts, Prompts

        dims = int(self.model.spatial_dims)
        grid = tuple(self.model.input_size)
        points = None
        if self.points is not None:
            coords, labels = self.points
            points = PointPrompts(coords.flip(-1).contiguous() if dims == 2 else coords, labels, grid)
        boxes = None
        if self.boxes is not None:
            corners = self.boxes.reshape(-1, 4)
            valid = torch.ones(len(corners), dtype=torch.bool)
            boxes = BoxPrompts(corners[:, [1, 0]].contiguous(), corners[:, [3, 2]].contiguous(), valid, grid)
        return Prompts(points, boxes, None if self.masks is None else MaskPrompts(self.masks))

    # ONNX Runtime -------------------------------------------------------------------------------------------
    def onnx_encode(self) -> list[np.ndarray]:
        return self.encoder.run(None, {"model_input": self.image.numpy()})

    def onnx_click(self, encoding: list[np.ndarray]) -> list[np.ndarray]:
        names = [i.name for i in self.encoder.get_outputs()]
        return self.decoder.run(None, {**dict(zip(names, encoding)), **self.feeds})


def measure(family: str, args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as folder:
        bench = FamilyBench(family, Path(folder), args)
        torch_encoding, onnx_encoding = bench.torch_encode(), bench.onnx_encode()

        def reference_encode() -> Any:
            with reference_computation():
                return bench.torch_encode()

        def reference_click() -> Any:
            with reference_computation():
                return bench.torch_click(torch_encoding)

        encoders = interleaved(
            {"torch": bench.torch_encode, "torch-ref": reference_encode, "onnxruntime": bench.onnx_encode}, args.runs
        )
        clicks = interleaved(
            {
                "torch": lambda: bench.torch_click(torch_encoding),
                "torch-ref": reference_click,
                "onnxruntime": lambda: bench.onnx_click(onnx_encoding),
            },
            args.clicks,
        )
        tensors = [torch_encoding] if isinstance(torch_encoding, torch.Tensor) else list(vars(torch_encoding).values())
        embedding_diff = max(float(np.abs(o - t.numpy()).max()) for o, t in zip(onnx_encoding, tensors))
        onnx_logits, torch_logits = bench.onnx_click(onnx_encoding)[0], bench.torch_click(torch_encoding)[1].numpy()
        logits_diff = float(np.abs(onnx_logits - torch_logits).max())
        return {
            "family": family,
            "encoder_s": {name: statistics.median(times) for name, times in encoders.items()},
            "click_ms": {name: 1e3 * statistics.median(times) for name, times in clicks.items()},
            "sizes_mib": bench.sizes_mib,
            "export_s": bench.export_s,
            "check": f"max |onnx - torch|: embedding {embedding_diff:.1e}, low-res logits {logits_diff:.1e}",
        }


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    header = (
        f"{'family':<16} {'encoder s: torch':>16} {'torch-ref':>9} {'onnxrt':>8}   {'click ms: torch':>15} "
        f"{'torch-ref':>9} {'onnxrt':>8}   {'encoder MiB':>11} {'decoder MiB':>11} {'export s':>8}  check"
    )
    lines = [header, "-" * len(header)]
    for row in rows:
        enc, click = row["encoder_s"], row["click_ms"]
        lines.append(
            f"{row['family']:<16} {enc['torch']:>16.3f} {enc['torch-ref']:>9.3f} {enc['onnxruntime']:>8.3f}   "
            f"{click['torch']:>15.1f} {click['torch-ref']:>9.1f} {click['onnxruntime']:>8.1f}   "
            f"{row['sizes_mib'][0]:>11.1f} {row['sizes_mib'][1]:>11.1f} {row['export_s']:>8.0f}  {row['check']}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    import onnxruntime

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--families", nargs="+", default=list(FAMILIES), choices=FAMILIES)
    parser.add_argument("--runs", type=int, default=5, help="timed encoder runs per path after one warm-up")
    parser.add_argument("--clicks", type=int, default=20, help="timed clicks per path after one warm-up")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--data", help="folder holding totalseg_example/ and sam_med2d_demo/")
    parser.add_argument("--json", type=Path, help="also write the rows here (benchmarks/machine.py's record)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message=".*RANDOM.*")
    torch.set_num_threads(args.threads)
    cpu = platform.processor() or platform.machine()
    print(
        f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, python {sys.version.split()[0]}, {cpu}, "
        f"threads {args.threads}, fp32, batch 1"
    )
    device = torch.device("cpu")
    before = gemm_rates(device)
    print(f"fp32 GEMM 2048x2048: {describe_gemm(before)}; load average {load_average()}", flush=True)
    rows = []
    for family in args.families:
        rows.append(measure(family, args))
        print(format_rows(rows)[-1] if len(rows) > 1 else "\n".join(format_rows(rows)), flush=True)
    after = gemm_rates(device)
    print(f"fp32 GEMM 2048x2048 after the rows: {describe_gemm(after)}; load average {load_average()}")
    print()
    print("\n".join(format_rows(rows)))
    if args.json:
        write_record(args.json, "onnx_speed", rows, before, after, onnxruntime=onnxruntime.__version__)


if __name__ == "__main__":
    main()
