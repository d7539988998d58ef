"""What the pipeline runners (``*_pipeline.py``) share: the model from ``constructor.zoo_equivalent``, the tolerances a
pipeline case states, and ``zoo predict``'s Python path (``PromptedImagesDataModule`` + ``predict_masks``) writing
into a temporary folder whose mask file is read back as a user would read it.

Not a runner itself (the leading underscore keeps it from naming a fixture family).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from zoo.data.predict import PromptedImagesDataModule
from zoo.inference.predictor import Predictor
from zoo.processors import Processor, processor_for
from zoo.training.prediction import predict_masks

from ..harness import Case, Expect, StepContext, Tolerance, build_zoo_equivalent

FLOAT = Expect("float")
EXACT = Expect("exact")


def build_model(case: Case) -> nn.Module:
    """The model ``constructor.zoo_equivalent`` names, with the case's weights (``harness.build_zoo_equivalent``)."""
    return build_zoo_equivalent(case)


def processor(ctx: StepContext) -> Processor:
    """The processor that travels with the model (what ``Predictor`` and ``zoo predict`` use)."""
    cached = ctx.cache.get("processor")
    if cached is None:
        cached = ctx.cache["processor"] = processor_for(ctx.model)
    return cached


def final_mask_expect(case: Case) -> Expect:
    """The case's final-mask rule (``tolerance.final_mask``: Dice and fraction of the authors' foreground)."""
    rule = case.tolerance.rule("final_mask")
    if rule is None:
        raise ValueError(f"{case.case_id}: case.json states no final-mask tolerance")
    return Expect("binary", rule=rule)


def stated_allclose(case: Case, what: str) -> Tolerance:
    """An absolute tolerance the case states in words for ``what`` (``"affines allclose 1e-4 mm"``): atol, rtol 0.

    Stricter than the float default on values of ~100 mm, so it is the one used; absent, the case-wide one."""
    pattern = re.compile(rf"{what}\s+allclose\s+([0-9.]+(?:[eE][-+]?\d+)?)")
    for value in case.spec.get("tolerance", {}).values():
        match = pattern.search(value) if isinstance(value, str) else None
        if match:
            return Tolerance(atol=float(match.group(1)), rtol=0.0)
    return case.tolerance


def zoo_predict(net: nn.Module, proc: Processor, image: Path, **prompts: Any) -> tuple[np.ndarray, dict[str, Any]]:
    """``zoo predict``'s Python path on one image: ``PromptedImagesDataModule(images=image, ...)`` and
    ``predict_masks`` into a fresh temporary folder; returns the one mask file read back (NIfTI with nibabel in its
    stored voxel order, PNG with PIL as 0/1) and the dataset item the run prepared (its model input and frame).

    The file must be the only one written, and a NIfTI mask must carry the input's affine.
    """
    data = PromptedImagesDataModule(images=str(image), processor=proc, **prompts)
    with tempfile.TemporaryDirectory(prefix="zoo-parity-predict-") as folder:
        written = predict_masks(net, data, folder)
        files = sorted(p.name for p in Path(folder).iterdir())
        if len(written) != 1 or files != [written[0].name]:
            raise AssertionError(f"zoo predict wrote {files}, expected exactly one mask file ({written})")
        item = data.predict_dataset()[0]
        if written[0].name.endswith((".nii.gz", ".nii")):
            stored = nib.load(str(written[0]))
            source = nib.load(str(image))
            if not np.allclose(stored.affine, source.affine, rtol=0.0, atol=1e-6):
                raise AssertionError("the written mask does not carry the input image's affine")
            mask = np.asarray(stored.dataobj).copy()
        else:
            with Image.open(written[0]) as png:
                pixels = np.array(png)
            if not set(np.unique(pixels).tolist()) <= {0, 255}:
                raise AssertionError(f"a 2D mask file holds values other than 0 and 255: {np.unique(pixels)}")
            mask = (pixels > 0).astype(np.uint8)
    return mask, item


def as_tensor(array: np.ndarray) -> Tensor:
    """A tensor owning a copy of ``array`` (arrays from files may be read-only)."""
    return torch.from_numpy(np.array(array, copy=True, order="C"))


# --------------------------------------------------------------------------------------------- 2D pipelines

PROMPT_KINDS_2D = ("points", "box")


def mode_kinds(mode: str) -> tuple[str, ...]:
    """``"box_points"`` -> ``("box", "points")``; an error for anything else (a case format this code cannot read)."""
    kinds = tuple(mode.split("_"))
    if not kinds or len(set(kinds)) != len(kinds) or not set(kinds) <= set(PROMPT_KINDS_2D):
        raise ValueError(f"prompt mode {mode!r} is not made of {PROMPT_KINDS_2D} joined by '_'")
    return kinds


def check_listed_prompts(
    case: Case, kinds: tuple[str, ...], values: Mapping[str, Tensor], names: Mapping[str, str]
) -> None:
    """The stored original-pixel prompts must be the ones case.json ``inputs`` lists."""
    inputs = case.spec["inputs"]
    listed = {
        "box": ("box_xyxy_original_pixels", names.get("box")),
        "point_coords": ("point_xy_original_pixels", names.get("point_coords")),
        "point_labels": ("point_labels", names.get("point_labels")),
    }
    for what, (key, name) in listed.items():
        needed = "box" if what == "box" else "points"
        if needed in kinds and name is not None:
            expected = np.asarray(inputs[key], dtype=np.float64).reshape(-1)
            if not np.array_equal(values[name].to(torch.float64).reshape(-1).numpy(), expected):
                raise AssertionError(f"{case.case_id}: stored {name} differs from case.json inputs.{key}")


def user_prompts(kinds: tuple[str, ...], values: Mapping[str, Tensor], names: Mapping[str, str]) -> dict[str, Any]:
    """Original-pixel prompts as a user passes them to ``Predictor.predict`` (numpy, ``(x, y)``)."""
    kwargs: dict[str, Any] = {}
    if "points" in kinds:
        kwargs["point_coords"] = values[names["point_coords"]].to(torch.float64).reshape(-1, 2).numpy()
        kwargs["point_labels"] = values[names["point_labels"]].reshape(-1).numpy()
    if "box" in kinds:
        kwargs["box"] = values[names["box"]].to(torch.float64).reshape(4).numpy()
    return kwargs


def zoo_predict_prompts(
    kinds: tuple[str, ...], values: Mapping[str, Tensor], names: Mapping[str, str]
) -> dict[str, Any]:
    """The same prompts as ``PromptedImagesDataModule`` init arguments (pixels ``[x, y]``, box ``[x0, y0, x1, y1]``)."""
    prompts = user_prompts(kinds, values, names)
    out: dict[str, Any] = {}
    if "point_coords" in prompts:
        out["points"] = prompts["point_coords"].tolist()
        out["point_labels"] = [int(v) for v in prompts["point_labels"]]
    if "box" in prompts:
        out["box"] = prompts["box"].tolist()
    return out


def cached_predictor(ctx: StepContext, image: Tensor) -> Predictor:
    """One ``Predictor`` per case, ``set_image`` once per distinct image (the chained and isolated runs may hand
    over different arrays)."""
    cached = ctx.cache.get("predictor")
    if cached is None or not torch.equal(cached[0], image):
        predictor = Predictor(ctx.model, processor=processor(ctx))
        predictor.set_image(image.numpy())
        ctx.cache["predictor"] = cached = (image.clone(), predictor)
    return cached[1]
