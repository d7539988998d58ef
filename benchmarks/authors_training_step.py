"""Our full-size training step against the authors' own training step, per family, on the same batch and machine.

Point it at local checkouts of uni-medical/SAM-Med3D, OpenGVLab/SAM-Med2D and Hhankyangg/sam-unet (nothing is
downloaded; the authors' code is imported from there at run time, never copied here; the imports their training
scripts make for data loading, plotting or AMP that a training step does not use are stubbed if not installed).
Each family runs in fresh processes, CPU, fp32, ``--threads`` threads:

* ours: the paper recipe's module through the zoo CLI parser, exactly as ``benchmarks/training_step.py`` builds it
  (``recipes/<family>/paper.yaml``, the bundled real data, one image or crop per batch), timed as its
  ``training_step`` + ``backward`` + optimiser step (SAM-Med2D: the module's own per-pass backward and steps);
* theirs: the authors' model from their own builder at the released size, their loss, their interactive loop,
  their backward and optimiser steps, fed the same batch (the tensors our DataModule made; their data loaders are
  not run):

  - ``sam_med3d``: ``train.py``'s ``BaseTrainer`` (``set_loss_fn``, ``set_optimizer``, ``interaction`` with its
    ``get_points`` / ``batch_forward`` / ``get_next_click3D_torch_2``) for 11 prompt iterations on one 128^3 crop;
    what ``train_epoch`` does around it for one micro-batch (image encoder, ``interaction``, ``backward``) and then
    one optimiser step and ``zero_grad`` (``train_epoch`` steps only every 20 micro-batches, under CUDA AMP);
  - ``sam_med2d``: ``train.py``'s ``train_one_epoch`` on a one-batch loader (``prompt_and_decoder``,
    ``generate_point``, ``setting_prompt_none``, ``FocalDiceloss_IoULoss``, Adam at 1e-4: 9 passes, a step after
    each) on one 256^2 image with 5 masks; the first prompt's box and point (their DataLoader's job) come from our
    samplers, with their jitter rule;
  - ``sam_unet``: ``train_on_single_gpu.py``'s ``train_one_epoch`` on a one-batch loader (``train_forward``,
    ``FocalDiceloss`` as focal + 20 dice, Adam at 1e-4) on one 256^2 image with 5 boxes.

SAM-Med2D's ``optimizer.zero_grad()`` after each pass means zero gradients under the authors' torch 1.13 and None
under torch >= 2.0 (installed here). Their side gets the semantics our module runs with: the recipe's
``train_prompts.zero_grad: zeros`` (as the authors ran it: Adam also moves the encoder adapters, 180M parameters at
full size, in the 8 decoder-only passes) makes their optimiser's ``zero_grad`` keep zeros too; with
``--ours-override=--model.train_prompts.zero_grad=none`` both sides set None (Adam skips those parameters). The
table's ``zero_grad`` column says which ran.

Both sides start from the same weights: the authors' model is built (seeded random initialisation, every tensor
then perturbed slightly so that no two parameters are equal), and its state dict is loaded into ours through our
converter for the authors' checkpoints (``zoo.hub.load_official_state_dict``).

Timing: one warm-up step each, then ``--steps`` timed steps each, interleaved (ours, theirs, ours, theirs, ...)
since these machines switch between fast and slow phases; medians and the ratio theirs / ours, and the median
process CPU time per step of each side (on a shared machine wall time inflates; CPU time / threads is the
uncontended wall time at best). The fp32 GEMM rate
(2048^2 matmul, ``machine.gemm_rate``) and the load average are printed before and after each family.

Peak memory: each side's peak resident set size (``ru_maxrss``) in a process of its own that builds only that side
and runs two steps on the batch the timing process saved, and the same peak just before the first step (after
building; the table's number in brackets), so the steps' own peak is at least the difference. It is process
memory: Python, torch, the model and the optimiser state included. The authors' SAM-Med3D ``train.py`` casts the
label to long, which the MONAI installed here refuses in ``DiceCELoss`` (older MONAI squared it as it is): their
side gets the same 0/1 label as float.

Equality check (``--check``, on by default) on a tiny config of each family (small ViTs; SAM-UNet at 64^2 with a
full ResNet-34), same weights both sides, one step 0 on the same real batch at the tiny size: the loss value
(SAM-Med3D: the sum over the 11 passes; SAM-Med2D and SAM-UNet: the first pass, the one before the first optimiser
step) and the gradient of every parameter that trains on our side, at the first optimiser step. Our side runs
every linear product, of any size, through the kernels this machine gives large ones (oneDNN's forward and
backward products where MKL lags oneDNN), so that the tiny sizes check what the full-size step
computes. PASS needs
``|loss_ours - loss_theirs| <= 1e-4`` and, per parameter, ``max|g_ours - g_theirs| / max|g_theirs| <= 1e-3``.
The random prompt draws are made identical by replacing both sides' random number sources with one
deterministic rule (not by seeding): every "pick one of n candidates" draw picks index ``floor((i + 0.5) / k * n)``
for the i-th of k draws (candidates in raster order, which both sides use), so both sides click the same
voxels/pixels; SAM-Med3D's and SAM-Med2D's mask-only pass, and SAM-Med2D's number of points per pass, are fixed to
the middle of their ranges on both sides, and SAM-Med2D's first prompt is a point on both sides (SAM-UNet's boxes
are unjittered on both sides). The losses of every pass are printed too. Gradients the authors' code leaves as
zeros where ours leaves None (outputs computed but unused) count as zeros; a gradient below 1e-6 of the largest
(analytically zero, e.g. an attention key bias) is compared against the largest gradient instead of itself.

    python benchmarks/authors_training_step.py --sam-med3d ~/src/SAM-Med3D --sam-med2d ~/src/SAM-Med2D \\
        --sam-unet ~/src/sam-unet --json /tmp/authors_training.json
    python benchmarks/authors_training_step.py --families sam_unet --sam-unet ~/src/sam-unet --steps 5 --no-check
    python benchmarks/authors_training_step.py --families sam_med2d --sam-med2d ~/src/SAM-Med2D \
        --ours-override=--model.train_prompts.zero_grad=none   # both sides: torch >= 2.0's zero_grad
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Callable

FAMILIES = ("sam_med3d", "sam_med2d", "sam_unet")
CHECKOUT_OPTIONS = {"sam_med3d": "sam_med3d", "sam_med2d": "sam_med2d", "sam_unet": "sam_unet"}
LOSS_TOLERANCE = 1e-4
GRADIENT_TOLERANCE = 1e-3
OURS_OVERRIDES: list[str] = []  # --ours-override: extra zoo CLI overrides of our recipe (full size only)
NOISE_FLOOR = 1e-6  # of the largest gradient: below it a gradient is rounding noise (see check_family)
MIDDLE_MASK_ONLY_3D = 5  # SAM-Med3D: np.random.randint(2, 9) -> 5 under the deterministic rule
POINTS_PER_PASS_2D = 5  # SAM-Med2D: one fixed entry of point_list [1, 3, 5, 9] on both sides in the check
TINY_OVERRIDES = {
    "sam_med3d": dict(
        image_size=32, patch_size=16, embed_dim=24, depth=2, num_heads=2, window_size=3, global_attn_indexes=[1],
        prompt_embed_dim=24, decoder_num_heads=2, decoder_mlp_dim=32, iou_head_hidden_dim=16,
    ),
    "sam_med2d": dict(
        image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=3, global_attn_indexes=[1],
        prompt_embed_dim=32, decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32,
    ),
    "sam_unet": dict(image_size=64, embed_dim=32, depth=12, num_heads=2),
}  # fmt: skip


# ----------------------------------------------------------------------------------------- importing theirs
class _Stub(types.ModuleType):
    """A stand-in for a module a training script imports but a training step does not use."""

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {"__init__": lambda self, *a, **k: None, "__call__": lambda self, *a, **k: None})


def stub_missing(names: list[str]) -> list[str]:
    """Register a stub for each of ``names`` that cannot be imported; returns the stubbed names."""
    stubbed = []
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError:
            parts = name.split(".")
            for depth in range(1, len(parts) + 1):
                partial_name = ".".join(parts[:depth])
                if partial_name not in sys.modules or isinstance(sys.modules[partial_name], _Stub):
                    module = _Stub(partial_name)
                    module.__path__ = []
                    sys.modules[partial_name] = module
                    if depth > 1:
                        setattr(sys.modules[".".join(parts[: depth - 1])], parts[depth - 1], module)
            stubbed.append(name)
    return stubbed


def import_from(checkout: Path, module: str, argv: list[str] | None = None) -> types.ModuleType:
    """Import ``module`` with ``checkout`` first on ``sys.path`` (``sys.argv`` set to ``argv`` meanwhile, for
    scripts that parse their arguments at import time)."""
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    saved = sys.argv
    sys.argv = [module, *(argv or [])]
    try:
        return importlib.import_module(module)
    finally:
        sys.argv = saved


# ------------------------------------------------------------------------------------ deterministic draws
def pick(n: int, i: int = 0, k: int = 1) -> int:
    """The deterministic rule: the i-th of k draws among n candidates."""
    return min(int(math.floor((i + 0.5) / k * n)), n - 1)


class _DeterministicRandom:
    """``numpy.random`` with ``randint`` and ``choice`` replaced by the deterministic rule (the rest forwarded)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def randint(self, low: int, high: int | None = None, size: Any = None) -> Any:
        import numpy as np

        if high is None:
            low, high = 0, low
        if size is None:
            return low + pick(high - low)
        count = int(np.prod(size))
        return np.array([low + pick(high - low, i, count) for i in range(count)]).reshape(size)

    def choice(self, a: Any, size: int | None = None, replace: bool = True) -> Any:
        import numpy as np

        n = a if isinstance(a, int) else len(a)
        items = np.arange(n) if isinstance(a, int) else np.asarray(a)
        if size is None:
            return items[pick(n)]
        return items[[pick(n, i, size) for i in range(size)]]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


class _DeterministicNumpy(types.ModuleType):
    def __init__(self) -> None:
        import numpy as np

        super().__init__("numpy")
        self._np = np
        self.random = _DeterministicRandom(np.random)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._np, name)


@contextlib.contextmanager
def patched(*replacements: tuple[Any, str, Any]):
    """Set ``obj.name = value`` for each triple, restoring the originals afterwards."""
    saved = [(obj, name, getattr(obj, name)) for obj, name, _ in replacements]
    try:
        for obj, name, value in replacements:
            setattr(obj, name, value)
        yield
    finally:
        for obj, name, value in saved:
            setattr(obj, name, value)


def deterministic_uniform(shape: tuple[int, ...], generator: Any, device: Any) -> Any:
    """Our samplers' uniform draws (``zoo.prompts.simulate._uniform``) under the same rule: draw i of k is
    ``(i + 0.5) / k``, so ``floor(u * n)`` is the index ``pick`` gives."""
    import torch

    k = shape[-1]
    row = (torch.arange(k, dtype=torch.float64) + 0.5) / k
    return row.expand(shape).clone().to(device)


# ----------------------------------------------------------------------------------------------- our side
def build_ours(family: str, data_root: Path, tiny: bool, iterations_3d: int) -> tuple[Any, Any, dict[str, Any]]:
    """Our recipe module, its optimiser and one batch of the bundled data (as benchmarks/training_step.py)."""
    from training_step import build_recipe_step

    extra = [f"--model.model_overrides={json.dumps(TINY_OVERRIDES[family])}"] if tiny else list(OURS_OVERRIDES)
    return build_recipe_step(family, data_root, iterations_3d, extra)


def our_step(module: Any, optimizer: Any, batch: dict[str, Any]) -> None:
    from training_step import train_step

    train_step(module, optimizer, batch)


# --------------------------------------------------------------------------------------------- their side
@dataclasses.dataclass
class Theirs:
    model: Any
    optimizer: Any
    step: Callable[[], None]
    losses: list[float] = dataclasses.field(default_factory=list)  # the loss of each pass, recorded for the check
    totals: list[float] = dataclasses.field(default_factory=list)  # SAM-Med3D: the summed loss of each step
    deterministic: Callable[[], Any] = contextlib.nullcontext  # a context making their draws deterministic
    stubbed: list[str] = dataclasses.field(default_factory=list)


def theirs_sam_med3d(checkout: Path, batch: dict[str, Any], tiny: bool, iterations: int, work: Path) -> Theirs:
    import torch

    stubbed = stub_missing(["edt", "prefetch_generator", "SimpleITK", "matplotlib.pyplot", "torchio.data.io"])
    size = TINY_OVERRIDES["sam_med3d"]["image_size"] if tiny else 128
    train = import_from(
        checkout, "train", ["--device", "cpu", "--work_dir", str(work), "--img_size", str(size), "--gpu_ids", "0"]
    )
    click_method = sys.modules["utils.click_method"]
    if tiny:
        from functools import partial

        modeling = sys.modules["segment_anything.build_sam3D"]
        t = TINY_OVERRIDES["sam_med3d"]
        patch = t["patch_size"]
        model = modeling.Sam3D(
            image_encoder=modeling.ImageEncoderViT3D(
                depth=t["depth"], embed_dim=t["embed_dim"], img_size=size, mlp_ratio=4,
                norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=t["num_heads"], patch_size=patch,
                qkv_bias=True, use_rel_pos=True, global_attn_indexes=t["global_attn_indexes"],
                window_size=t["window_size"], out_chans=t["prompt_embed_dim"],
            ),
            prompt_encoder=modeling.PromptEncoder3D(
                embed_dim=t["prompt_embed_dim"], image_embedding_size=(size // patch,) * 3,
                input_image_size=(size,) * 3, mask_in_chans=16,
            ),
            mask_decoder=_tiny_decoder_3d(modeling.MaskDecoder3D, t),
            pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
        )  # fmt: skip
    else:
        model = train.build_model(train.args)
    model.train()
    trainer = train.BaseTrainer.__new__(train.BaseTrainer)  # its __init__ also builds data and checkpoints
    trainer.model, trainer.args = model, train.args
    trainer.set_loss_fn()
    trainer.set_optimizer()
    seg_loss = trainer.seg_loss

    def recording_loss(*inputs: Any) -> Any:
        loss = seg_loss(*inputs)
        theirs.losses.append(float(loss.detach()))
        return loss

    trainer.seg_loss = recording_loss
    # train.py casts the label to long; the MONAI installed here refuses integer targets in DiceCELoss (older MONAI
    # squared them as they are), so the same 0/1 label goes in as float: the same values and loss
    image, target = batch["image"], batch["target"].to(torch.float32)
    theirs = Theirs(model, trainer.optimizer, lambda: None, stubbed=stubbed)

    def step() -> None:
        image_embedding = model.image_encoder(image)
        trainer.click_points, trainer.click_labels = [], []
        _, loss = trainer.interaction(model, image_embedding, target, num_clicks=iterations)
        theirs.totals.append(float(loss.detach()))
        loss.backward()
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()

    theirs.step = step
    fake = _DeterministicNumpy()
    theirs.deterministic = lambda: patched((train, "np", fake), (click_method, "np", fake))
    return theirs


def _tiny_decoder_3d(decoder_class: Any, t: dict[str, Any]) -> Any:
    """SAM-Med3D's MaskDecoder3D builds its transformer with fixed heads (8) and MLP width (2048): built here with
    the tiny config's, by handing it a transformer class bound to them."""
    module = sys.modules[decoder_class.__module__]
    transformer = module.TwoWayTransformer3D

    def tiny(depth: int, embedding_dim: int, mlp_dim: int, num_heads: int) -> Any:
        return transformer(depth=depth, embedding_dim=embedding_dim, mlp_dim=t["decoder_mlp_dim"],
                           num_heads=t["decoder_num_heads"])

    with patched((module, "TwoWayTransformer3D", tiny)):
        return decoder_class(num_multimask_outputs=3, transformer_dim=t["prompt_embed_dim"], iou_head_depth=3,
                             iou_head_hidden_dim=t["iou_head_hidden_dim"])


def theirs_sam_med2d(checkout: Path, batch: dict[str, Any], first: dict[str, Any], tiny: bool,
                     zero_grad: str) -> Theirs:
    import functools

    import torch

    stubbed = stub_missing(["albumentations", "albumentations.pytorch", "skimage.measure", "apex", "matplotlib"])
    train = import_from(checkout, "train")
    upstream_utils = sys.modules["utils"]
    size = TINY_OVERRIDES["sam_med2d"]["image_size"] if tiny else 256
    args = argparse.Namespace(
        device="cpu", image_size=size, mask_num=int(batch["masks"].shape[1]), iter_point=8, point_list=[1, 3, 5, 9],
        multimask=True, use_amp=False, metrics=["iou", "dice"], encoder_adapter=True, sam_checkpoint=None,
        lr=1e-4, work_dir="workdir", run_name="benchmark",
    )  # fmt: skip
    if tiny:
        model = _tiny_sam_med2d(sys.modules["segment_anything.build_sam"], TINY_OVERRIDES["sam_med2d"])
    else:
        model = train.sam_model_registry["vit_b"](args)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    # their train.py calls zero_grad() with torch's default: zeros under their torch 1.13, None under torch >= 2.0
    optimizer.zero_grad = functools.partial(optimizer.zero_grad, set_to_none=zero_grad == "none")
    criterion = train.FocalDiceloss_IoULoss()
    theirs = Theirs(model, optimizer, lambda: None, stubbed=stubbed)

    def recording_criterion(*inputs: Any) -> Any:
        loss = criterion(*inputs)
        theirs.losses.append(float(loss.detach()))
        return loss

    def step() -> None:
        images = batch["image"]
        per_image = int(batch["masks"].shape[1])
        loader = [{
            "image": images[:, None], "label": batch["masks"].reshape(images.shape[0], per_image, 1, size, size),
            "boxes": first["boxes"].reshape(images.shape[0], per_image, 4),
            "point_coords": first["point_coords"].reshape(images.shape[0], per_image, -1, 2),
            "point_labels": first["point_labels"].reshape(images.shape[0], per_image, -1),
        }]  # fmt: skip
        with contextlib.redirect_stdout(sys.stderr):
            train.train_one_epoch(args, model, optimizer, loader, 0, recording_criterion)

    theirs.step = step
    fake = _DeterministicNumpy()

    def deterministic() -> Any:  # random.random() > 0.5 picks the box: the point here
        return patched(
            (train, "np", fake), (upstream_utils, "np", fake), (args, "point_list", [POINTS_PER_PASS_2D]),
            (train.random, "random", lambda: 0.0),
        )  # fmt: skip

    theirs.deterministic = deterministic
    return theirs


def _tiny_sam_med2d(build: types.ModuleType, t: dict[str, Any]) -> Any:
    from functools import partial

    import torch

    size, patch, dim = t["image_size"], t["patch_size"], t["prompt_embed_dim"]
    return build.Sam(
        image_encoder=build.ImageEncoderViT(
            depth=t["depth"], embed_dim=t["embed_dim"], img_size=size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=t["num_heads"], patch_size=patch,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=t["global_attn_indexes"],
            window_size=t["window_size"], out_chans=dim, adapter_train=True,
        ),
        prompt_encoder=build.PromptEncoder(
            embed_dim=dim, image_embedding_size=(size // patch, size // patch), input_image_size=(size, size),
            mask_in_chans=16,
        ),
        mask_decoder=build.MaskDecoder(
            num_multimask_outputs=3,
            transformer=build.TwoWayTransformer(
                depth=2, embedding_dim=dim, mlp_dim=t["decoder_mlp_dim"], num_heads=t["decoder_num_heads"]
            ),
            transformer_dim=dim, iou_head_depth=3, iou_head_hidden_dim=t["iou_head_hidden_dim"],
        ),
        pixel_mean=[123.675, 116.28, 103.53], pixel_std=[58.395, 57.12, 57.375],
    )  # fmt: skip


def their_inputs(family: str, module: Any, batch: dict[str, Any], deterministic: bool) -> dict[str, Any]:
    """What the authors' data loaders hand their training step besides image and masks, made once per batch by our
    samplers and put into the network's prompt format by our processor (the authors' format): SAM-Med2D's first
    prompts (a box with their jitter and one foreground point per mask; their step picks one of the two), SAM-UNet's
    boxes (their jitter; unjittered in the check)."""
    import torch

    from zoo.prompts.simulate import first_click_random_foreground
    from zoo.prompts.types import Prompts

    if family == "sam_med3d":
        return {}
    _, target, image_index, _ = module._unpack(batch)
    target = target[:, 0]
    frames, masks = module._originals(batch, image_index) or (None, None)
    generator = torch.Generator().manual_seed(0)
    jitter = "none" if deterministic and family == "sam_unet" else "sam_med2d"
    boxes = module.processor.target_boxes(target, jitter, generator, frames, masks)
    inputs = {"boxes": module.processor.model_kwargs(Prompts(boxes=boxes))["boxes"]}
    if family == "sam_med2d":
        points = first_click_random_foreground(target, generator)
        inputs["point_coords"], inputs["point_labels"] = module.processor.model_kwargs(Prompts(points=points))["points"]
    return inputs


def theirs_sam_unet(checkout: Path, batch: dict[str, Any], inputs: dict[str, Any], tiny: bool) -> Theirs:
    import torch

    stubbed = stub_missing(["skimage.measure", "matplotlib"])
    if str(checkout) not in sys.path:
        sys.path.insert(0, str(checkout))
    config = importlib.import_module("sam_unet.config").config_dict
    t = TINY_OVERRIDES["sam_unet"]
    size = t["image_size"] if tiny else 256
    config["img_size"] = size  # read at import time by their model and preprocessing
    sam_build = importlib.import_module("sam_unet.models.segment_anything.build_sam")
    if tiny:
        _tiny_sam_registry(sam_build, t)
    train = import_from(checkout, "sam_unet.train_on_single_gpu")
    builder = importlib.import_module("sam_unet.models.build_sam_unet")
    model = builder.sam_unet_registry["res34_sam_unet"](False, None)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    criterion = train.FocalDiceloss()
    theirs = Theirs(model, optimizer, lambda: None, stubbed=stubbed)
    args = argparse.Namespace(device="cpu", metrics=["iou", "dice"])
    mean = torch.tensor(config["pixel_mean"]).view(1, 3, 1, 1)
    std = torch.tensor(config["pixel_std"]).view(1, 3, 1, 1)

    def recording_criterion(*inputs: Any) -> Any:
        focal, dice = criterion(*inputs)
        theirs.losses.append(float(focal.detach() + 20 * dice.detach()))  # their loop's loss: focal + 20 * dice
        return focal, dice

    class _Quiet:
        def info(self, *args: Any, **kwargs: Any) -> None:
            pass

    def step() -> None:
        target, boxes = batch["masks"].reshape(-1, 1, size, size), inputs["boxes"]
        raw = batch["image"] * std + mean  # their train_forward normalises the image itself
        per_image = int(batch["masks"].shape[1])
        records = [{
            "image": raw[i], "labels": target[i * per_image:(i + 1) * per_image].float(),
            "boxes": boxes[i * per_image:(i + 1) * per_image], "original_size": (size, size),
        } for i in range(raw.shape[0])]  # fmt: skip
        with contextlib.redirect_stdout(sys.stderr):
            train.train_one_epoch(args, model, optimizer, [records], 0, recording_criterion, _Quiet())

    theirs.step = step
    return theirs


def _tiny_sam_registry(sam_build: types.ModuleType, t: dict[str, Any]) -> None:
    """SAM-UNet's ViT comes from its registry entry ``vit_b_256`` (ViT-B; the model's default argument looks up
    ``vit_b_<img_size>``); the tiny config registers a small ViT under both names."""

    def tiny(checkpoint: Any = None) -> Any:
        return sam_build._build_sam(
            encoder_embed_dim=t["embed_dim"], encoder_depth=t["depth"], encoder_num_heads=t["num_heads"],
            encoder_global_attn_indexes=[2, 5, 8, 11], checkpoint=checkpoint, image_size=t["image_size"],
            window_size=14,
        )  # fmt: skip

    sam_build.sam_model_registry["vit_b_256"] = tiny
    sam_build.sam_model_registry[f"vit_b_{t['image_size']}"] = tiny


def build_theirs(family: str, checkout: Path, batch: dict[str, Any], inputs: dict[str, Any], tiny: bool,
                 iterations_3d: int, work: Path, zero_grad: str = "none") -> Theirs:
    """The authors' side; ``zero_grad`` ("none" or "zeros", SAM-Med2D only): what their per-pass ``zero_grad()``
    leaves, set to what our module does."""
    if family == "sam_med3d":
        return theirs_sam_med3d(checkout, batch, tiny, iterations_3d, work)
    if family == "sam_med2d":
        return theirs_sam_med2d(checkout, batch, inputs, tiny, zero_grad)
    return theirs_sam_unet(checkout, batch, inputs, tiny)


# ----------------------------------------------------------------------------------- same weights, same draws
def share_weights(theirs: Theirs, net: Any, seed: int = 0) -> None:
    """Perturb the authors' freshly built weights (so no two parameters are equal; zero-initialised tables and
    ones in norms become distinct) and load them into ours through our converter of the authors' checkpoints."""
    import torch

    from zoo.hub.loading import load_official_state_dict

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in theirs.model.parameters():
            parameter.add_(0.01 * torch.randn(parameter.shape, generator=generator, dtype=parameter.dtype))
    load_official_state_dict(net, theirs.model.state_dict(), "the authors' model (random weights)")


def name_map(net: Any, model: Any) -> dict[str, str | None]:
    """Each of our trainable parameters -> the authors' parameter holding the same values (None: no unique one)."""
    import torch

    index: dict[tuple, list[tuple[str, Any]]] = {}
    for name, parameter in model.named_parameters():
        key = (tuple(parameter.shape), float(parameter.detach().double().sum()))
        index.setdefault(key, []).append((name, parameter))
    mapping: dict[str, str | None] = {}
    for name, parameter in net.named_parameters():
        if parameter.requires_grad:
            key = (tuple(parameter.shape), float(parameter.detach().double().sum()))
            same = [other for other, candidate in index.get(key, []) if torch.equal(candidate, parameter)]
            mapping[name] = same[0] if len(same) == 1 else None
    return mapping


def capture_first_step(optimizer: Any, named: Callable[[], Any]) -> dict[str, Any]:
    """Record every parameter's gradient when ``optimizer.step`` is first called (the step-0 gradients)."""
    captured: dict[str, Any] = {}
    original = optimizer.step

    def step(*args: Any, **kwargs: Any) -> Any:
        if not captured:
            captured.update({n: None if p.grad is None else p.grad.detach().clone() for n, p in named()})
        return original(*args, **kwargs)

    optimizer.step = step
    return captured


def our_deterministic(family: str, module: Any) -> Any:
    """Our side under the same deterministic draws as theirs (see the module docstring)."""
    import zoo.prompts.simulate as simulate

    changes: dict[str, Any] = {}
    if family == "sam_med3d":
        changes = {"mask_only_iteration_range": [MIDDLE_MASK_ONLY_3D] * 2}
    elif family == "sam_med2d":
        # theirs: inner pass np.random.randint(1, 7) -> 4 under the rule, i.e. overall pass 5
        changes = {"first_prompt": "point", "clicks_per_iteration": [POINTS_PER_PASS_2D],
                   "mask_only_iteration_range": [5, 5]}
    else:
        changes = {"box_jitter": "none"}
    schedule = dataclasses.replace(module.train_prompts, **changes)
    return patched((simulate, "_uniform", deterministic_uniform), (module, "train_prompts", schedule))


# ----------------------------------------------------------------------------------------------- workers
def check_family(family: str, checkout: Path, iterations_3d: int) -> dict[str, Any]:
    """Tiny config, same weights and draws, one step 0 on each side: loss and gradients compared."""
    import torch

    from zoo.models.components import onednn_linear

    if onednn_linear.min_multiply_adds() < onednn_linear.MIN_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2:
        onednn_linear.min_multiply_adds = lambda: 0  # tiny products take the kernels full-size ones take here
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        module, optimizer, batch = build_ours(family, Path(tmp), tiny=True, iterations_3d=iterations_3d)
        with our_deterministic(family, module):  # their first prompts: the draws ours makes in its first pass
            inputs = their_inputs(family, module, batch, deterministic=True)
        torch.manual_seed(0)
        theirs = build_theirs(family, checkout, batch, inputs, True, iterations_3d, Path(tmp),
                              module.train_prompts.zero_grad)
        share_weights(theirs, module.net)
        mapping = name_map(module.net, theirs.model)
        our_grads = capture_first_step(optimizer, module.net.named_parameters)
        their_grads = capture_first_step(theirs.optimizer, theirs.model.named_parameters)
        our_losses: list[float] = []
        run_pass = module._run_pass

        def recording_pass(rollout: Any, it: int) -> Any:
            loss = run_pass(rollout, it)
            our_losses.append(float(loss.detach()))
            return loss

        module._run_pass = recording_pass
        with our_deterministic(family, module), theirs.deterministic():
            our_total = module.training_step(batch, 0)
            if our_total is not None:
                our_total.backward()
                optimizer.step()
            theirs.step()
    ours_loss = float(our_total.detach()) if family == "sam_med3d" else our_losses[0]
    theirs_loss = theirs.totals[0] if family == "sam_med3d" else theirs.losses[0]
    # A gradient the authors' code leaves as zeros where ours leaves None (outputs computed but not used, e.g. the
    # multimask hypernetworks under multimask_output=False) counts as zeros. Parameters whose gradient is zero
    # analytically (a key projection's bias: softmax ignores a constant shift) hold rounding noise only; a
    # parameter counts as such when its largest gradient is below NOISE_FLOOR x the largest over all parameters,
    # and its difference is then measured against the largest gradient.
    pairs = {}
    for name, their_name in mapping.items():
        mine, other = our_grads.get(name), their_grads.get(their_name) if their_name else None
        pairs[name] = (mine, other)
    unmatched = [name for name, their_name in mapping.items() if their_name is None]
    largest = max((float(g.abs().max()) for _, g in pairs.values() if g is not None), default=0.0)
    floor = NOISE_FLOOR * largest
    worst, worst_name, missing, noise = 0.0, None, [], {}
    for name, (mine, other) in pairs.items():
        if name in unmatched:
            continue
        if mine is None and other is None:
            continue
        if mine is None or other is None:
            present = other if mine is None else mine
            if bool(present.abs().max() > 0):
                missing.append(f"{name}: ours {'None' if mine is None else 'set'}, theirs "
                               f"{'None' if other is None else 'set'}")
            continue
        scale, diff = float(other.abs().max()), float((mine - other).abs().max())
        if scale < floor:
            noise[name] = {"max_abs_theirs": scale, "max_abs_diff": diff, "diff_over_largest": diff / largest}
            continue
        if diff / scale > worst or worst_name is None:
            worst, worst_name = diff / scale, name
    worst_noise = max((entry["diff_over_largest"] for entry in noise.values()), default=0.0)
    loss_diff = abs(ours_loss - theirs_loss)
    passed = (loss_diff <= LOSS_TOLERANCE and worst <= GRADIENT_TOLERANCE and worst_noise <= GRADIENT_TOLERANCE
              and not unmatched and not missing)
    return {
        "family": family, "config": TINY_OVERRIDES[family], "image": list(batch["image"].shape),
        "loss_ours": ours_loss, "loss_theirs": theirs_loss, "loss_abs_diff": loss_diff,
        "pass_losses_ours": our_losses, "pass_losses_theirs": theirs.losses,
        "compared_parameters": len(mapping) - len(unmatched), "worst_gradient_rel_diff": worst,
        "worst_parameter": worst_name, "largest_gradient": largest, "noise_floor": floor,
        "noise_level_parameters": noise, "noise_level_worst_diff_over_largest": worst_noise,
        "unmatched_parameters": unmatched, "gradient_presence_mismatch": missing,
        "prompts": "deterministic draws on both sides (index floor((i + 0.5) / k * n) of n candidates)",
        "stubbed_imports": theirs.stubbed, "result": "PASS" if passed else "FAIL",
    }


def time_family(family: str, checkout: Path, threads: int, steps: int, iterations_3d: int, batch_file: Path
                ) -> dict[str, Any]:
    """Full size: both sides built, then warm-up and ``steps`` timed steps each, interleaved."""
    import torch

    from encoder_speed import gemm_rate

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        module, optimizer, batch = build_ours(family, Path(tmp), tiny=False, iterations_3d=iterations_3d)
        inputs = their_inputs(family, module, batch, deterministic=False)
        zero_grad = module.train_prompts.zero_grad
        torch.save({"batch": {k: v for k, v in batch.items() if isinstance(v, torch.Tensor)}, "inputs": inputs,
                    "zero_grad": zero_grad}, batch_file)
        torch.manual_seed(0)
        theirs = build_theirs(family, checkout, batch, inputs, False, iterations_3d, Path(tmp), zero_grad)
        share_weights(theirs, module.net)
        gemm_before = gemm_rate(torch.device("cpu"))
        runs: dict[str, list[float]] = {"ours": [], "theirs": []}
        cpu: dict[str, list[float]] = {"ours": [], "theirs": []}
        for _ in range(steps + 1):
            for side, run in (("ours", lambda: our_step(module, optimizer, batch)), ("theirs", theirs.step)):
                start, cpu_start = time.perf_counter(), time.process_time()
                run()
                runs[side].append(time.perf_counter() - start)
                cpu[side].append(time.process_time() - cpu_start)
                print(f"{family} {side}: {runs[side][-1]:.2f} s", file=sys.stderr, flush=True)
        gemm_after = gemm_rate(torch.device("cpu"))
    ours_s, theirs_s = (statistics.median(runs[side][1:] or runs[side]) for side in ("ours", "theirs"))
    return {
        "family": family, "model": module.hparams.model, "input": "x".join(map(str, batch["image"].shape[1:])),
        "targets": int(batch["target"].shape[0]) if "target" in batch else int(batch["masks"].shape[:2].numel()),
        "iterations": module.train_prompts.iterations, "threads": torch.get_num_threads(), "zero_grad": zero_grad,
        "ours_s": ours_s, "theirs_s": theirs_s, "ratio_theirs_over_ours": theirs_s / ours_s,
        "ours_runs_s": runs["ours"], "theirs_runs_s": runs["theirs"],
        "ours_cpu_s": cpu["ours"], "theirs_cpu_s": cpu["theirs"],
        "gemm_gflops_before": gemm_before, "gemm_gflops_after": gemm_after, "load_after": os.getloadavg(),
        "stubbed_imports": theirs.stubbed, "ours_overrides": OURS_OVERRIDES,
    }  # fmt: skip


def memory_side(family: str, side: str, checkout: Path, batch_file: Path, iterations_3d: int) -> dict[str, Any]:
    """One side alone in this process: RSS before its first step and the peak over two steps."""
    import torch

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        if side == "ours":
            module, optimizer, batch = build_ours(family, Path(tmp), tiny=False, iterations_3d=iterations_3d)

            def step() -> None:
                our_step(module, optimizer, batch)
        else:
            saved = torch.load(batch_file, weights_only=False)
            step = build_theirs(family, checkout, saved["batch"], saved["inputs"], False, iterations_3d,
                                Path(tmp), saved["zero_grad"]).step
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        for _ in range(2):
            step()
    return {"side": side, "rss_before_steps_mib": before,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


# -------------------------------------------------------------------------------------------------- main
def _worker(args: argparse.Namespace, *extra: str) -> dict[str, Any]:
    command = [
        sys.executable, __file__, "--families", args.families[0], "--threads", str(args.threads), "--steps",
        str(args.steps), "--iterations-3d", str(args.iterations_3d), *extra,
        *(f"--ours-override={override}" for override in args.ours_override),
    ]
    for family in FAMILIES:
        folder = getattr(args, family)
        if folder is not None:
            command += [f"--{family.replace('_', '-')}", str(folder)]
    from training_step import row_from_child

    row, result = row_from_child(command, args.threads)
    if row is None:
        return {"error": f"{' '.join(extra)} failed (exit {result.returncode}): {result.stderr[-4000:]}"}
    for line in result.stderr.splitlines():
        if line.startswith(f"{args.families[0]} "):
            print("  " + line, flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", choices=FAMILIES, default=list(FAMILIES))
    parser.add_argument("--sam-med3d", dest="sam_med3d", type=Path, help="checkout of uni-medical/SAM-Med3D")
    parser.add_argument("--sam-med2d", dest="sam_med2d", type=Path, help="checkout of OpenGVLab/SAM-Med2D")
    parser.add_argument("--sam-unet", dest="sam_unet", type=Path, help="checkout of Hhankyangg/sam-unet")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, default=2, help="timed steps per side after one warm-up each")
    parser.add_argument("--iterations-3d", type=int, default=11, help="SAM-Med3D prompt iterations (paper: 11)")
    parser.add_argument("--no-check", dest="check", action="store_false", help="skip the tiny-config check")
    parser.add_argument("--no-memory", dest="memory", action="store_false", help="skip the peak-memory processes")
    parser.add_argument("--json", type=Path, help="also write every row here")
    parser.add_argument(
        "--ours-override", action="append", default=[], metavar="=OVERRIDE",
        help="an extra zoo CLI override of our recipe at full size (repeatable), e.g. "
        "--ours-override=--model.train_prompts.zero_grad=none",
    )  # fmt: skip
    parser.add_argument("--mode", choices=("time", "check", "memory-ours", "memory-theirs"), help=argparse.SUPPRESS)
    parser.add_argument("--batch-file", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    missing = [f"--{f.replace('_', '-')}" for f in args.families if getattr(args, f) is None]
    if missing:
        parser.error(f"the authors' checkouts are needed: {' '.join(missing)} (or leave those --families out)")
    for family in args.families:
        checkout = getattr(args, family)
        if not checkout.is_dir():
            parser.error(f"--{family.replace('_', '-')} {checkout}: not a directory")

    OURS_OVERRIDES[:] = args.ours_override
    if args.mode is not None:  # internal: one family, one job, in this fresh process
        import torch

        torch.set_num_threads(args.threads)
        family = args.families[0]
        checkout = getattr(args, family).resolve()
        if args.mode == "time":
            row = time_family(family, checkout, args.threads, args.steps, args.iterations_3d, args.batch_file)
        elif args.mode == "check":
            row = check_family(family, checkout, args.iterations_3d)
        else:
            row = memory_side(family, args.mode.split("-")[1], checkout, args.batch_file, args.iterations_3d)
        print("ROW " + json.dumps(row), flush=True)
        return 0

    import torch

    from machine import gemm_rate, gemm_rates, load_average, write_record

    torch.set_num_threads(args.threads)
    before = gemm_rates(torch.device("cpu"))
    print(f"CPU ({platform.machine()}, {os.cpu_count()} cores), {args.threads} threads, fp32; our recipe overrides: "
          f"{args.ours_override or 'none'}", flush=True)
    rows, failed = [], False
    for family in args.families:
        one = argparse.Namespace(**{**vars(args), "families": [family]})
        row: dict[str, Any] = {"family": family, "gemm_gflops_start": gemm_rate(torch.device("cpu")),
                               "load_start": load_average()}
        print(f"{family}: fp32 GEMM {row['gemm_gflops_start']:.1f} GFLOP/s, load {row['load_start']}", flush=True)
        if args.check:
            row["check"] = _worker(one, "--mode", "check")
            check = row["check"]
            if "error" in check:
                print(f"{family} check: {check['error']}", flush=True)
                failed = True
            else:
                print(f"{family} tiny check {check['result']}: loss ours {check['loss_ours']:.6f} theirs "
                      f"{check['loss_theirs']:.6f} (|diff| {check['loss_abs_diff']:.2e}); worst gradient relative "
                      f"diff {check['worst_gradient_rel_diff']:.2e} ({check['worst_parameter']}) over "
                      f"{check['compared_parameters']} parameters; unmatched {check['unmatched_parameters']}; "
                      f"gradient presence {check['gradient_presence_mismatch']}", flush=True)
                failed |= check["result"] != "PASS"
        with tempfile.TemporaryDirectory() as tmp:
            batch_file = Path(tmp) / "batch.pt"
            row["timing"] = _worker(one, "--mode", "time", "--batch-file", str(batch_file))
            if "error" in row["timing"]:
                print(f"{family} timing: {row['timing']['error']}", flush=True)
                failed = True
            elif args.memory:
                for side in ("ours", "theirs"):
                    row[f"memory_{side}"] = _worker(one, "--mode", f"memory-{side}", "--batch-file", str(batch_file))
        row["gemm_gflops_end"], row["load_end"] = gemm_rate(torch.device("cpu")), load_average()
        print(f"{family}: fp32 GEMM {row['gemm_gflops_end']:.1f} GFLOP/s, load {row['load_end']}", flush=True)
        rows.append(row)
    print_table(rows)
    if args.json:
        write_record(args.json, "authors_training_step", rows, before, gemm_rates(torch.device("cpu")),
                     ours_override=args.ours_override)  # fmt: skip
    return 1 if failed else 0


def print_table(rows: list[dict[str, Any]]) -> None:
    header = ("| family | model | input | targets | passes | zero_grad | ours s/step | theirs s/step | "
              "theirs / ours | CPU s/step ours, theirs | ours runs s | theirs runs s | peak RSS ours (before) MiB | "
              "peak RSS theirs (before) MiB | GEMM GFLOP/s in run (family start, end) | load end | check |")
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for row in rows:
        t = row.get("timing", {})
        if "error" in t or not t:
            print(f"| {row['family']} | failed |")
            continue

        def memory(side: str) -> str:
            m = row.get(f"memory_{side}") or {}
            return f"{m['peak_rss_mib']:.0f} ({m['rss_before_steps_mib']:.0f})" if "peak_rss_mib" in m else "-"

        def cpu(side: str) -> str:
            return f"{statistics.median(t[f'{side}_cpu_s'][1:] or t[f'{side}_cpu_s']):.1f}"

        check = row.get("check") or {}
        verdict = check.get("result", "error" if "error" in check else "-")
        if "loss_abs_diff" in check:
            verdict += f" (loss {check['loss_abs_diff']:.1e}, grad {check['worst_gradient_rel_diff']:.1e})"
        print(
            f"| {row['family']} | {t['model']} | {t['input']} | {t['targets']} | {t['iterations']} | "
            f"{t.get('zero_grad', '-')} | {t['ours_s']:.2f} "
            f"| {t['theirs_s']:.2f} | {t['ratio_theirs_over_ours']:.2f}x | {cpu('ours')}, {cpu('theirs')} | "
            f"{' '.join(f'{x:.1f}' for x in t['ours_runs_s'])} | {' '.join(f'{x:.1f}' for x in t['theirs_runs_s'])} "
            f"| {memory('ours')} | {memory('theirs')} | {t['gemm_gflops_before']:.0f} -> {t['gemm_gflops_after']:.0f} "
            f"({row['gemm_gflops_start']:.0f}, {row['gemm_gflops_end']:.0f}) | {row['load_end']} | {verdict} |"
        )


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    sys.exit(main())
