"""``zoo predict IMAGE... --model NAME_OR_PATH (--points ... | --box ... | --prompts FILE) --output-dir DIR``.

The short form of prediction: the model's own processor prepares every image and prompt (the weights choose it;
no flag has to agree with them), and the masks are written on each input's grid. The full LightningCLI form
(``zoo predict --config RECIPE ...``) stays available for configs: any ``--config``/``--model.``/``--data``/
``--trainer`` argument selects it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

PROMPTS_SCHEMA = """\
prompts file (--prompts FILE): a JSON object mapping each image to one object or a list of objects
  {
    "ct.nii.gz": {"points": [[60, 48, 15]], "labels": [1], "name": "liver"},
    "mr.nii.gz": {"points": [[-20.5, 12.0, 40.0]], "space": "world"},
    "slice.png": [{"box": [120, 80, 200, 160], "name": "kidney"}, {"points": [[300, 240]]}]
  }
  points: 3D voxel [i, j, k] (file order), or world [x, y, z] mm with "space": "world" (RAS) / "world_lps";
          2D [x, y] pixels. A point must fall on a voxel/pixel of the image.
  labels: 1 foreground, 0 background (default 1). box (2D): [x0, y0, x1, y1] pixels.
  name:   letters, digits, '.', '_', '-'; used in the mask's file name.
  Keys are image paths (relative to the JSON file) or, with IMAGE arguments, their file names.

outputs: <stem>_mask.nii.gz (uint8, the input's affine and header) or <stem>_mask.png (0/255) per object,
<stem>_<name>_mask.* for named objects; all of a run's masks appear together or not at all.
"""

LIGHTNING_MARKERS = ("--config", "--model.", "--data", "--trainer", "--ckpt_path", "--print_config", "-c")


def is_lightning_form(arguments: list[str]) -> bool:
    """Whether ``zoo predict`` was called the LightningCLI way (a recipe or dotted LightningCLI options)."""
    return any(arg == marker or arg.startswith(marker) for arg in arguments for marker in LIGHTNING_MARKERS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="zoo predict",
        description="Segment images with a promptable model; masks are written on each input's grid. "
        "The LightningCLI form for configs: zoo predict --config RECIPE [...] (zoo predict --config RECIPE --help).",
        epilog=PROMPTS_SCHEMA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("images", nargs="*", help="NIfTI volumes or 2D images (optional with --prompts)")
    parser.add_argument(
        "--model",
        required=True,
        help="a zoo model name with reachable weights (litemedsam), a Hub folder or repo id, "
        "or the authors' checkpoint file",
    )
    prompts = parser.add_argument_group("prompts (one object per image; several objects: --prompts FILE)")
    prompts.add_argument("--points", nargs="+", metavar="C1,C2[,C3]", help="points, e.g. --points 60,48,15 75,50,15")
    prompts.add_argument("--labels", nargs="+", type=int, metavar="L", help="one label per point (1 or 0)")
    prompts.add_argument("--box", nargs=4, type=float, metavar=("X0", "Y0", "X1", "Y1"), help="2D box in pixels")
    prompts.add_argument(
        "--space", default="voxel", choices=("voxel", "pixel", "world", "world_lps"), help="coordinates of --points"
    )
    prompts.add_argument("--name", help="the object's name (used in the output file name)")
    prompts.add_argument("--prompts", type=Path, help="prompts JSON file (schema below)")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for the masks")
    parser.add_argument("--overwrite", action="store_true", help="replace masks that already exist")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    return parser


def _points(values: list[str] | None) -> list[list[float]] | None:
    if values is None:
        return None
    points = []
    for value in values:
        try:
            points.append([float(part) for part in value.split(",")])
        except ValueError:
            raise argparse.ArgumentTypeError(f"a point is comma-separated numbers, e.g. 60,48,15; got {value!r}") from None
    return points


def load_model(source: str) -> Any:
    """A model with weights from a registry name, a Hub folder or repo id, a Lightning checkpoint of a zoo run
    (``.ckpt``) or the authors' checkpoint file; every file is read with the safe loader."""
    import zoo
    from zoo.hub.convert import load_converted
    from zoo.training.model_source import is_checkpoint_file

    if not is_checkpoint_file(source):
        return zoo.from_pretrained(source)
    if not Path(source).is_file():
        raise FileNotFoundError(f"{source}: file not found")
    if source.endswith(".ckpt"):
        return _from_lightning_checkpoint(source)
    return load_converted(source)


def _from_lightning_checkpoint(source: str) -> Any:
    from zoo.errors import CheckpointError
    from zoo.models.loading import load_state_dict_strictly
    from zoo.processors import attach_default_processor
    from zoo.training.checkpoint_io import checkpoint_network_state, read_lightning_checkpoint
    from zoo.training.model_source import build_model

    checkpoint = read_lightning_checkpoint(Path(source), source)
    hparams = checkpoint.get("hyper_parameters") or {}
    if not isinstance(hparams.get("model"), str):
        raise CheckpointError(source, "not a checkpoint of a zoo training run (no model name in its hyper-parameters)")
    weights = hparams.get("weights")
    net = build_model(hparams["model"], hparams.get("model_overrides"), weights if weights and not weights.endswith(
        (".pth", ".pt", ".bin", ".safetensors", ".ckpt")) else None)
    load_state_dict_strictly(net, checkpoint_network_state(checkpoint), source)
    net.weights_origin = f"zoo run checkpoint {source}"
    return attach_default_processor(net).eval()


def run(arguments: list[str]) -> int:
    """Parse the short form and predict; returns the exit status (errors propagate to ``zoo``'s handler)."""
    parser = build_parser()
    args = parser.parse_args(arguments)
    if args.prompts is None and args.points is None and args.box is None:
        parser.error("give prompts: --points, --box or --prompts FILE")
    if args.prompts is not None and (args.points is not None or args.box is not None):
        parser.error("give --prompts FILE or --points/--box, not both")
    if args.prompts is None and len(args.images) != 1:
        parser.error("--points/--box prompt one image; use --prompts FILE for several")
    try:
        points = _points(args.points)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))

    from zoo.data.predict import PromptedImagesDataModule
    from zoo.processors import processor_for
    from zoo.training.prediction import predict_masks

    model = load_model(args.model).to(args.device)
    processor = processor_for(model)
    data = PromptedImagesDataModule(
        images=[str(p) for p in args.images] or None,
        prompts=str(args.prompts) if args.prompts else None,
        points=points,
        point_labels=args.labels,
        box=list(args.box) if args.box else None,
        coordinate_space=args.space,
        object_name=args.name,
        processor=processor,
    )
    written = predict_masks(model, data, args.output_dir, overwrite=args.overwrite, processor=processor)
    from zoo.inference.predictor import weights_description

    print(f"{processor.model_name} ({type(processor).__name__}), {weights_description(model)}")
    print(f"wrote {len(written)} mask(s) to {args.output_dir}")
    for path in written:
        print(f"  {path}")
    return 0


def main(arguments: list[str] | None = None) -> int:
    return run(sys.argv[1:] if arguments is None else arguments)
