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
<stem>_<name>_mask.* for named objects; an image with several objects also gets <stem>_labels.nii.gz/.png
(value k = the k-th object; where objects overlap the later one wins) and <stem>_labels.json (value -> name).
All of a run's files appear together or not at all.
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
    volumes = parser.add_argument_group("a 2D model on a NIfTI volume (slice by slice, the box propagated)")
    volumes.add_argument("--box3d", nargs=6, type=float, metavar=("I0", "J0", "K0", "I1", "J1", "K1"),
                         help="voxel indices of the file, max inclusive (a box on one slice follows the object)")
    volumes.add_argument("--plane", default="axial", choices=("axial", "coronal", "sagittal"), help="slicing plane")
    volumes.add_argument("--window", nargs=2, type=float, metavar=("LOW", "HIGH"),
                         help="intensity window, e.g. CT -160 240 (default: 0.5-99.5 percentiles)")
    more = parser.add_argument_group("large objects, sessions, automatic prompts")
    more.add_argument("--large-object", choices=("single_crop", "follow_mask"),
                      help="3D: the authors' single crop (default) or further crops that follow the mask")
    more.add_argument("--max-crops", type=int, default=8, help="follow_mask: most crops per object (default 8)")
    more.add_argument("--session", type=Path, metavar="DIR", help="add these prompts to the session saved in DIR")
    more.add_argument("--undo", action="store_true", help="with --session: remove the last prompt first")
    more.add_argument("--auto", choices=("box", "grid"),
                      help="2D models without prompts: whole image as box, or a grid of clicks (NOT a paper protocol)")
    more.add_argument("--grid-size", type=int, default=8, metavar="N", help="--auto grid: N x N clicks (default 8)")
    parser.add_argument("--output-dir", type=Path, help="folder for the masks (optional with --session)")
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
    given = [name for name in ("points", "box", "prompts", "box3d", "auto") if getattr(args, name) is not None]
    if not given and not (args.session and args.undo):
        parser.error("give prompts: --points, --box, --box3d, --prompts FILE or --auto")
    if args.prompts is not None and len(given) > 1:
        parser.error("give --prompts FILE or --points/--box/--box3d/--auto, not both")
    if args.prompts is None and len(args.images) != 1:
        parser.error("--points/--box/--box3d/--auto prompt one image; use --prompts FILE for several")
    if args.output_dir is None and args.session is None:
        parser.error("give --output-dir DIR (or --session DIR)")
    if args.undo and args.session is None:
        parser.error("--undo needs --session DIR")
    if args.session is not None and (args.prompts is not None or args.auto or args.box3d):
        parser.error("--session takes --points/--labels/--box (one image)")
    try:
        points = _points(args.points)
    except argparse.ArgumentTypeError as err:
        parser.error(str(err))

    import warnings

    from zoo.inference.large_objects import LargeObjects
    from zoo.inference.predictor import RandomWeightsWarning, weights_description
    from zoo.processors import processor_for

    model = load_model(args.model).to(args.device)
    processor = processor_for(model)
    print(f"{processor.model_name} ({type(processor).__name__}), {weights_description(model)}")
    warnings.simplefilter("ignore", RandomWeightsWarning)  # said on the line above
    large = None if args.large_object is None else LargeObjects(args.large_object, max_crops=args.max_crops)
    volume_for_2d = processor.spatial_dims == 2 and len(args.images) == 1 and _is_nifti(args.images[0])
    if args.session is not None:
        return _session(args, model, points, large)
    if volume_for_2d:
        return _volume(args, model, processor)
    if args.box3d is not None:
        parser.error(f"--box3d is for a 2D model on a NIfTI volume; {processor.model_name} takes --points")
    if args.auto is not None:
        return _auto(args, model, processor)
    from zoo.data.predict import PromptedImagesDataModule
    from zoo.inference.objects import predict_to_folder

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
    data.setup("predict")
    done = predict_to_folder(model, data.objects_by_image(), args.output_dir, args.overwrite, processor, large)
    print(f"wrote {len(done.written)} file(s) to {args.output_dir}")
    for obj in done.objects:
        how = "" if obj.strategy is None else f"  [{obj.strategy}, {obj.crops} crop(s)" + (
            "" if obj.complete else ", stopped at --max-crops: the object may be cut") + "]"
        print(f"  {obj.file}{how}")
    for path in done.label_maps:
        print(f"  {path}  (label map; where objects overlap the later one wins; table: {path.name.split('.')[0]}.json)")
    return 0


def _is_nifti(path: Path) -> bool:
    return str(path).lower().endswith((".nii", ".nii.gz"))


def _stem(path: Path) -> str:
    from zoo.data.prompt_files import image_stem

    return image_stem(Path(path))


def _volume(args: argparse.Namespace, model: Any, processor: Any) -> int:
    """A 2D model on a NIfTI volume: the 3D box (or the whole volume with --auto box) propagated slice by slice."""
    import numpy as np

    from zoo.errors import PromptError
    from zoo.data.predict import read_volume_slices
    from zoo.data.prompt_files import check_name
    from zoo.inference.auto_prompts import AUTO_NOTE
    from zoo.inference.volume2d import segment_volume_to_folder, whole_volume_box
    from zoo.io.coordinates import world_to_voxel

    image = Path(args.images[0])
    if args.box3d is None and args.auto != "box":
        raise PromptError(f"{processor.model_name} is a 2D model: give the volume a --box3d (or --auto box)",
                          str(image))
    slices = read_volume_slices(image, args.plane, tuple(args.window) if args.window else None)
    stem = _stem(image)
    if args.box3d is not None:
        box = list(args.box3d)
        if args.space in ("world", "world_lps"):
            corners = world_to_voxel(np.asarray([box[:3], box[3:]], dtype=np.float64), slices.affine, args.space)
            box = [*np.round(corners.min(axis=0)).tolist(), *np.round(corners.max(axis=0)).tolist()]
        name = f"{stem}_{args.name}_mask.nii.gz" if args.name else f"{stem}_mask.nii.gz"
    else:
        box, name = whole_volume_box(slices), f"{stem}_auto_box_mask.nii.gz"
        print(f"NOTE: {AUTO_NOTE}")
    if args.name:
        check_name(_NamedObject(args.name), "--name")
    result, written = segment_volume_to_folder(model, slices, box, args.output_dir, name, args.overwrite, processor)
    print(f"{len(result.slices)} {args.plane} slices in {result.seconds:.1f} s "
          f"({result.slices_per_second:.2f} slices/s); {result.protocol}")
    print(f"wrote {written}")
    return 0


class _NamedObject:
    """What :func:`zoo.data.prompt_files.check_name` reads of an object."""

    def __init__(self, name: str) -> None:
        self.name, self.source = name, "--name"


def _auto(args: argparse.Namespace, model: Any, processor: Any) -> int:
    from zoo.inference.auto_prompts import AUTO_NOTE, auto_to_folder

    image = Path(args.images[0])
    written = auto_to_folder(model, image, _stem(image), args.auto, args.output_dir, args.overwrite, processor,
                             args.grid_size)
    print(f"NOTE: {AUTO_NOTE}")
    print(f"wrote {len(written)} file(s) to {args.output_dir}")
    for path in written:
        print(f"  {path}")
    return 0


def _session(args: argparse.Namespace, model: Any, points: list[list[float]] | None, large: Any) -> int:
    """Add clicks (and a box) to the session in --session DIR, or start one there; write its mask."""
    import torch

    from zoo.errors import PromptError
    from zoo.inference.session import Session
    from zoo.io.masks import MaskSet
    from zoo.io.session_files import is_session_folder

    image = Path(args.images[0])
    if is_session_folder(args.session):
        session = Session.open(args.session, model, image, large_object=large)
        print(f"reopened the session in {args.session} ({len(session.actions)} prompt(s) so far, none encoded again)")
    else:
        session = Session(model, image, large_object=large)
    result = session.result()
    if args.undo:
        result = session.undo()
        print(f"undid the last prompt ({len(session.actions)} left)")
    if args.box is not None:
        result = session.add_box(list(args.box))
        print(f"box: {result.seconds * 1000:.0f} ms")
    labels = args.labels if args.labels is not None else [1] * len(points or [])
    if points is not None and len(labels) != len(points):
        raise PromptError(f"{len(points)} points but {len(labels)} labels", "--labels")
    for point, label in zip(points or [], labels):
        result = session.add_click(point, bool(label), "voxel" if args.space == "pixel" else args.space)
        print(f"click {len(session.actions)} ({'positive' if label else 'negative'}): {result.seconds * 1000:.0f} ms")
    saved = session.save(args.session)
    if result.strategy is not None:
        print(f"large objects: {result.strategy}, {len(result.crops)} crop(s)")
    print(f"session saved: {saved.parent} ({len(session.actions)} prompt(s))")
    if args.output_dir is not None:
        name = f"{_stem(image)}_{args.name}_mask" if args.name else f"{_stem(image)}_mask"
        name += ".nii.gz" if _is_nifti(image) else ".png"
        files = MaskSet(args.output_dir, args.overwrite)
        files.check_targets([name])
        with files:
            files.add(name, result.mask.to(torch.uint8).cpu().numpy(), image)
        print(f"wrote {files.written[0]}")
    return 0


def main(arguments: list[str] | None = None) -> int:
    return run(sys.argv[1:] if arguments is None else arguments)
