"""Speed of the inference workflows on the bundled CT: one large organ across SAM-Med3D crops, clicks inside a
session, and a 2D model slice by slice through the volume.

Rows (one process, ``--threads`` CPU threads, fp32), with the machine's fp32 GEMM rate (2048 x 2048) measured before
and after them and the load average, since other processes on the cores slow every number here (``--json PATH``
writes them with the machine: ``benchmarks/machine.py``):

* ``large organ``: the liver (label 5 of ``data/totalseg_example/labels.nii.gz``, 195 mm wide: more than one
  192 mm crop) with ``large_object="follow_mask"``, end to end (each crop's resampling and z-normalisation, the
  full-size SAM-Med3D encoder and decoder, the Gaussian merge and the paste-back). Without ``--weights-3d`` the
  network has random weights, so the decoder's logits are replaced by the label's (resampled into each crop like
  the image, 4x4x4-averaged to the low-res grid): the crops then follow a real organ and the Dice with the label
  checks the crops and the merge, not a model. The encoder and decoder still run at full size on the real crops.
* ``session click``: median latency of 5 clicks inside the crop of a session (cached embedding: prompt encoder,
  mask decoder, the way back to the original grid), SAM-Med3D full size on the CT and the released LiteMedSAM on
  a bundled PNG (a box, then 4 clicks); the first prompt (which encodes) is given apart. The image encoder is
  counted: it must run once per session. SAM-Med3D again on the CT resampled onto a 512 x 512 x 200 grid, where
  pasting each click's mask back onto the original grid covers millions of voxels (random weights: the mask
  voxels are printed, since the paste-back's cost grows with the mask's extent).
* ``2D on 3D``: the released LiteMedSAM through the liver's 30 axial slices from its 3D box (MedSAM's window
  -160..240 HU), slices per second and Dice with the label.

    python benchmarks/inference_workflows.py                 # all rows (minutes on 2 CPU cores)
    python benchmarks/inference_workflows.py --rows session  # one group
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe_gemm, gemm_rates, load_average, write_record  # noqa: E402

import zoo  # noqa: E402
from zoo.data.predict import read_volume_slices  # noqa: E402
from zoo.geometry.grid3d import CropWindow, resample  # noqa: E402
from zoo.inference import LargeObjects, Predictor, Session, segment_volume  # noqa: E402
from zoo.inference.large_objects import crop_start  # noqa: E402
from zoo.inference.predictor import RandomWeightsWarning  # noqa: E402
from zoo.io.nifti import load_label, load_stored  # noqa: E402
from zoo.io.png import read_image  # noqa: E402
from zoo.processors.volume3d import plan_for  # noqa: E402
from zoo.resources import data_path  # noqa: E402

CT = data_path("totalseg_example", "ct.nii.gz")
LABELS = data_path("totalseg_example", "labels.nii.gz")
PNG = data_path("sam_med2d_demo", "images", "amos_0004_75.png")
LIVER = 5


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float((a & b).sum()) / float(a.sum() + b.sum())


def liver() -> tuple[np.ndarray, list[int], list[float]]:
    labels = load_label(LABELS).array == LIVER
    found = np.nonzero(labels)
    box = [int(i.min()) for i in found] + [int(i.max()) for i in found]
    centre = [float(np.median(i)) for i in found]
    return labels, box, centre


class EncoderCounter:
    def __init__(self, module: torch.nn.Module) -> None:
        self.calls, self.seconds = 0, 0.0
        module.register_forward_pre_hook(self._start)
        module.register_forward_hook(self._stop)

    def _start(self, *_: object) -> None:
        self._t = time.perf_counter()

    def _stop(self, *_: object) -> None:
        self.calls += 1
        self.seconds += time.perf_counter() - self._t


def large_organ(args: argparse.Namespace) -> list[tuple[str, str]]:
    model = zoo.from_pretrained(args.weights_3d) if args.weights_3d else zoo.create_model("sam_med3d_turbo")
    predictor = Predictor(model, large_object=LargeObjects("follow_mask", max_crops=args.max_crops))
    processor = predictor.processor
    volume = load_stored(CT)
    labels, _, centre = liver()
    plan = plan_for(volume, processor.config.target_spacing_mm, processor.config.max_resampled_bytes)
    stand_in = not args.weights_3d
    label_values = labels.astype(np.uint8)

    def label_logits(frame: zoo.processors.ImageFrame) -> torch.Tensor:
        window = CropWindow(crop_start(frame), processor.input_shape, plan.canonical.shape)
        crop = torch.from_numpy(resample(label_values, plan, "nearest", window).astype(np.float32))
        return (F.avg_pool3d(crop[None, None], 4) - 0.5) * 20.0

    decode = model.decode
    current: dict = {}

    def decoder(encoding, *a, **k):
        out = decode(encoding, *a, **k)  # the real decoder runs (its cost is counted)
        if stand_in:
            out.low_res_logits = label_logits(current.get("frame") or predictor.frame)
        return out

    model.decode = decoder  # type: ignore[method-assign]
    segment_crop = predictor.segment_crop

    def run_crop(frame, prompts):
        current["frame"] = frame
        return segment_crop(frame, prompts)

    predictor.segment_crop = run_crop  # type: ignore[method-assign]
    counter = EncoderCounter(model.image_encoder)
    started = time.perf_counter()
    predictor.set_image(volume, str(CT))
    result = predictor.predict(point_coords=[centre], point_labels=[1])
    total = time.perf_counter() - started
    mask = result.masks[0].numpy()
    kind = "stand-in logits from the label" if stand_in else f"weights {args.weights_3d}"
    rows = [
        ("large organ: liver, SAM-Med3D follow_mask, end to end", f"{total:.1f} s ({kind})"),
        ("  crops (128^3 at 1.5 mm) / complete", f"{len(result.crops)} / {result.complete}"),
        ("  image encoder: calls, seconds", f"{counter.calls}, {counter.seconds:.1f} s "
                                             f"({counter.seconds / max(1, counter.calls):.1f} s per crop)"),
        ("  everything else (resampling, decoders, merge, paste-back)", f"{total - counter.seconds:.1f} s"),
        ("  Dice with the liver label", f"{dice(mask, labels):.4f}"),
    ]
    first_frame = predictor.crop_cache[result.crops[0]][0]
    single = processor.to_original(result.low_res_logits[:, None], first_frame).mask.numpy()
    rows.append(("  Dice of the single crop (the authors')", f"{dice(single, labels):.4f}"))
    return rows


def session_clicks(args: argparse.Namespace) -> list[tuple[str, str]]:
    rows = []
    labels, _, centre = liver()
    torch.manual_seed(0)  # random weights: the same masks, so the same paste-back work, from run to run
    model = zoo.from_pretrained(args.weights_3d) if args.weights_3d else zoo.create_model("sam_med3d_turbo")
    counter = EncoderCounter(model.image_encoder)
    session = Session(model, CT)
    first = session.add_click(centre)
    offsets = [(3, 0, 0), (0, 4, 0), (-3, 2, 1), (2, -3, -1), (0, 0, 2)]
    clicks = [session.add_click(np.add(centre, o).tolist(), positive=i % 2 == 0).seconds for i, o in enumerate(offsets)]
    assert counter.calls == 1, f"the encoder ran {counter.calls} times in one crop"
    rows.append(("session click, SAM-Med3D full size (CT): first click (encodes)", f"{first.seconds * 1000:.0f} ms"))
    rows.append(("  5 clicks inside the crop, median [min..max]", _spread(clicks)))
    with tempfile.TemporaryDirectory() as folder:
        path, scale = scanner_grid_ct(Path(folder))
        session = Session(model, path)
        grid_centre = [(c + 0.5) / s - 0.5 for c, s in zip(centre, scale)]
        session.add_click(grid_centre)
        clicks = [session.add_click(np.add(grid_centre, np.multiply(o, 4)).tolist(), positive=i % 2 == 0).seconds
                  for i, o in enumerate(offsets)]
        voxels = int(session.result().mask.sum())
    rows.append((f"  the same on a {'x'.join(map(str, SCANNER_GRID))} grid (the CT resampled): 5 clicks",
                 f"{_spread(clicks)}, {voxels} mask voxels"))
    model = zoo.from_pretrained("litemedsam")
    counter = EncoderCounter(model.image_encoder)
    started = time.perf_counter()
    session = Session(model, read_image(PNG))
    encode = time.perf_counter() - started
    box = session.add_box([150, 230, 230, 300]).seconds
    clicks = [session.add_click(p, positive=i != 1).seconds
              for i, p in enumerate([[190, 265], [170, 250], [200, 280], [185, 240]])]
    assert counter.calls == 1
    rows.append(("session click, LiteMedSAM released (PNG 512^2): encoding", f"{encode * 1000:.0f} ms"))
    rows.append(("  box, then 4 clicks: median [min..max]", f"{box * 1000:.0f} ms, {_spread(clicks)}"))
    return rows


def volume_2d(args: argparse.Namespace) -> list[tuple[str, str]]:
    labels, box, _ = liver()
    model = zoo.from_pretrained("litemedsam")
    started = time.perf_counter()
    slices = read_volume_slices(CT, "axial", window=(-160, 240))
    result = segment_volume(model, slices, box)
    total = time.perf_counter() - started
    return [
        ("2D on 3D: LiteMedSAM released, liver, axial", f"{len(result.slices)} slices in {result.seconds:.1f} s"),
        ("  slices per second (propagation) / end to end", f"{result.slices_per_second:.2f} / "
                                                          f"{len(result.slices) / total:.2f}"),
        ("  Dice with the liver label", f"{dice(result.mask, labels):.4f}"),
    ]


SCANNER_GRID = (512, 512, 200)


def scanner_grid_ct(folder: Path) -> tuple[Path, list[float]]:
    """The bundled CT trilinearly resampled onto a scanner-sized grid (same field of view) and written to
    ``folder``: a click's way back to the original grid then covers millions of voxels, as on a clinical CT.
    Returns the file and the ratio of the old to the new voxel size per axis."""
    volume = load_stored(CT)
    scale = [old / new for old, new in zip(volume.shape, SCANNER_GRID)]
    values = F.interpolate(torch.from_numpy(volume.array.astype(np.float32))[None, None], size=SCANNER_GRID,
                           mode="trilinear", align_corners=False)[0, 0].round().to(torch.int16).numpy()
    affine = volume.affine.copy()
    affine[:3, 3] = affine[:3, 3] + affine[:3, :3] @ (0.5 * np.array(scale) - 0.5)
    affine[:3, :3] = affine[:3, :3] @ np.diag(scale)
    path = folder / "ct_scanner_grid.nii"
    nib.save(nib.Nifti1Image(values, affine), path)
    return path, scale


def _spread(seconds: list[float]) -> str:
    ms = [s * 1000 for s in seconds]
    return f"{statistics.median(ms):.0f} ms [{min(ms):.0f}..{max(ms):.0f}]"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--rows", nargs="+", default=["large", "session", "volume2d"],
                        choices=["large", "session", "volume2d"])
    parser.add_argument("--weights-3d", help="a converted SAM-Med3D folder (default: random weights)")
    parser.add_argument("--max-crops", type=int, default=8)
    parser.add_argument("--json", type=Path, help="also write the rows here (benchmarks/machine.py's record)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    warnings.simplefilter("ignore", RandomWeightsWarning)
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {args.threads} thread(s), load average {load_average()}")
    before = gemm_rates(device)
    print(f"fp32 GEMM 2048x2048: {describe_gemm(before)}")
    rows: list[tuple[str, str]] = []
    with torch.inference_mode():
        if "large" in args.rows:
            rows += large_organ(args)
        if "session" in args.rows:
            rows += session_clicks(args)
        if "volume2d" in args.rows:
            rows += volume_2d(args)
    width = max(len(name) for name, _ in rows)
    print(f"\n| {'measurement'.ljust(width)} | value |\n|{'-' * (width + 2)}|-------|")
    for name, value in rows:
        print(f"| {name.ljust(width)} | {value} |")
    after = gemm_rates(device)
    print(f"\nfp32 GEMM 2048x2048 after the rows: {describe_gemm(after)}; load average {load_average()}")
    if args.json:
        measured = [{"measurement": name, "value": value} for name, value in rows]
        write_record(args.json, "inference_workflows", measured, before, after)


if __name__ == "__main__":
    main()
