"""SAM-Med3D's whole inference pipeline (``utils/infer_utils.py``: NIfTI file in, mask file on the original grid out).

The case (``kind``: pipeline) gives the image file (``inputs.image``, under ``<root>/../data``), one click as a
world point (``click_world_ras``, what a user gives ``zoo predict``) and as a fractional voxel index of the file
(``click_original_voxel``), and the authors' intermediates. They are produced here through the entry points a user
calls:

* the final mask through ``zoo predict``'s Python path (``PromptedImagesDataModule(images=..., prompts={...},
  space "world")`` + ``predict_masks`` into a temporary folder, the NIfTI read back with nibabel);
* the ROI, model input, embedding, logits and masks through ``zoo.inference.Predictor`` (``set_image(path)``,
  ``predict(point_coords=voxel, point_labels=...)``) and its processor (``to_model_space``, ``upsample``,
  ``binarize``, ``segment``, ``to_original``);
* the resampled grid through the processor's plan (:func:`zoo.geometry.grid3d.plan_resample`, which
  ``SamMed3DProcessor.prepare`` calls), the world point through ``zoo predict``'s own conversion
  (:func:`zoo.data.prompt_files.world_to_voxel`).

Each component also runs on the authors' own inputs (encoder on ``model_input``, decoder on ``image_embeddings``
and ``click_crop``, ``to_original`` on ``low_res_logits`` and ``roi_affine``).

``padding_params`` / ``cropping_params``: the authors record ``CropOrPad._compute_center_crop_or_pad(subject)`` in
``meta_info``: the crop-or-pad of a window CENTRED ON THE VOLUME, not the window actually cut. The ROI is cut by
``CropOrPad(mask_name='label')``, centred on the label, and mapped back through the ROI's affine (``roi_affine``),
so these two numbers never enter the authors' result. They are reproducible from what a user has (the file's
resampled grid and the crop size): :func:`zoo.geometry.grid3d.crop_window` without a target gives torchio's centred
window, and its ``padding`` / ``cropping`` are compared exactly. The ROI's own window is checked through
``roi_affine`` (and ``roi_label``), which it alone determines.

``roi_label`` is the one-voxel ground truth the authors resample and crop (their click is drawn from it); it is
produced here with the same geometry (:func:`zoo.geometry.grid3d.resampled_bbox` + ``resample(..., "nearest")``),
from the ground-truth voxel case.json names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from zoo.geometry.grid3d import crop_window, plan_resample, resample, resampled_bbox
from zoo.geometry.index_map import IndexMap
from zoo.inference.predictor import Predictor
from zoo.io.nifti import load_stored
from zoo.data.prompt_files import world_to_voxel
from zoo.processors import ImageFrame, SamMed3DProcessor
from zoo.prompts.types import PointPrompts, Prompts

from ..harness import Case, Expect, Plan, StepContext, Tolerance
from ._pipeline import EXACT, FLOAT, as_tensor, build_model, final_mask_expect, processor, stated_allclose, zoo_predict

__all__ = ["build_model", "plan"]

#: The authors' click is a voxel index of the ROI; ours is the mapped point, compared to it within this (voxels).
INDEX_ATOL = 1e-4


def plan(case: Case) -> Plan:
    if "pipeline" not in str(case.spec.get("kind", "")):
        raise ValueError(f"{case.case_id}: not a pipeline case (kind {case.spec.get('kind')!r})")
    affine = Expect("float", tolerance=stated_allclose(case, "affines"))
    index = Expect("float", tolerance=Tolerance(atol=INDEX_ATOL, rtol=0.0))
    roi_mask = Expect("binary", rule=case.tolerance.rule("roi_mask"))
    final = final_mask_expect(case)
    shape = ["original_shape", "original_affine"]
    p = Plan()
    p.add("read_image", [], {"original_shape": EXACT, "original_affine": affine}, _read_image)
    p.add(
        "resample_grid",
        shape,
        {"resampled_shape": EXACT, "resampled_affine": affine, "padding_params": EXACT, "cropping_params": EXACT},
        _resample_grid,
    )
    p.add("world_to_voxel", ["click_world_ras", "original_affine"], {"click_original_voxel": index}, _world_to_voxel)
    p.add("roi_label", shape, {"roi_label": EXACT}, _roi_label)
    p.add(
        "predictor",
        ["click_original_voxel", "click_label"],
        {
            "roi_affine": affine,
            "model_input": FLOAT,
            "click_crop": index,
            "image_embeddings": FLOAT,
            "low_res_logits": FLOAT,
            "iou_predictions": FLOAT,
            "roi_mask": roi_mask,
            "final_mask": final,
        },
        _predictor,
    )
    p.add("image_encoder", ["model_input"], {"image_embeddings": FLOAT}, _encoder)
    p.add(
        "decode",
        ["image_embeddings", "click_crop", "click_label"],
        {"low_res_logits": FLOAT, "iou_predictions": FLOAT},
        _decode,
    )
    p.add("upsample_binarize", ["low_res_logits"], {"roi_mask": roi_mask}, _upsample_binarize)
    p.add("to_original", ["low_res_logits", "roi_affine", *shape], {"final_mask": final}, _to_original)
    p.add(
        "zoo_predict",
        ["click_world_ras", "click_label"],
        {"final_mask": final, "model_input": FLOAT, "roi_affine": affine},
        _zoo_predict,
    )
    return p


# ------------------------------------------------------------------------------------------------------ helpers


def _image_path(ctx: StepContext):
    return ctx.case.data_file(ctx.case.spec["inputs"]["image"])


def _processor(ctx: StepContext) -> SamMed3DProcessor:
    proc = processor(ctx)
    assert isinstance(proc, SamMed3DProcessor)
    return proc


def _plan_for(ctx: StepContext, shape: Tensor, affine: Tensor):
    proc = _processor(ctx)
    return plan_resample(
        tuple(int(n) for n in shape), affine.numpy(), proc.config.target_spacing_mm,
        max_bytes=proc.config.max_resampled_bytes,
    )


def _ground_truth_voxel(case: Case) -> tuple[int, int, int]:
    """The one voxel of the authors' ground truth (case.json ``inputs.ground_truth``: "... at [i, j, k] ...")."""
    found = re.search(r"at \[(\d+),\s*(\d+),\s*(\d+)\]", str(case.spec["inputs"].get("ground_truth", "")))
    if not found:
        raise ValueError(f"{case.case_id}: inputs.ground_truth does not name the ground-truth voxel")
    return tuple(int(v) for v in found.groups())  # type: ignore[return-value]


def _check_world_prompt(case: Case, world: Tensor) -> None:
    """case.json's ``zoo_predict_prompts_json`` must hold the stored world point (what users are told to give)."""
    entries = list(case.spec["inputs"]["zoo_predict_prompts_json"].values())
    if len(entries) != 1 or entries[0].get("space") != "world":
        raise ValueError(f"{case.case_id}: expected one world-space prompt entry in zoo_predict_prompts_json")
    if not np.allclose(np.asarray(entries[0]["points"], dtype=np.float64), world.numpy().reshape(1, 3), atol=1e-5):
        raise AssertionError(f"{case.case_id}: click_world_ras differs from the world point case.json tells users")


# ------------------------------------------------------------------------------------------------------ steps


def _read_image(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    volume = load_stored(_image_path(ctx))
    return {
        "original_shape": torch.tensor(volume.shape, dtype=torch.int64),
        "original_affine": as_tensor(np.asarray(volume.affine, dtype=np.float64)),
    }


def _resample_grid(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    grid = _plan_for(ctx, values["original_shape"], values["original_affine"]).canonical
    # The authors' recorded params: CropOrPad's window centred on the VOLUME (see the module docstring).
    centred = crop_window(grid.shape, _processor(ctx).input_shape)
    return {
        "resampled_shape": torch.tensor(grid.shape, dtype=torch.int64),
        "resampled_affine": as_tensor(np.asarray(grid.affine, dtype=np.float64)),
        "padding_params": torch.tensor(centred.padding, dtype=torch.int64),
        "cropping_params": torch.tensor(centred.cropping, dtype=torch.int64),
    }


def _world_to_voxel(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    world = values["click_world_ras"].to(torch.float64).reshape(1, 3).numpy()
    voxel = world_to_voxel(world, values["original_affine"].numpy(), "world")
    return {"click_original_voxel": as_tensor(voxel[0])}


def _roi_label(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    grid = _plan_for(ctx, values["original_shape"], values["original_affine"])
    label = np.zeros(grid.source.shape, dtype=np.uint8)
    label[_ground_truth_voxel(ctx.case)] = 1
    window = crop_window(grid.canonical.shape, _processor(ctx).input_shape, resampled_bbox(label, grid))
    return {"roi_label": as_tensor(resample(label, grid, "nearest", window))[None, None]}


def _predictor(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    proc = _processor(ctx)
    predictor = Predictor(ctx.model, processor=proc)
    predictor.set_image(_image_path(ctx))
    click = values["click_original_voxel"].to(torch.float64).reshape(1, 3).numpy()
    labels = values["click_label"].reshape(-1).numpy()
    result = predictor.predict(point_coords=click, point_labels=labels)
    frame = predictor.frame
    assert frame is not None
    points = predictor.prompts(click, labels).points
    on_model = proc.to_model_space(Prompts(points=points), frame)
    crop_mask = proc.binarize(proc.upsample(result.low_res_logits[:, None]))
    return {
        "roi_affine": frame.meta["crop_affine"],
        "model_input": frame.model_input[None],
        "click_crop": on_model.points.coords,
        "image_embeddings": predictor.features,
        "low_res_logits": result.low_res_logits[:, None],
        "iou_predictions": result.iou_predictions[:, None],
        "roi_mask": crop_mask[0, 0],
        "final_mask": result.masks[0],
    }


def _encoder(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"image_embeddings": ctx.model.encode_image(values["model_input"])}


def _decode(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """The family's inference rule on the model grid: one click, all-zero logits as its mask prompt."""
    proc = _processor(ctx)
    coords, labels = values["click_crop"].to(torch.float32), values["click_label"].to(torch.int64)
    points = PointPrompts(coords, labels, proc.input_shape)
    decoded = proc.segment(ctx.model, values["image_embeddings"], Prompts(points=points))
    return {"low_res_logits": decoded.low_res_logits, "iou_predictions": decoded.iou_predictions}


def _upsample_binarize(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    proc = _processor(ctx)
    return {"roi_mask": proc.binarize(proc.upsample(values["low_res_logits"]))[0, 0]}


def _to_original(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``to_original`` with the authors' ROI affine: the frame ``prepare`` would give for that ROI."""
    proc = _processor(ctx)
    shape = tuple(int(n) for n in values["original_shape"])
    roi, original = values["roi_affine"].to(torch.float64), values["original_affine"].to(torch.float64)
    frame = ImageFrame(
        torch.empty(0), shape, IndexMap.from_affines(original, roi, shape, proc.input_shape),
        {"crop_affine": roi, "original_affine": original},
    )
    return {"final_mask": proc.to_original(values["low_res_logits"], frame).mask}


def _zoo_predict(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Any]:
    world = values["click_world_ras"].to(torch.float64)
    _check_world_prompt(ctx.case, world)
    image = _image_path(ctx)
    prompts = {
        str(image): {
            "points": [world.tolist()],
            "labels": [int(v) for v in values["click_label"].reshape(-1)],
            "space": "world",
        }
    }
    mask, item = zoo_predict(ctx.model, _processor(ctx), image, prompts=prompts)
    return {
        "final_mask": as_tensor(mask),
        "model_input": item["image"][None],
        "roi_affine": item["frame"].meta["crop_affine"],
    }
