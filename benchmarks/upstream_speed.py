"""The authors' own SAM-Med3D and SAM-Med2D modules timed on this machine, for comparison with encoder_speed.py.

Point it at the ``segment_anything/modeling`` folders of local checkouts of uni-medical/SAM-Med3D and
OpenGVLab/SAM-Med2D (nothing is downloaded; the upstream code is imported from there, not copied here). It builds
the released sizes with random weights (SAM-Med3D-turbo as ``_build_sam3D_ori``; SAM-Med2D ViT-B with adapters at
256^2) and prints, with 2 threads and batch 1 in fp32: encoder median of ``--runs`` runs after one warm-up, per-click
latency on a cached embedding (prompt encoder + ``get_dense_pe`` + mask decoder, median of 50 after 3 warm-ups;
3D with a zero 32^3 mask and ``multimask_output=False`` as the authors' inference script, 2D with
``multimask_output=True`` and the highest-IoU pick as their predictor) and the fp32 GEMM rate before and after
(``--json PATH`` also writes them with the machine: ``benchmarks/machine.py``).

    python benchmarks/upstream_speed.py --sam-med3d ~/src/SAM-Med3D/segment_anything/modeling \\
        --sam-med2d ~/src/SAM-Med2D/segment_anything/modeling
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import types
from functools import partial
from pathlib import Path

import torch
from torch import nn

from encoder_speed import CLICKS
from machine import describe_gemm, gemm_rates, load_average, timed_runs, write_record

CPU = torch.device("cpu")


def load_modules(folder: Path, package: str, names: list[str]) -> list[types.ModuleType]:
    """Import ``names`` from ``folder`` as submodules of a fresh package (so their relative imports resolve)
    without running the upstream package's ``__init__`` (which pulls in training-only dependencies)."""
    root = types.ModuleType(package)
    root.__path__ = [str(folder)]
    sys.modules[package] = root
    modules = []
    for name in names:
        spec = importlib.util.spec_from_file_location(f"{package}.{name}", folder / f"{name}.py")
        if spec is None or spec.loader is None:
            raise FileNotFoundError(f"{folder / (name + '.py')} not found")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        modules.append(module)
    return modules


def encoder_kwargs(image_size: int, out_chans: int) -> dict:
    return dict(
        depth=12, embed_dim=768, img_size=image_size, mlp_ratio=4, norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=12, patch_size=16, qkv_bias=True, use_rel_pos=True, global_attn_indexes=[2, 5, 8, 11],
        window_size=14, out_chans=out_chans,
    )  # fmt: skip


def sam_med3d(folder: Path):
    encoder_module, prompt_module, decoder_module = load_modules(
        folder, "upstream_sam_med3d", ["image_encoder3D", "prompt_encoder3D", "mask_decoder3D"]
    )
    encoder = encoder_module.ImageEncoderViT3D(**encoder_kwargs(128, 384))
    prompts = prompt_module.PromptEncoder3D(
        embed_dim=384, image_embedding_size=(8, 8, 8), input_image_size=(128, 128, 128), mask_in_chans=16
    )
    decoder = decoder_module.MaskDecoder3D(
        num_multimask_outputs=3, transformer_dim=384, iou_head_depth=3, iou_head_hidden_dim=256
    )
    image = torch.randn(1, 1, 128, 128, 128)
    points = (torch.tensor([[[64.0, 64.0, 64.0]]]), torch.ones(1, 1, dtype=torch.int64))
    mask = torch.zeros(1, 1, 32, 32, 32)

    def click(embedding):
        sparse, dense = prompts(points=points, boxes=None, masks=mask)
        return decoder(
            image_embeddings=embedding, image_pe=prompts.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=False,
        )

    return encoder, image, click


def sam_med2d(folder: Path):
    encoder_module, prompt_module, decoder_module, transformer_module = load_modules(
        folder, "upstream_sam_med2d", ["image_encoder", "prompt_encoder", "mask_decoder", "transformer"]
    )
    encoder = encoder_module.ImageEncoderViT(**encoder_kwargs(256, 256), adapter_train=True)
    prompts = prompt_module.PromptEncoder(
        embed_dim=256, image_embedding_size=(16, 16), input_image_size=(256, 256), mask_in_chans=16
    )
    transformer = transformer_module.TwoWayTransformer(depth=2, embedding_dim=256, mlp_dim=2048, num_heads=8)
    decoder = decoder_module.MaskDecoder(
        num_multimask_outputs=3, transformer=transformer, transformer_dim=256, iou_head_depth=3, iou_head_hidden_dim=256
    )
    image = torch.randn(1, 3, 256, 256)
    points = (torch.tensor([[[128.0, 100.0]]]), torch.ones(1, 1, dtype=torch.int64))

    def click(embedding):
        sparse, dense = prompts(points=points, boxes=None, masks=None)
        low_res, iou = decoder(
            image_embeddings=embedding, image_pe=prompts.get_dense_pe(), sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense, multimask_output=True,
        )
        best = iou.argmax(dim=1)
        return low_res[torch.arange(low_res.shape[0]), best], iou.max(dim=1).values

    return encoder, image, click


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sam-med3d", type=Path, help="SAM-Med3D's segment_anything/modeling folder")
    parser.add_argument("--sam-med2d", type=Path, help="SAM-Med2D's segment_anything/modeling folder")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the rows here (benchmarks/machine.py's record)")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    builders = {
        "sam_med3d_turbo (authors)": (sam_med3d, args.sam_med3d),
        "sam_med2d_b (authors)": (sam_med2d, args.sam_med2d),
    }
    tunables = os.environ.get("GLIBC_TUNABLES", "")
    print(f"GLIBC_TUNABLES={tunables!r} (set it when launching, as --keep-freed-memory does)")
    before = gemm_rates(CPU)
    print(f"fp32 GEMM 2048x2048: {describe_gemm(before)}; load average {load_average()}")
    rows = []
    print(f"{'model':<26} {'encoder s':>9} {'click ms':>8}  runs s")
    for name, (build, folder) in builders.items():
        if folder is None:
            continue
        torch.manual_seed(0)
        encoder, image, click = build(folder)
        encoder.eval()
        with torch.inference_mode():
            times = timed_runs(lambda: encoder(image), args.runs, warmup=1, device=CPU)
            embedding = encoder(image)
            clicks = timed_runs(lambda: click(embedding), CLICKS, warmup=3, device=CPU)
        runs = " ".join(f"{t:.2f}" for t in times)
        median_click_ms = statistics.median(clicks) * 1e3
        print(f"{name:<26} {statistics.median(times):>9.3f} {median_click_ms:>8.1f}  [{runs}]", flush=True)
        rows.append({"model": name, "encoder_s": statistics.median(times), "runs_s": times,
                     "click_ms": median_click_ms})  # fmt: skip
    after = gemm_rates(CPU)
    print(f"fp32 GEMM 2048x2048 after: {describe_gemm(after)}; load average {load_average()}")
    if args.json:
        write_record(args.json, "upstream_speed", rows, before, after, glibc_tunables=tunables)


if __name__ == "__main__":
    main()
