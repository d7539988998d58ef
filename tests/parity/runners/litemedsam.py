"""LiteMedSAM parity runner: the network, the processor and the 3D slice propagation.

Format (case.json ``naming``): prompt modes are named by their prompts joined by ``_`` in the order ``points``,
``box``, ``mask`` (e.g. ``box``, ``points``, ``box_mask``). Network tensors: ``input_image`` -> ``image_embeddings``;
``dense_pe``; for mode ``t`` the prompt encoder gives ``sparse_t`` / ``dense_t`` from ``point_coords`` +
``point_labels``, ``box`` (already in model-input pixels), ``mask_input``, and the mask decoder gives
``lowres_t_{multi|single}`` / ``iou_t_{multi|single}``. ``mask_input`` is ``lowres_box_single`` fed back (the
``box_mask`` mode), so the chained run feeds our own low-res logits.

Processor tensors: ``raw_image_rgb`` -> ``input_image`` (``LiteMedSAMProcessor.prepare``); ``box_orig`` -> ``box`` and
``point_coords_orig`` -> ``point_coords`` (``to_model_space``: the authors' truncating ``resize_box_to_256``, SAM's
``apply_coords``); ``lowres_t_single`` -> ``pred_t_logits`` / ``pred_t_binary`` (``to_original``). The same outputs come
from ``zoo.inference.Predictor`` with the prompts in original pixels (the box_mask mode passes the previous
prediction's low-res logits, ``lowres_box_single``, as ``mask_input``). ``volume`` + ``box3d`` -> ``infer3d_segs``:
:func:`zoo.inference.propagation.propagate_box` (the authors' ``MedSAM_infer_npz_3D``, current revision: the box's
end slices included). ``label_2d`` / ``label_3d`` are references for Dice only: the steps that produce the masks they
belong to read them to check case.json's ``reference_dice`` against the stored masks (a check of the fixture, not of
our result; ours is compared with the stored masks).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from zoo.inference.predictor import Predictor
from zoo.inference.propagation import propagate_box
from zoo.processors import LiteMedSAMProcessor, processor_for
from zoo.prompts.types import Prompts
from zoo.prompts.validate import boxes_from_user, points_from_user

from ..harness import Arg, Case, Expect, Plan, StepContext, build_model as build_checked_model, dice

RELEASED_MODEL = "litemedsam"
FLOAT = Expect("float")
SPATIAL_DIMS = 2
PROMPT_KINDS = ("points", "box", "mask")
PROMPT_INPUTS = {"points": ("point_coords", "point_labels"), "box": ("box",), "mask": ("mask_input",)}
DECODER_VARIANTS = {"multi": True, "single": False}
MASK_FEEDBACK = re.compile(r"(?P<lowres>lowres_\w+_single) fed back as the mask prompt")
TRAINING_ONLY = "training-time option; it does not change the forward pass of loaded weights in eval mode"

def _grid(config: Any) -> list[int]:
    return [config.grid_size] * SPATIAL_DIMS


CONSTRUCTOR = {
    "TinyViT": {
        "img_size": Arg(field="image_size"),
        "in_chans": Arg(field="in_chans"),
        "embed_dims": Arg(field="embed_dims", convert=tuple),
        "depths": Arg(field="depths", convert=tuple),
        "num_heads": Arg(field="num_heads", convert=tuple),
        "window_sizes": Arg(field="window_sizes", convert=tuple),
        "mlp_ratio": Arg(field="mlp_ratio"),
        "drop_rate": Arg(field="drop_rate"),
        "drop_path_rate": Arg(field="drop_path_rate"),
        "use_checkpoint": Arg(ignore="gradient checkpointing trades memory for compute; same values"),
        "mbconv_expand_ratio": Arg(field="mbconv_expand_ratio"),
        "local_conv_size": Arg(field="local_conv_size"),
        "layer_lr_decay": Arg(ignore=TRAINING_ONLY + " (per-parameter learning-rate scales)"),
    },
    "PromptEncoder": {
        "embed_dim": Arg(field="prompt_embed_dim"),
        "image_embedding_size": Arg(check=_grid),
        "input_image_size": Arg(check=lambda c: [c.image_size] * SPATIAL_DIMS),
        "mask_in_chans": Arg(field="mask_in_chans"),
    },
    "MaskDecoder": {
        "num_multimask_outputs": Arg(field="num_multimask_outputs"),
        "transformer_dim": Arg(field="prompt_embed_dim"),
        "iou_head_depth": Arg(field="iou_head_depth"),
        "iou_head_hidden_dim": Arg(field="iou_head_hidden_dim"),
    },
    "TwoWayTransformer": {
        "depth": Arg(field="decoder_depth"),
        "embedding_dim": Arg(field="prompt_embed_dim"),
        "mlp_dim": Arg(field="decoder_mlp_dim"),
        "num_heads": Arg(field="decoder_num_heads"),
    },
}


def build_model(case: Case) -> torch.nn.Module:
    return build_checked_model(RELEASED_MODEL, case.spec["constructor"], CONSTRUCTOR, case.weights_path)


# --------------------------------------------------------------------------------------------------- name grammar


def parse_mode(text: str) -> tuple[str, ...] | None:
    """``"box_mask"`` -> ``("box", "mask")``; None unless ``text`` names prompt kinds in the documented order."""
    parts = tuple(text.split("_"))
    if not set(parts) <= set(PROMPT_KINDS) or list(parts) != sorted(set(parts), key=PROMPT_KINDS.index):
        return None
    return parts


NETWORK_PATTERNS = (
    re.compile(r"(?:sparse|dense)_(?P<mode>[a-z_]+)"),
    re.compile(r"(?:lowres|iou)_(?P<mode>[a-z_]+)_(?:multi|single)"),
)


def modes_in(names: tuple[str, ...]) -> list[str]:
    """Every prompt mode that a stored prompt-encoder or decoder tensor refers to, in first-seen order."""
    found: list[str] = []
    for name in names:
        for pattern in NETWORK_PATTERNS:
            match = pattern.fullmatch(name)
            if match and parse_mode(match["mode"]) and match["mode"] not in found:
                found.append(match["mode"])
    return found


def mask_feedback_source(case: Case) -> str | None:
    """The decoder output that case.json says ``mask_input`` is (e.g. ``lowres_box_single``), if it says so."""
    meaning = case.spec.get("tensors", {}).get("mask_input", "")
    match = MASK_FEEDBACK.search(meaning if isinstance(meaning, str) else meaning.get("meaning", ""))
    return match["lowres"] if match and case.knows(match["lowres"]) else None


# ------------------------------------------------------------------------------------------------------------ plan


def plan(case: Case) -> Plan:
    plan = Plan()
    if case.knows("image_embeddings"):
        plan.add("image_encoder", ["input_image"], {"image_embeddings": FLOAT}, _image_encoder)
    if case.knows("dense_pe"):
        plan.add("dense_pe", [], {"dense_pe": FLOAT}, _dense_pe)
    source = mask_feedback_source(case)
    if case.knows("mask_input") and source:
        plan.add("mask_feedback", [source], {"mask_input": FLOAT}, _feedback(source))
    for mode in modes_in(case.tensor_names):
        _plan_mode(case, plan, mode)
    _plan_processor(case, plan, source)
    return plan


def _plan_mode(case: Case, plan: Plan, mode: str) -> None:
    kinds = parse_mode(mode)
    inputs = [name for kind in kinds for name in PROMPT_INPUTS[kind]]
    sparse, dense = f"sparse_{mode}", f"dense_{mode}"
    encoded = [name for name in (sparse, dense) if case.knows(name)]
    if encoded:
        plan.add(f"{mode}/prompt_encoder", inputs, {n: FLOAT for n in encoded}, _prompt_encoder(kinds, mode, encoded))
    for variant, multimask in DECODER_VARIANTS.items():
        low_res, iou = f"lowres_{mode}_{variant}", f"iou_{mode}_{variant}"
        decoded = [name for name in (low_res, iou) if case.knows(name)]
        if decoded:
            plan.add(
                f"{mode}/decoder_{variant}",
                ["image_embeddings", "dense_pe", sparse, dense],
                {name: FLOAT for name in decoded},
                _decoder(mode, multimask, low_res, iou, decoded),
            )


# ------------------------------------------------------------------------------------------------------ step bodies


def _image_encoder(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"image_embeddings": ctx.model.encode_image(values["input_image"])}


def _dense_pe(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"dense_pe": ctx.model.prompt_encoder.get_dense_pe()}


def _feedback(source: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"mask_input": values[source]}

    return run


def _prompt_encoder(kinds: tuple[str, ...], mode: str, outputs: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        sparse, dense = ctx.model.embed_prompts(
            points=(values["point_coords"], values["point_labels"]) if "points" in kinds else None,
            boxes=values["box"] if "box" in kinds else None,
            masks=values["mask_input"] if "mask" in kinds else None,
        )
        produced = {f"sparse_{mode}": sparse, f"dense_{mode}": dense}
        return {name: produced[name] for name in outputs}

    return run


def _decoder(mode: str, multimask: bool, low_res: str, iou: str, outputs: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        prediction = ctx.model.mask_decoder(
            image_embeddings=values["image_embeddings"],
            image_pe=values["dense_pe"],
            sparse_prompt_embeddings=values[f"sparse_{mode}"],
            dense_prompt_embeddings=values[f"dense_{mode}"],
            multimask_output=multimask,
        )
        produced = {low_res: prediction.low_res_logits, iou: prediction.iou_predictions}
        return {name: produced[name] for name in outputs}

    return run


# --------------------------------------------------------------------------------------------------- processor

ORIGINAL_PROMPTS = {"points": ("point_coords_orig", "point_labels"), "box": ("box_orig",)}
REFERENCE = re.compile(r"(?P<tensor>\w+)_vs_(?P<label>label_\w+)")


def references(case: Case) -> dict[str, str]:
    """``{mask tensor: label tensor}`` from case.json ``reference_dice`` (``pred_box_binary_vs_label_2d``)."""
    found = {}
    for key in case.spec.get("reference_dice", {}):
        match = REFERENCE.fullmatch(key)
        if not match or not (case.knows(match["tensor"]) and case.knows(match["label"])):
            raise ValueError(f"{case.case_id}: cannot place reference_dice entry {key!r}")
        found[match["tensor"]] = match["label"]
    return found


def _plan_processor(case: Case, plan: Plan, feedback: str | None) -> None:
    known, refs = case.knows, references(case)
    if known("raw_image_rgb") and known("input_image"):
        plan.add("preprocess", ["raw_image_rgb"], {"input_image": FLOAT}, _preprocess)
    if known("box_orig") and known("box"):
        plan.add("map_box", ["box_orig", "raw_image_rgb"], {"box": FLOAT}, _map_box)
    if known("point_coords_orig") and known("point_coords"):
        plan.add("map_points", ["point_coords_orig", "raw_image_rgb"], {"point_coords": FLOAT}, _map_points)
    for mode in modes_in(case.tensor_names):
        logits, binary, low_res = f"pred_{mode}_logits", f"pred_{mode}_binary", f"lowres_{mode}_single"
        outputs = {name: FLOAT if name == logits else Expect("binary") for name in (logits, binary) if known(name)}
        if not outputs:
            continue
        labels = [refs[binary]] if binary in refs else []
        plan.add(
            f"{mode}/to_original",
            [low_res, "raw_image_rgb", *labels],
            outputs,
            _to_original(low_res, logits, binary, labels),
        )
        kinds = parse_mode(mode)
        originals = [name for kind in kinds if kind != "mask" for name in ORIGINAL_PROMPTS[kind]]
        if "mask" in kinds:
            if feedback is None:
                raise ValueError(f"mode {mode!r}: case.json does not say which logits mask_input is")
            originals.append(feedback)
        predicted = {**outputs, low_res: FLOAT, f"iou_{mode}_single": FLOAT}
        plan.add(
            f"{mode}/predictor",
            ["raw_image_rgb", *originals],
            {name: expect for name, expect in predicted.items() if known(name)},
            _predictor(mode, kinds, feedback),
        )
    if known("infer3d_segs") and known("volume") and known("box3d"):
        labels = [refs["infer3d_segs"]] if "infer3d_segs" in refs else []
        rule = case.tolerance.rule("infer3d_segs")
        outputs = {"infer3d_segs": Expect("binary", rule=rule)}
        plan.add("propagate_3d", ["volume", "box3d", *labels], outputs, _propagate(labels))


def _processor(ctx: StepContext) -> LiteMedSAMProcessor:
    processor = ctx.cache.get("processor")
    if processor is None:
        processor = ctx.cache["processor"] = processor_for(ctx.model)
    assert isinstance(processor, LiteMedSAMProcessor)
    return processor


def _check_reference(ctx: StepContext, mask: str, label: str, values: Mapping[str, Tensor]) -> None:
    """case.json's reference Dice of the stored mask against its label must be what the stored tensors give."""
    stated = float(ctx.case.spec["reference_dice"][f"{mask}_vs_{label}"])
    upstream = dice(ctx.case.expected(mask).bool(), values[label].bool())
    if round(upstream, 4) != round(stated, 4):
        raise AssertionError(f"reference_dice {mask}_vs_{label} = {stated} but the stored tensors give {upstream:.6f}")


def _preprocess(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"input_image": _processor(ctx).prepare(values["raw_image_rgb"].numpy()).model_input[None]}


def _map_box(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    processor = _processor(ctx)
    frame = processor.prepare(values["raw_image_rgb"].numpy())
    boxes = boxes_from_user(values["box_orig"], frame.original_shape)
    return {"box": processor.model_kwargs(processor.to_model_space(Prompts(boxes=boxes), frame))["boxes"]}


def _map_points(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    processor = _processor(ctx)
    frame = processor.prepare(values["raw_image_rgb"].numpy())
    rows = []
    for coords in values["point_coords_orig"]:  # one prompt set per row
        points = points_from_user(coords, None, frame.original_shape, "xy")
        rows.append(processor.model_kwargs(processor.to_model_space(Prompts(points=points), frame))["points"][0])
    return {"point_coords": torch.cat(rows)}


def _to_original(low_res: str, logits: str, binary: str, labels: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        for label in labels:
            _check_reference(ctx, binary, label, values)
        processor = _processor(ctx)
        back = processor.to_original(values[low_res], processor.prepare(values["raw_image_rgb"].numpy()))
        produced = {logits: back.logits, binary: back.mask[0, 0]}
        return {name: value for name, value in produced.items() if ctx.case.knows(name)}

    return run


def _predictor(mode: str, kinds: tuple[str, ...], feedback: str | None):
    """``Predictor.set_image`` on the original RGB image (once per case), ``predict`` with original-pixel prompts."""

    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        raw = values["raw_image_rgb"]
        cached = ctx.cache.get("predictor")
        if cached is None or not torch.equal(cached[0], raw):
            predictor = Predictor(ctx.model, processor=_processor(ctx))
            predictor.set_image(raw.numpy())
            ctx.cache["predictor"] = cached = (raw.clone(), predictor)
        kwargs = {}
        if "points" in kinds:
            kwargs["point_coords"] = values["point_coords_orig"][0].numpy()
            kwargs["point_labels"] = values["point_labels"][0].numpy()
        if "box" in kinds:
            kwargs["box"] = values["box_orig"].numpy()
        if "mask" in kinds:
            kwargs["mask_input"] = values[feedback]  # the previous prediction's low-res logits, as a user passes them
        result = cached[1].predict(**kwargs)
        produced = {
            f"pred_{mode}_logits": result.logits[:, None],
            f"pred_{mode}_binary": result.masks[0],
            f"lowres_{mode}_single": result.low_res_logits[:, None],
            f"iou_{mode}_single": result.iou_predictions[:, None],
        }
        return {name: value for name, value in produced.items() if ctx.case.knows(name)}

    return run


def _propagate(labels: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        for label in labels:
            _check_reference(ctx, "infer3d_segs", label, values)
        result = propagate_box(ctx.model, _processor(ctx), values["volume"], values["box3d"].tolist())
        return {"infer3d_segs": result.masks}

    return run
