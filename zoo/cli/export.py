"""``zoo export onnx MODEL OUT_DIR``: a model's image-encoder and prompt-decoder graphs plus its processor config."""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "export",
        help="export a model for deployment: zoo export onnx MODEL OUT_DIR",
        description="Export a model for deployment without PyTorch.",
    )
    formats = parser.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx = formats.add_parser(
        "onnx",
        help="image_encoder.onnx, prompt_decoder.onnx and processor_config.json (zoo.deploy.OnnxPredictor reads them)",
        description="Write image_encoder.onnx (once per image), prompt_decoder.onnx (per click) and "
        "processor_config.json into OUT_DIR; zoo.deploy.OnnxPredictor runs them on ONNX Runtime without PyTorch.",
    )
    onnx.add_argument(
        "model",
        help="a zoo model name with reachable weights (litemedsam), a Hub folder or repo id, a zoo run's .ckpt, "
        "or the authors' checkpoint file (as zoo predict --model)",
    )
    onnx.add_argument("out_dir", type=Path, help="output folder (created if missing)")
    onnx.add_argument("--overwrite", action="store_true", help="replace graphs already in OUT_DIR")
    onnx.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    """Load the model as ``zoo predict --model`` does and export it; expected errors reach ``zoo``'s handler."""
    from zoo.cli.predict import load_model
    from zoo.deploy.onnx_export import export_onnx
    from zoo.inference.predictor import weights_description

    model = load_model(args.model)
    written = export_onnx(model, args.out_dir, overwrite=args.overwrite)
    print(f"{type(model).__name__} ({model.family}), {weights_description(model)}")
    for path in written.files:
        print(f"  {path} ({path.stat().st_size / 2**20:.1f} MiB)")
    return 0
