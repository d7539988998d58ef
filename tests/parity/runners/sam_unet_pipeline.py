"""SAM-UNet's test pipeline (``TestingDataset`` + ``SAM_UNET.infer``: original PNG and a box in original pixels ->
mask at the original size).

Format: ``raw_image_rgb`` -> ``resized_image`` (longest side, PIL bilinear, 0..255) -> ``preprocessed_image``
(normalised, padded) -> ``image_embeddings`` / ``multi_scale_feature`` -> ``low_res_logits`` -> ``logits`` -> ``mask``;
the prompt ``box`` (original pixels, input) -> ``box_model``.

Through the entry points a user calls: the PNG is read as ``zoo predict`` reads it; ``zoo.inference.Predictor`` gives
the model input, both image features, the low-res logits, logits and mask; the final mask also through
``zoo predict``'s Python path (written PNG read back with PIL). Components run on the authors' inputs too:
:func:`zoo.geometry.image2d.resize_longest_side_bilinear` and
:func:`zoo.processors.longest_side.normalise_and_pad` (the two halves of ``SamUNetProcessor.prepare``),
``to_model_space``, ``model.encode_image``, ``SamUNetProcessor.decode`` and ``to_original``.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from zoo.geometry.image2d import resize_longest_side_bilinear
from zoo.io.png import read_image
from zoo.models.sam_unet import SamUNetImageEncoding
from zoo.processors import SamUNetProcessor
from zoo.processors.longest_side import normalise_and_pad
from zoo.prompts.types import BoxPrompts, Prompts
from zoo.prompts.validate import boxes_from_user

from ..harness import Case, Plan, StepContext
from ._pipeline import (
    EXACT,
    FLOAT,
    as_tensor,
    build_model,
    cached_predictor,
    check_listed_prompts,
    final_mask_expect,
    mode_kinds,
    processor,
    user_prompts,
    zoo_predict,
    zoo_predict_prompts,
)

__all__ = ["build_model", "plan"]

KNOWN = (
    "raw_image_rgb", "resized_image", "preprocessed_image", "image_embeddings", "multi_scale_feature", "box",
    "box_model", "low_res_logits", "logits", "mask",
)
NAMES = {"box": "box"}


def plan(case: Case) -> Plan:
    if "pipeline" not in str(case.spec.get("kind", "")):
        raise ValueError(f"{case.case_id}: not a pipeline case (kind {case.spec.get('kind')!r})")
    listed = case.spec["inputs"].get("modes") or []
    kinds = tuple(kind for mode in listed for kind in mode_kinds(mode))
    if kinds != ("box",):
        raise ValueError(f"{case.case_id}: this runner reads box-prompt cases (SAM-UNet's protocol), not {listed}")
    p = Plan(not_understood=[name for name in case.tensor_names if name not in KNOWN])
    final = final_mask_expect(case)
    features = {"image_embeddings": FLOAT, "multi_scale_feature": FLOAT}
    p.add("read_image", [], {"raw_image_rgb": EXACT}, _read_image)
    p.add("resize", ["raw_image_rgb"], {"resized_image": FLOAT}, _resize)
    p.add("normalise_and_pad", ["resized_image"], {"preprocessed_image": FLOAT}, _normalise_and_pad)
    p.add("map_box", ["raw_image_rgb", "box"], {"box_model": FLOAT}, _map_box)
    p.add("image_encoder", ["preprocessed_image"], features, _encoder)
    p.add("decode", ["image_embeddings", "multi_scale_feature", "box_model"], {"low_res_logits": FLOAT}, _decode)
    p.add("to_original", ["low_res_logits", "raw_image_rgb"], {"logits": FLOAT, "mask": final}, _to_original)
    p.add(
        "predictor",
        ["raw_image_rgb", "box"],
        {"preprocessed_image": FLOAT, **features, "low_res_logits": FLOAT, "logits": FLOAT, "mask": final},
        _predictor,
    )
    p.add("zoo_predict", ["box"], {"mask": final}, _zoo_predict)
    return p


# ------------------------------------------------------------------------------------------------------ steps


def _processor(ctx: StepContext) -> SamUNetProcessor:
    proc = processor(ctx)
    assert isinstance(proc, SamUNetProcessor)
    return proc


def _read_image(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"raw_image_rgb": as_tensor(read_image(ctx.case.data_file(ctx.case.spec["inputs"]["image"])))}


def _resize(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    resized = resize_longest_side_bilinear(values["raw_image_rgb"].numpy(), _processor(ctx).config.image_size)
    return {"resized_image": as_tensor(resized).permute(2, 0, 1).to(torch.float32)}


def _normalise_and_pad(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    config = _processor(ctx).config
    resized = values["resized_image"].permute(1, 2, 0).numpy()
    padded = normalise_and_pad(resized, config.image_size, config.pixel_mean, config.pixel_std)
    return {"preprocessed_image": padded[None]}


def _map_box(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    check_listed_prompts(ctx.case, ("box",), values, NAMES)
    proc = _processor(ctx)
    frame = proc.prepare(values["raw_image_rgb"].numpy())
    boxes = boxes_from_user(user_prompts(("box",), values, NAMES)["box"], frame.original_shape)
    return {"box_model": proc.model_kwargs(proc.to_model_space(Prompts(boxes=boxes), frame))["boxes"]}


def _encoder(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    encoding = ctx.model.encode_image(values["preprocessed_image"])
    return {"image_embeddings": encoding.image_embeddings, "multi_scale_feature": encoding.multi_scale_feature}


def _decode(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    proc = _processor(ctx)
    encoding = SamUNetImageEncoding(values["image_embeddings"], values["multi_scale_feature"])
    box = values["box_model"].reshape(-1, 4)
    valid = torch.ones(len(box), dtype=torch.bool)
    boxes = BoxPrompts(box[:, [1, 0]].contiguous(), box[:, [3, 2]].contiguous(), valid, proc.input_shape)
    decoded = proc.decode(ctx.model, encoding, Prompts(boxes=boxes))
    if decoded.iou_predictions is not None:
        raise AssertionError("SAM-UNet has no IoU head; the processor must return no IoU predictions")
    return {"low_res_logits": decoded.low_res_logits}


def _to_original(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    proc = _processor(ctx)
    back = proc.to_original(values["low_res_logits"], proc.prepare(values["raw_image_rgb"].numpy()))
    return {"logits": back.logits, "mask": back.mask}


def _predictor(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    predictor = cached_predictor(ctx, values["raw_image_rgb"])
    result = predictor.predict(**user_prompts(("box",), values, NAMES))
    assert predictor.frame is not None
    if result.iou_predictions is not None:
        raise AssertionError("SAM-UNet has no IoU head; the predictor must return no IoU predictions")
    return {
        "preprocessed_image": predictor.frame.model_input[None],
        "image_embeddings": predictor.features.image_embeddings,
        "multi_scale_feature": predictor.features.multi_scale_feature,
        "low_res_logits": result.low_res_logits[:, None],
        "logits": result.logits[:, None],
        "mask": result.masks[:, None],
    }


def _zoo_predict(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    image = ctx.case.data_file(ctx.case.spec["inputs"]["image"])
    mask, _ = zoo_predict(ctx.model, _processor(ctx), image, **zoo_predict_prompts(("box",), values, NAMES))
    return {"mask": as_tensor(mask)[None, None]}
