"""SAM-Med2D parity runner.

Format (case.json ``naming``): prompt modes are named by the prompts they use joined by ``_`` (``points``,
``box``, ``mask``; e.g. ``points_mask``, ``box_points``). For mode ``t``: ``sparse_t`` / ``dense_t`` (prompt
encoder), ``lowres_t_{multi|single}`` / ``iou_t_{multi|single}`` (mask decoder), ``pred_t_{logits|binary|iou|lowres}``
(the interactive predictor, prompts in original pixels). Inputs shared by the modes: ``point_coords`` /
``point_labels``, ``box``, ``mask_input``. Whole-image tensors: ``raw_image_rgb`` -> ``input_image`` ->
``image_embeddings``, ``dense_pe``; original-pixel prompts ``point_coords_orig`` / ``box_orig`` map to
``point_coords`` / ``box``. The ``testpipe_*`` tensors follow upstream ``test.py``: ``testpipe_raw_image_bgr``
-> ``testpipe_input_image`` -> ``testpipe_image_embeddings``; prompts ``testpipe_box`` (and/or
``testpipe_point_coords`` / ``testpipe_point_labels``, ``testpipe_mask_input``) in the padded frame ->
``testpipe_lowres``, ``testpipe_iou``, ``testpipe_masks_256`` (upsampled to S), ``testpipe_masks_orig``.

Processor steps: ``SamMed2DProcessor.prepare`` in the predictor geometry (``input_image``) and the test-script
geometry (``testpipe_input_image``), ``to_model_space`` + ``model_kwargs`` for the prompts, ``select_best_mask`` +
``feedback`` for ``mask_input`` (when case.json says it is the sigmoid of the best multimask logits), the
model-space ``decode`` / ``upsample`` / ``to_original`` for the test pipeline; ``pred_*`` through the one
``zoo.inference.Predictor`` from the original image, a previous mask given as the previous prediction's low-res
logits (the predictor feeds them as SAM-Med2D's authors do: as probabilities).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from zoo.inference.predictor import Predictor
from zoo.processors import DecodePolicy, SamMed2DProcessor, processor_for, select_best_mask
from zoo.prompts.types import BoxPrompts, MaskPrompts, PointPrompts, Prompts
from zoo.prompts.validate import boxes_from_user, points_from_user

from ..harness import Arg, Case, Expect, Plan, StepContext, build_model as build_checked_model

RELEASED_MODEL = "sam_med2d_b"
FLOAT = Expect("float")
SPATIAL_DIMS = 2
PROMPT_KINDS = ("points", "box", "mask")
DECODER_VARIANTS = {"multi": True, "single": False}
PREDICTOR_OUTPUTS = ("logits", "binary", "iou", "lowres")
TEST_PIPELINE_OUTPUTS = ("testpipe_lowres", "testpipe_iou", "testpipe_masks_256", "testpipe_masks_orig")
INIT_ONLY = "initialisation option; weights are loaded"


def _grid(config: Any) -> int:
    return config.image_size // config.patch_size


def _adapter_mlp_ratio(description: str) -> float:
    """The adapter's hidden ratio from case.json's description of ``Adapter_Layer``; rejects other variants."""
    ratio = re.search(r"mlp_ratio\s*=\s*([0-9.]+)", description)
    if not ratio or "skip_connect=True" not in description or "Adapter_Layer" not in description:
        raise ValueError(f"unsupported adapter description {description!r}")
    return float(ratio.group(1))


CONSTRUCTOR = {
    "ImageEncoderViT": {
        "img_size": Arg(field="image_size"),
        "patch_size": Arg(field="patch_size"),
        "in_chans": Arg(field="in_chans"),
        "embed_dim": Arg(field="embed_dim"),
        "depth": Arg(field="depth"),
        "num_heads": Arg(field="num_heads"),
        "mlp_ratio": Arg(field="mlp_ratio"),
        "out_chans": Arg(check=lambda c: c.prompt_embed_dim),  # our neck outputs the prompt width
        "qkv_bias": Arg(field="qkv_bias"),
        "norm_layer": Arg(text=r"LayerNorm\b.*eps=1e-0?6\b"),
        "act_layer": Arg(text=r"^(nn\.)?GELU(?!.*tanh)"),
        "use_abs_pos": Arg(field="use_abs_pos"),
        "use_rel_pos": Arg(field="use_rel_pos"),
        "rel_pos_zero_init": Arg(ignore=INIT_ONLY),
        "window_size": Arg(field="window_size"),
        "global_attn_indexes": Arg(field="global_attn_indexes", convert=tuple),
        "adapter_train": Arg(field="adapter"),
        "adapter": Arg(field="adapter_mlp_ratio", convert=_adapter_mlp_ratio),
    },
    "PromptEncoder": {
        "embed_dim": Arg(field="prompt_embed_dim"),
        "image_embedding_size": Arg(check=lambda c: [_grid(c)] * SPATIAL_DIMS),
        "input_image_size": Arg(check=lambda c: [c.image_size] * SPATIAL_DIMS),
        "mask_in_chans": Arg(field="mask_in_chans"),
        "activation": Arg(text=r"^(nn\.)?GELU$"),
    },
    "MaskDecoder": {
        "transformer_dim": Arg(field="prompt_embed_dim"),
        "num_multimask_outputs": Arg(field="num_multimask_outputs"),
        "activation": Arg(text=r"^(nn\.)?GELU$"),
        "iou_head_depth": Arg(field="iou_head_depth"),
        "iou_head_hidden_dim": Arg(field="iou_head_hidden_dim"),
    },
    "TwoWayTransformer": {
        "depth": Arg(field="decoder_depth"),
        "embedding_dim": Arg(field="prompt_embed_dim"),
        "mlp_dim": Arg(field="decoder_mlp_dim"),
        "num_heads": Arg(field="decoder_num_heads"),
        "activation": Arg(text=r"^(nn\.)?ReLU$"),
        "attention_downsample_rate": Arg(field="attention_downsample_rate"),
    },
    "Sam": {
        "pixel_mean": Arg(field="pixel_mean", convert=tuple),
        "pixel_std": Arg(field="pixel_std", convert=tuple),
    },
}


def build_model(case: Case) -> torch.nn.Module:
    return build_checked_model(RELEASED_MODEL, case.spec["constructor"], CONSTRUCTOR, case.weights_path)


# --------------------------------------------------------------------------------------------------- name grammar


def parse_mode(text: str) -> tuple[str, ...] | None:
    """``"points_mask"`` -> ``("points", "mask")``; None if ``text`` is not a prompt mode."""
    parts = tuple(text.split("_"))
    if not parts or len(set(parts)) != len(parts) or not set(parts) <= set(PROMPT_KINDS):
        return None
    return parts


MODE_PATTERNS = {
    "prompt_encoder": re.compile(r"(?P<what>sparse|dense)_(?P<mode>[a-z_]+)"),
    "decoder": re.compile(r"(?P<what>lowres|iou)_(?P<mode>[a-z_]+)_(?P<variant>multi|single)"),
    "predictor": re.compile(r"pred_(?P<mode>[a-z_]+)_(?P<what>logits|binary|iou|lowres)"),
}


def modes_in(names: tuple[str, ...]) -> list[str]:
    """Every prompt mode that some stored tensor name refers to, in first-seen order."""
    found: list[str] = []
    for name in names:
        for pattern in MODE_PATTERNS.values():
            match = pattern.fullmatch(name)
            if match and parse_mode(match["mode"]) and match["mode"] not in found:
                found.append(match["mode"])
    return found


MASK_FEEDBACK = re.compile(r"sigmoid\((?P<lowres>lowres_\w+_multi)\[:, argmax\((?P<iou>iou_\w+_multi)\)\]\)")


def mask_feedback_source(case: Case) -> tuple[str, str] | None:
    """``(lowres, iou)``: the multimask decoder outputs whose best mask, as probabilities, case.json says
    ``mask_input`` is (SAM-Med2D feeds a previous mask back as sigmoid probabilities); None if it says otherwise."""
    meaning = case.spec.get("tensors", {}).get("mask_input", {})
    text = meaning if isinstance(meaning, str) else meaning.get("meaning", "")
    match = MASK_FEEDBACK.search(text)
    if not match or not (case.knows(match["lowres"]) and case.knows(match["iou"])):
        return None
    return match["lowres"], match["iou"]


def _flag_from_meaning(case: Case, name: str, flag: str) -> bool:
    """A call flag (e.g. ``multimask_output=True``) read from the meaning case.json gives for tensor ``name``."""
    meaning = case.spec.get("tensors", {}).get(name, {}).get("meaning", "")
    match = re.search(rf"\b{flag}\s*=\s*(True|False)\b", meaning)
    if not match:
        raise ValueError(f"case.json does not say which {flag} produced {name!r}")
    return match.group(1) == "True"


# ------------------------------------------------------------------------------------------------------------ plan


def plan(case: Case) -> Plan:
    plan = Plan()
    known = case.knows
    if known("raw_image_rgb") and known("input_image"):
        plan.add("preprocess_predictor", ["raw_image_rgb"], {"input_image": FLOAT}, _preprocess_predictor)
    if known("image_embeddings"):
        encode = _encoder("input_image", "image_embeddings")
        plan.add("image_encoder", ["input_image"], {"image_embeddings": FLOAT}, encode)
    if known("dense_pe"):
        plan.add("dense_pe", [], {"dense_pe": FLOAT}, _dense_pe)
    if known("point_coords_orig") and known("point_coords"):
        plan.add("map_points", ["point_coords_orig", "raw_image_rgb"], {"point_coords": FLOAT}, _map_points)
    if known("box_orig") and known("box"):
        plan.add("map_box", ["box_orig", "raw_image_rgb"], {"box": FLOAT}, _map_box)
    feedback = mask_feedback_source(case)
    if feedback:
        plan.add("mask_feedback", list(feedback), {"mask_input": FLOAT}, _mask_feedback(*feedback))
    for mode in modes_in(case.tensor_names):
        _plan_mode(case, plan, mode)
    if any(name.startswith("testpipe_") for name in case.tensor_names):
        _plan_test_pipeline(case, plan)
    return plan


def _prompt_inputs(kinds: tuple[str, ...], prefix: str = "") -> dict[str, list[str]]:
    names = {"points": ["point_coords", "point_labels"], "box": ["box"], "mask": ["mask_input"]}
    return {kind: [prefix + name for name in names[kind]] for kind in kinds}


def _plan_mode(case: Case, plan: Plan, mode: str) -> None:
    kinds = parse_mode(mode)
    inputs = _prompt_inputs(kinds)
    flat_inputs = [name for kind in kinds for name in inputs[kind]]
    sparse, dense = f"sparse_{mode}", f"dense_{mode}"
    encoded = [name for name in (sparse, dense) if case.knows(name)]
    if encoded:
        plan.add(
            f"{mode}/prompt_encoder",
            flat_inputs,
            {name: FLOAT for name in encoded},
            _prompt_encoder(inputs, sparse, dense, encoded),
        )
    for variant, multimask in DECODER_VARIANTS.items():
        low_res, iou = f"lowres_{mode}_{variant}", f"iou_{mode}_{variant}"
        decoded = [name for name in (low_res, iou) if case.knows(name)]
        if decoded:
            plan.add(
                f"{mode}/decoder_{variant}",
                ["image_embeddings", "dense_pe", sparse, dense],
                {name: FLOAT for name in decoded},
                _decoder(sparse, dense, multimask, low_res, iou, decoded),
            )
    predicted = {what: f"pred_{mode}_{what}" for what in PREDICTOR_OUTPUTS if case.knows(f"pred_{mode}_{what}")}
    if predicted:
        multimask = {_flag_from_meaning(case, name, "multimask_output") for name in predicted.values()}
        if len(multimask) != 1:
            raise ValueError(f"mode {mode!r}: predictor tensors disagree on multimask_output")
        original = {"points": ["point_coords_orig", "point_labels"], "box": ["box_orig"]}
        if "mask" in kinds:
            original["mask"] = [_previous_prediction(case)]
        predictor_inputs = {kind: original[kind] for kind in kinds}
        outputs = {
            name: Expect("binary", logits=predicted.get("logits")) if what == "binary" else FLOAT
            for what, name in predicted.items()
        }
        plan.add(
            f"{mode}/predictor",
            ["raw_image_rgb", *[name for kind in kinds for name in predictor_inputs[kind]]],
            outputs,
            _predictor(predictor_inputs, predicted, multimask.pop()),
        )


def _previous_prediction(case: Case) -> str:
    """The predictor output a user passes back as ``mask_input``: the low-res logits of the prediction whose
    best multimask output ``mask_input`` is (``pred_<mode>_lowres`` for ``mask_input = sigmoid(lowres_<mode>_multi
    [best])``)."""
    source = mask_feedback_source(case)
    match = re.fullmatch(r"lowres_(?P<mode>\w+)_multi", source[0]) if source else None
    name = f"pred_{match['mode']}_lowres" if match else None
    if name is None or not case.knows(name):
        raise ValueError(
            "a predictor mode with a mask needs the previous prediction's low-res logits; case.json does not name them"
        )
    return name


def _plan_test_pipeline(case: Case, plan: Plan) -> None:
    """Upstream ``test.py``: pad-or-stretch preprocessing, decoder with best-IoU selection, crop-or-resize back."""
    plan.add(
        "testpipe/preprocess", ["testpipe_raw_image_bgr"], {"testpipe_input_image": FLOAT}, _preprocess_evaluation
    )
    plan.add(
        "testpipe/image_encoder",
        ["testpipe_input_image"],
        {"testpipe_image_embeddings": FLOAT},
        _encoder("testpipe_input_image", "testpipe_image_embeddings"),
    )
    first_input = {"points": "testpipe_point_coords", "box": "testpipe_box", "mask": "testpipe_mask_input"}
    kinds = tuple(kind for kind, name in first_input.items() if case.knows(name))
    outputs = [name for name in TEST_PIPELINE_OUTPUTS if case.knows(name)]
    if not (kinds and outputs):
        return  # whatever is left is reported by the coverage check
    multimask = _flag_from_meaning(case, "testpipe_lowres", "multimask")
    inputs = _prompt_inputs(kinds, prefix="testpipe_")
    plan.add(
        "testpipe/decode",
        ["testpipe_image_embeddings", "testpipe_raw_image_bgr", *[n for kind in kinds for n in inputs[kind]]],
        {name: FLOAT for name in outputs},
        _evaluation_decode(inputs, multimask, outputs),
    )


# ------------------------------------------------------------------------------------------------------ step bodies


def _size_of(raw_image: Tensor) -> tuple[int, int]:
    return int(raw_image.shape[0]), int(raw_image.shape[1])


def _processor(ctx: StepContext, multimask: bool | None = None) -> SamMed2DProcessor:
    """The model's own processor (sized from its config); with ``multimask`` differing from its policy, a copy
    whose decode policy returns that output instead."""
    processor = processor_for(ctx.model)
    assert isinstance(processor, SamMed2DProcessor)
    if multimask is not None and multimask != processor.policy.multimask_output:
        policy = DecodePolicy(**{**vars(processor.policy), "multimask_output": multimask})
        processor = SamMed2DProcessor(type(processor.config)(**{**vars(processor.config), "decode": policy}))
    return processor


def _preprocess_predictor(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    frame = _processor(ctx).prepare(values["raw_image_rgb"], geometry="predictor")
    return {"input_image": frame.model_input[None]}


def _preprocess_evaluation(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    # test.py normalises the BGR array as read (no channel swap): the processor sees three channels either way.
    frame = _processor(ctx).prepare(values["testpipe_raw_image_bgr"], geometry="test_script")
    return {"testpipe_input_image": frame.model_input[None]}


def _encoder(image: str, embeddings: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {embeddings: ctx.model.image_encoder(values[image])}

    return run


def _dense_pe(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"dense_pe": ctx.model.prompt_encoder.get_dense_pe()}


def _map_points(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    processor = _processor(ctx)
    frame = processor.prepare(values["raw_image_rgb"], geometry="predictor")
    rows = []
    for coords in values["point_coords_orig"]:  # one prompt set per row
        points = points_from_user(coords, None, frame.original_shape, "xy")
        on_model = processor.to_model_space(Prompts(points=points), frame)
        rows.append(processor.model_kwargs(on_model)["points"][0])
    return {"point_coords": torch.cat(rows)}


def _map_box(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    processor = _processor(ctx)
    frame = processor.prepare(values["raw_image_rgb"], geometry="predictor")
    boxes = boxes_from_user(values["box_orig"], frame.original_shape)
    on_model = processor.to_model_space(Prompts(boxes=boxes), frame)
    return {"box": processor.model_kwargs(on_model)["boxes"]}


def _mask_feedback(lowres: str, iou: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        best, _ = select_best_mask(values[lowres], values[iou])
        return {"mask_input": _processor(ctx).feedback(best).logits}

    return run


def _model_prompts(inputs: Mapping[str, list[str]], values: Mapping[str, Tensor]) -> dict[str, Any]:
    points = inputs.get("points")
    return {
        "points": (values[points[0]], values[points[1]]) if points else None,
        "boxes": values[inputs["box"][0]] if "box" in inputs else None,
        "masks": values[inputs["mask"][0]] if "mask" in inputs else None,
    }


def _prompt_encoder(inputs: Mapping[str, list[str]], sparse: str, dense: str, outputs: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        sparse_out, dense_out = ctx.model.prompt_encoder(**_model_prompts(inputs, values))
        produced = {sparse: sparse_out, dense: dense_out}
        return {name: produced[name] for name in outputs}

    return run


def _decoder(sparse: str, dense: str, multimask: bool, low_res: str, iou: str, outputs: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        prediction = ctx.model.mask_decoder(
            image_embeddings=values["image_embeddings"],
            image_pe=values["dense_pe"],
            sparse_prompt_embeddings=values[sparse],
            dense_prompt_embeddings=values[dense],
            multimask_output=multimask,
        )
        produced = {low_res: prediction.low_res_logits, iou: prediction.iou_predictions}
        return {name: produced[name] for name in outputs}

    return run


def _single_prompt_set(name: str, tensor: Tensor) -> Tensor:
    if tensor.shape[0] != 1:
        raise ValueError(f"{name}: the predictor takes one prompt set per call, got batch {tensor.shape[0]}")
    return tensor[0]


def _predictor(inputs: Mapping[str, list[str]], predicted: Mapping[str, str], multimask: bool):
    """``Predictor.set_image`` on the original RGB image (once per case), then ``predict`` with prompts in original
    pixels and, for a mask mode, the previous prediction's low-res logits as ``mask_input``."""

    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        predictor = _cached_predictor(ctx, values["raw_image_rgb"], multimask)
        kwargs: dict[str, Any] = {}
        if "points" in inputs:
            coords, labels = inputs["points"]
            kwargs["point_coords"] = _single_prompt_set(coords, values[coords])
            kwargs["point_labels"] = _single_prompt_set(labels, values[labels])
        if "box" in inputs:
            kwargs["box"] = values[inputs["box"][0]]
        if "mask" in inputs:
            kwargs["mask_input"] = values[inputs["mask"][0]]
        result = predictor.predict(**kwargs)
        produced = {
            "logits": result.logits,
            "binary": result.masks,
            "iou": result.iou_predictions,
            "lowres": result.low_res_logits,
        }
        return {name: produced[what] for what, name in predicted.items()}

    return run


def _cached_predictor(ctx: StepContext, raw_image: Tensor, multimask: bool) -> Predictor:
    """One predictor per case and decode policy: the image is embedded once and every prompt mode reuses it."""
    key = f"predictor/{multimask}"
    cached = ctx.cache.get(key)
    if cached is None or not torch.equal(cached[0], raw_image):
        predictor = Predictor(ctx.model, processor=_processor(ctx, multimask))
        predictor.set_image(raw_image.numpy())
        ctx.cache[key] = cached = (raw_image, predictor)
    return cached[1]


def _model_space(inputs: Mapping[str, list[str]], values: Mapping[str, Tensor], shape: tuple[int, ...]) -> Prompts:
    """SAM-format prompts already on the model grid (``(x, y)`` points, ``(x0, y0, x1, y1)`` boxes, mask prompts as
    the network takes them) as the processor's containers."""
    points = boxes = masks = None
    if "points" in inputs:
        coords, labels = (values[name] for name in inputs["points"])
        points = PointPrompts(coords.flip(-1).float().contiguous(), labels.to(torch.int64), shape)
    if "box" in inputs:
        box = values[inputs["box"][0]].float().reshape(-1, 4)
        valid = torch.ones(len(box), dtype=torch.bool)
        boxes = BoxPrompts(box[:, [1, 0]].contiguous(), box[:, [3, 2]].contiguous(), valid, shape)
    if "mask" in inputs:
        masks = MaskPrompts(values[inputs["mask"][0]])
    return Prompts(points, boxes, masks)


def _evaluation_decode(inputs: Mapping[str, list[str]], multimask: bool, outputs: list[str]):
    """test.py on the model grid: the processor's decode policy (best of three by predicted IoU), its upsampling to
    ``S x S`` and its way back to the original size in the test-script geometry (centre crop or resize)."""

    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        processor = _processor(ctx, multimask)
        frame = processor.prepare(values["testpipe_raw_image_bgr"], geometry="test_script")
        prompts = _model_space(inputs, values, processor.input_shape)
        decoded = processor.decode(ctx.model, values["testpipe_image_embeddings"], prompts)
        produced = {
            "testpipe_lowres": decoded.low_res_logits,
            "testpipe_iou": decoded.iou_predictions,
            "testpipe_masks_256": processor.upsample(decoded.low_res_logits),
            "testpipe_masks_orig": processor.to_original(decoded.low_res_logits, frame).logits,
        }
        return {name: produced[name] for name in outputs}

    return run
