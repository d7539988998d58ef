"""What the pipeline runners (``*_pipeline.py``) share: the model from ``constructor.zoo_equivalent``, the tolerances a
pipeline case states, and ``zoo predict``'s Python path (``PromptedImagesDataModule`` + ``predict_masks``) writing
into a temporary folder whose mask file is read back as a user would read it.

Not a runner itself (the leading underscore keeps it from naming a fixture family).
"""

from __future__ import annotations

import re
import tempfile
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from zoo.data.predict import PromptedImagesDataModule
from zoo.processors import Processor, processor_for
from zoo.training.prediction import predict_masks

from ..harness import Case, Expect, StepContext, Tolerance, build_zoo_equivalent

FLOAT = Expect("float")
EXACT = Expect("exact")


def build_model(case: Case) -> nn.Module:
    """The model ``constructor.zoo_equivalent`` names, with the case's weights (see ``harness.build_zoo_equivalent``)."""
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
