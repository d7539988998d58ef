"""SAM-Med2D's predictor pipeline (``SammedPredictor``: original PNG and prompts in original pixels -> mask at the
original size).

Format: image-side tensors ``raw_image_rgb`` -> ``model_input`` -> ``image_embeddings``; per prompt mode ``m``
(prompt kinds joined by ``_``, e.g. ``box_points``): ``m.point_coords`` / ``m.point_labels`` / ``m.box`` (original
pixels, inputs) -> ``m.point_coords_model`` / ``m.box_model`` -> ``m.low_res_logits_all`` / ``m.iou_predictions_all``
(three candidates) -> ``m.best_index`` -> ``m.low_res_logits`` / ``m.iou_prediction`` -> ``m.logits`` -> ``m.mask``.

Through the entry points a user calls: the PNG is read as ``zoo predict`` reads it (:func:`zoo.io.png.read_image`);
``zoo.inference.Predictor`` gives the model input, embedding, chosen low-res logits, IoU, logits and mask; the final
mask also through ``zoo predict``'s Python path (written PNG read back with PIL). Components run on the authors'
inputs too: ``SamMed2DProcessor.prepare`` / ``to_model_space`` / ``decode`` / ``to_original`` and
:func:`zoo.processors.select_best_mask`; the three candidates come from the network (``model.decode`` with
``multimask_output=True``), since the processor's policy returns only the chosen one.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from zoo.io.png import read_image
from zoo.processors import SamMed2DProcessor, select_best_mask
from zoo.prompts.types import BoxPrompts, PointPrompts, Prompts
from zoo.prompts.validate import boxes_from_user, points_from_user

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

IMAGE_SIDE = ("raw_image_rgb", "model_input", "image_embeddings")
ORIGINAL_PROMPTS = {"points": ("point_coords", "point_labels"), "box": ("box",)}
MODEL_PROMPTS = {"points": "point_coords_model", "box": "box_model"}


def modes(case: Case) -> list[str]:
    """Prompt modes in the order the stored names first give them (``<mode>.<what>``)."""
    found: list[str] = []
    for name in case.tensor_names:
        if "." in name and name.split(".", 1)[0] not in found:
            found.append(name.split(".", 1)[0])
    return found


def plan(case: Case) -> Plan:
    if "pipeline" not in str(case.spec.get("kind", "")):
        raise ValueError(f"{case.case_id}: not a pipeline case (kind {case.spec.get('kind')!r})")
    unknown = [n for n in case.tensor_names if "." not in n and n not in IMAGE_SIDE]
    p = Plan(not_understood=unknown)
    final = final_mask_expect(case)
    p.add("read_image", [], {"raw_image_rgb": EXACT}, _read_image)
    p.add("preprocess", ["raw_image_rgb"], {"model_input": FLOAT}, _preprocess)
    p.add("image_encoder", ["model_input"], {"image_embeddings": FLOAT}, _encoder)
    listed = case.spec["inputs"].get("modes")
    if listed is not None and sorted(listed) != sorted(modes(case)):
        raise ValueError(f"{case.case_id}: stored modes {modes(case)} differ from inputs.modes {listed}")
    for mode in modes(case):
        _plan_mode(case, p, mode, final)
    return p


def _plan_mode(case: Case, p: Plan, mode: str, final) -> None:
    kinds = mode_kinds(mode)
    n = {what: f"{mode}.{what}" for what in (
        "point_coords", "point_labels", "box", "point_coords_model", "box_model", "low_res_logits_all",
        "iou_predictions_all", "best_index", "low_res_logits", "iou_prediction", "logits", "mask",
    )}
    originals = [n[what] for kind in kinds for what in ORIGINAL_PROMPTS[kind]]
    mapped = [n[MODEL_PROMPTS[kind]] for kind in kinds]
    labels = [n["point_labels"]] if "points" in kinds else []
    known = set(case.tensor_names)
    stray = sorted(name for name in known if name.startswith(f"{mode}.") and name not in n.values())
    if stray:
        raise ValueError(f"{case.case_id}: tensors this runner cannot place: {stray}")

    mapped_outputs = {name: FLOAT for name in mapped}
    p.add(f"{mode}/map_prompts", ["raw_image_rgb", *originals], mapped_outputs, _map_prompts(kinds, n))
    network = ["image_embeddings", *mapped, *labels]
    p.add(
        f"{mode}/decoder_multimask",
        network,
        {n["low_res_logits_all"]: FLOAT, n["iou_predictions_all"]: FLOAT},
        _multimask(kinds, n),
    )
    p.add(
        f"{mode}/select_best",
        [n["low_res_logits_all"], n["iou_predictions_all"]],
        {n["best_index"]: EXACT, n["low_res_logits"]: FLOAT, n["iou_prediction"]: FLOAT},
        _select_best(n),
    )
    p.add(f"{mode}/decode", network, {n["low_res_logits"]: FLOAT, n["iou_prediction"]: FLOAT}, _decode(kinds, n))
    p.add(
        f"{mode}/to_original",
        [n["low_res_logits"], "raw_image_rgb"],
        {n["logits"]: FLOAT, n["mask"]: final},
        _to_original(n),
    )
    p.add(
        f"{mode}/predictor",
        ["raw_image_rgb", *originals],
        {
            "model_input": FLOAT,
            "image_embeddings": FLOAT,
            n["low_res_logits"]: FLOAT,
            n["iou_prediction"]: FLOAT,
            n["logits"]: FLOAT,
            n["mask"]: final,
        },
        _predictor(kinds, n),
    )
    p.add(f"{mode}/zoo_predict", originals, {n["mask"]: final}, _zoo_predict(kinds, n))


# ------------------------------------------------------------------------------------------------------ steps


def _processor(ctx: StepContext) -> SamMed2DProcessor:
    proc = processor(ctx)
    assert isinstance(proc, SamMed2DProcessor) and proc.config.geometry == "predictor"
    return proc


def _read_image(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"raw_image_rgb": as_tensor(read_image(ctx.case.data_file(ctx.case.spec["inputs"]["image"])))}


def _preprocess(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"model_input": _processor(ctx).prepare(values["raw_image_rgb"].numpy()).model_input[None]}


def _encoder(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"image_embeddings": ctx.model.encode_image(values["model_input"])}


def _map_prompts(kinds: tuple[str, ...], n: Mapping[str, str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        check_listed_prompts(ctx.case, kinds, values, n)
        proc = _processor(ctx)
        frame = proc.prepare(values["raw_image_rgb"].numpy())
        given = user_prompts(kinds, values, n)
        points = boxes = None
        if "points" in kinds:
            points = points_from_user(given["point_coords"], given["point_labels"], frame.original_shape)
        if "box" in kinds:
            boxes = boxes_from_user(given["box"], frame.original_shape)
        on_model = proc.model_kwargs(proc.to_model_space(Prompts(points, boxes), frame))
        out = {}
        if "points" in kinds:
            out[n["point_coords_model"]] = on_model["points"][0]
        if "box" in kinds:
            out[n["box_model"]] = on_model["boxes"][:, None, :]  # B x 1 x 4, as the prompt encoder takes boxes
        return out

    return run


def _model_grid_prompts(proc: SamMed2DProcessor, kinds, n, values) -> Prompts:
    """The stored model-grid prompts (``(x, y)`` points, ``(x0, y0, x1, y1)`` boxes) as the processor's containers."""
    points = boxes = None
    if "points" in kinds:
        coords = values[n["point_coords_model"]].reshape(1, -1, 2)
        labels = values[n["point_labels"]].reshape(1, -1).to(torch.int64)
        points = PointPrompts(coords.flip(-1).contiguous(), labels, proc.input_shape)
    if "box" in kinds:
        box = values[n["box_model"]].reshape(-1, 4)
        valid = torch.ones(len(box), dtype=torch.bool)
        boxes = BoxPrompts(box[:, [1, 0]].contiguous(), box[:, [3, 2]].contiguous(), valid, proc.input_shape)
    return Prompts(points, boxes)


def _multimask(kinds, n):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        proc = _processor(ctx)
        kwargs = proc.model_kwargs(_model_grid_prompts(proc, kinds, n, values))
        out = ctx.model.decode(values["image_embeddings"], **kwargs, multimask_output=True)
        return {n["low_res_logits_all"]: out.low_res_logits, n["iou_predictions_all"]: out.iou_predictions}

    return run


def _select_best(n):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        candidates, iou = values[n["low_res_logits_all"]], values[n["iou_predictions_all"]]
        best, best_iou = select_best_mask(candidates, iou)
        # The index the processor's choice is (select_best_mask keeps torch.max's first maximum).
        index = torch.max(iou, dim=1).indices
        if not torch.equal(best, candidates[torch.arange(len(index)), index][:, None]):
            raise AssertionError("select_best_mask did not keep the candidate with the highest predicted IoU")
        return {n["best_index"]: index, n["low_res_logits"]: best, n["iou_prediction"]: best_iou[:, 0]}

    return run


def _decode(kinds, n):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        proc = _processor(ctx)
        decoded = proc.decode(ctx.model, values["image_embeddings"], _model_grid_prompts(proc, kinds, n, values))
        return {n["low_res_logits"]: decoded.low_res_logits, n["iou_prediction"]: decoded.iou_predictions[:, 0]}

    return run


def _to_original(n):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        proc = _processor(ctx)
        frame = proc.prepare(values["raw_image_rgb"].numpy())
        back = proc.to_original(values[n["low_res_logits"]], frame)
        return {n["logits"]: back.logits[:, 0], n["mask"]: back.mask[:, 0]}

    return run


def _predictor(kinds, n):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        predictor = cached_predictor(ctx, values["raw_image_rgb"])
        result = predictor.predict(**user_prompts(kinds, values, n))
        assert predictor.frame is not None
        return {
            "model_input": predictor.frame.model_input[None],
            "image_embeddings": predictor.features,
            n["low_res_logits"]: result.low_res_logits[:, None],
            n["iou_prediction"]: result.iou_predictions,
            n["logits"]: result.logits,
            n["mask"]: result.masks,
        }

    return run


def _zoo_predict(kinds, n):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        image = ctx.case.data_file(ctx.case.spec["inputs"]["image"])
        mask, _ = zoo_predict(ctx.model, _processor(ctx), image, **zoo_predict_prompts(kinds, values, n))
        return {n["mask"]: as_tensor(mask)[None]}

    return run
