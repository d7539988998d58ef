"""SAM-Med3D parity runner.

Format (case.json ``naming``): ``cases`` lists prompt cases by name, each with its points (or null) and a mask
source (null, ``explicit tensor NAME`` or ``fed back from NAME``). Per case ``c``: ``c.point_coords`` /
``c.point_labels`` (inputs), ``c.mask_input`` (explicit mask input), ``c.sparse_embeddings``,
``c.dense_embeddings``, ``c.{single|multimask}.{low_res_masks|iou_predictions}``,
``c.{variant}.upsampled_logits`` and ``c.{variant}.binary_mask``; shared: ``image``, ``image_embeddings``,
``dense_pe``.

The fixture's ``image`` is a model-ready crop, so the end-to-end step goes through the processor's model-space API
(``SamMed3DProcessor.decode`` on ``model.encode_image``, then ``upsample`` / ``binarize``); the file-to-mask path
(``Predictor``, ``zoo predict``) is the ``sam_med3d_pipeline`` case's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from zoo.processors import SamMed3DProcessor, processor_for
from zoo.prompts.types import MaskPrompts, PointPrompts, Prompts

from ..harness import Arg, Case, Expect, Plan, StepContext, build_model as build_checked_model, window_padded_tokens

RELEASED_MODEL = "sam_med3d_turbo"
FLOAT = Expect("float")
SPATIAL_DIMS = 3
VARIANTS = {"single": False, "multimask": True}
INIT_ONLY = "initialisation option; weights are loaded"


def _grid(config: Any) -> int:
    return config.image_size // config.patch_size


CONSTRUCTOR = {
    "image_encoder": {
        "img_size": Arg(field="image_size"),
        "patch_size": Arg(field="patch_size"),
        "in_chans": Arg(field="in_chans"),
        "embed_dim": Arg(field="embed_dim"),
        "depth": Arg(field="depth"),
        "num_heads": Arg(field="num_heads"),
        "mlp_ratio": Arg(field="mlp_ratio"),
        # Our neck always outputs the prompt/decoder width.
        "out_chans": Arg(check=lambda c: c.prompt_embed_dim),
        "qkv_bias": Arg(field="qkv_bias"),
        "norm_layer": Arg(text=r"LayerNorm\b.*eps=1e-0?6\b"),
        "act_layer": Arg(text=r"^(nn\.)?GELU(?!.*tanh)"),
        "use_abs_pos": Arg(field="use_abs_pos"),
        "use_rel_pos": Arg(field="use_rel_pos"),
        "rel_pos_zero_init": Arg(ignore=INIT_ONLY),
        "window_size": Arg(field="window_size"),
        "global_attn_indexes": Arg(field="global_attn_indexes", convert=tuple),
    },
    "prompt_encoder": {
        "embed_dim": Arg(field="prompt_embed_dim"),
        "image_embedding_size": Arg(check=lambda c: [_grid(c)] * SPATIAL_DIMS),
        "input_image_size": Arg(check=lambda c: [c.image_size] * SPATIAL_DIMS),
        "mask_in_chans": Arg(field="mask_in_chans"),
        "activation": Arg(text=r"^(nn\.)?GELU$"),
    },
    "mask_decoder": {
        "transformer_dim": Arg(field="prompt_embed_dim"),
        "num_multimask_outputs": Arg(field="num_multimask_outputs"),
        "activation": Arg(text=r"^(nn\.)?GELU$"),
        "iou_head_depth": Arg(field="iou_head_depth"),
        "iou_head_hidden_dim": Arg(field="iou_head_hidden_dim"),
        "transformer (hard-coded inside MaskDecoder3D)": {
            "class": Arg(text=r"^TwoWayTransformer3D$"),
            "depth": Arg(field="decoder_depth"),
            "embedding_dim": Arg(field="prompt_embed_dim"),
            "num_heads": Arg(field="decoder_num_heads"),
            "mlp_dim": Arg(field="decoder_mlp_dim"),
            "activation": Arg(text=r"^(nn\.)?ReLU$"),
            "attention_downsample_rate": Arg(field="attention_downsample_rate"),
        },
    },
    "sam3d": {
        "pixel_mean": Arg(ignore="SAM leftover buffer, unused by SAM-Med3D inference"),
        "pixel_std": Arg(ignore="SAM leftover buffer, unused by SAM-Med3D inference"),
        "note": Arg(ignore="description"),
    },
    "derived": {
        "embedding_grid": Arg(check=_grid),
        "low_res_mask_size": Arg(check=lambda c: 4 * _grid(c)),
        # Tokens of the whole padded grid (grid rounded up to a multiple of the window), not of one window.
        "num_tokens_window_padded": Arg(
            check=lambda c: window_padded_tokens(_grid(c), c.window_size, SPATIAL_DIMS)
        ),
    },
}


def build_model(case: Case) -> torch.nn.Module:
    return build_checked_model(RELEASED_MODEL, case.spec["constructors"], CONSTRUCTOR, case.weights_path)


def mask_source(prompt_case: str, entry: Mapping[str, Any]) -> str | None:
    """The tensor a prompt case feeds as its mask prompt, or None."""
    source = entry.get("mask")
    if source is None:
        return None
    match = re.fullmatch(r"\s*(?:explicit tensor|fed back from)\s+(\S+)\s*", str(source))
    if not match:
        raise ValueError(f"prompt case {prompt_case!r}: cannot read the mask source {source!r}")
    return match.group(1)


def plan(case: Case) -> Plan:
    plan = Plan()
    plan.add("image_encoder", ["image"], {"image_embeddings": FLOAT}, _encode)
    plan.add("dense_pe", [], {"dense_pe": FLOAT}, _dense_pe)
    for name, entry in case.spec["cases"].items():
        _plan_prompt_case(case, plan, name, entry)
    return plan


def _encode(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"image_embeddings": ctx.model.image_encoder(values["image"])}


def _dense_pe(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"dense_pe": ctx.model.prompt_encoder.get_dense_pe()}


def _stored(case: Case, names: list[str]) -> list[str]:
    return [name for name in names if case.knows(name)]


def _plan_prompt_case(case: Case, plan: Plan, name: str, entry: Mapping[str, Any]) -> None:
    listed_points = entry.get("points")
    coords_name, labels_name = f"{name}.point_coords", f"{name}.point_labels"
    point_inputs = [coords_name, labels_name] if listed_points is not None else []
    mask_name = mask_source(name, entry)
    prompt_inputs = point_inputs + ([mask_name] if mask_name else [])
    sparse, dense = f"{name}.sparse_embeddings", f"{name}.dense_embeddings"

    def prompt_encoder(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        points = None
        if listed_points is not None:
            points = (values[coords_name], values[labels_name])
            _check_listed_points(name, listed_points, *points)
        masks = values[mask_name] if mask_name else None
        sparse_out, dense_out = ctx.model.prompt_encoder(points=points, boxes=None, masks=masks)
        return {sparse: sparse_out, dense: dense_out}

    plan.add(f"{name}/prompt_encoder", prompt_inputs, {sparse: FLOAT, dense: FLOAT}, prompt_encoder)

    for variant, multimask in VARIANTS.items():
        low_res, iou = f"{name}.{variant}.low_res_masks", f"{name}.{variant}.iou_predictions"
        outputs = _stored(case, [low_res, iou])
        if outputs:
            plan.add(
                f"{name}/decoder_{variant}",
                ["image_embeddings", "dense_pe", sparse, dense],
                {output: FLOAT for output in outputs},
                _decoder(sparse, dense, multimask, low_res, iou, outputs),
            )
        upsampled, binary = f"{name}.{variant}.upsampled_logits", f"{name}.{variant}.binary_mask"
        if case.knows(upsampled):
            post_outputs = {upsampled: FLOAT}
            if case.knows(binary):
                post_outputs[binary] = Expect("binary", logits=upsampled)
            plan.add(
                f"{name}/postprocess_{variant}",
                [low_res, "image"],
                post_outputs,
                _postprocess(low_res, upsampled, binary, list(post_outputs)),
            )

    # The processor's decode policy (single mask), upsampling and threshold must reproduce the single-mask path.
    single = {
        "low_res": f"{name}.single.low_res_masks",
        "iou": f"{name}.single.iou_predictions",
        "logits": f"{name}.single.upsampled_logits",
        "masks": f"{name}.single.binary_mask",
    }
    stored = {key: value for key, value in single.items() if case.knows(value)}
    if stored and case.shape("image")[0] == 1:
        outputs = {
            value: Expect("binary", logits=single["logits"]) if key == "masks" else FLOAT
            for key, value in stored.items()
        }
        step = _processor_path(point_inputs, mask_name, stored)
        plan.add(f"{name}/processor", ["image", *prompt_inputs], outputs, step)


def _check_listed_points(name: str, listed: Mapping[str, Any], coords: Tensor, labels: Tensor) -> None:
    """case.json lists the points too; they must be the stored tensors."""
    expected_coords = torch.tensor(listed["coords"], dtype=coords.dtype)
    expected_labels = torch.tensor(listed["labels"], dtype=labels.dtype)
    if not (torch.equal(coords, expected_coords) and torch.equal(labels, expected_labels)):
        raise AssertionError(f"prompt case {name!r}: stored points differ from the points case.json lists")


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


def _processor(ctx: StepContext) -> SamMed3DProcessor:
    processor = ctx.cache.get("processor")
    if processor is None:
        processor = ctx.cache["processor"] = processor_for(ctx.model)
    assert isinstance(processor, SamMed3DProcessor)
    return processor


def _postprocess(low_res: str, upsampled: str, binary: str, outputs: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        processor = _processor(ctx)
        if tuple(values["image"].shape[-SPATIAL_DIMS:]) != processor.input_shape:
            shape = tuple(values["image"].shape)
            raise AssertionError(f"the processor upsamples to {processor.input_shape}, the image is {shape}")
        logits = processor.upsample(values[low_res])
        produced = {upsampled: logits, binary: processor.binarize(logits)}
        return {name: produced[name] for name in outputs}

    return run


def _processor_path(point_inputs: list[str], mask_name: str | None, stored: Mapping[str, str]):
    """``encode_image`` once per case, then ``SamMed3DProcessor.decode`` (its single-mask policy) on the model grid,
    ``upsample`` and ``binarize``."""

    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        processor = _processor(ctx)
        encoding = _cached_encoding(ctx, values["image"])
        points = None
        if point_inputs:
            points = PointPrompts(values[point_inputs[0]], values[point_inputs[1]], processor.input_shape)
        masks = MaskPrompts(values[mask_name]) if mask_name else None
        decoded = processor.decode(ctx.model, encoding, Prompts(points, None, masks))
        logits = processor.upsample(decoded.low_res_logits)
        produced = {
            "low_res": decoded.low_res_logits,
            "iou": decoded.iou_predictions,
            "logits": logits,
            "masks": processor.binarize(logits),
        }
        return {name: produced[key] for key, name in stored.items()}

    return run


def _cached_encoding(ctx: StepContext, image: Tensor) -> Tensor:
    """The image is encoded once per case and reused by every prompt case (the chained and isolated runs give
    the fixture's own image, so the cache is keyed on its values)."""
    cached = ctx.cache.get("encoding")
    if cached is None or not torch.equal(cached[0], image):
        ctx.cache["encoding"] = cached = (image, ctx.model.encode_image(image))
    return cached[1]
