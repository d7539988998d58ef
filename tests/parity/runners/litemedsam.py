"""LiteMedSAM parity runner (the network; the processor's tensors are listed in ``PROCESSOR_TENSORS``).

Format (case.json ``naming``): prompt modes are named by their prompts joined by ``_`` in the order ``points``,
``box``, ``mask`` (e.g. ``box``, ``points``, ``box_mask``). Network tensors: ``input_image`` -> ``image_embeddings``;
``dense_pe``; for mode ``t`` the prompt encoder gives ``sparse_t`` / ``dense_t`` from ``point_coords`` +
``point_labels``, ``box`` (already in model-input pixels), ``mask_input``, and the mask decoder gives
``lowres_t_{multi|single}`` / ``iou_t_{multi|single}``. ``mask_input`` is ``lowres_box_single`` fed back (the
``box_mask`` mode), so the chained run feeds our own low-res logits.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor

from ..harness import Arg, Case, Expect, Plan, StepContext, build_model as build_checked_model

RELEASED_MODEL = "litemedsam"
FLOAT = Expect("float")
SPATIAL_DIMS = 2
PROMPT_KINDS = ("points", "box", "mask")
PROMPT_INPUTS = {"points": ("point_coords", "point_labels"), "box": ("box",), "mask": ("mask_input",)}
DECODER_VARIANTS = {"multi": True, "single": False}
MASK_FEEDBACK = re.compile(r"(?P<lowres>lowres_\w+_single) fed back as the mask prompt")
TRAINING_ONLY = "training-time option; it does not change the forward pass of loaded weights in eval mode"

# TODO(LiteMedSAM processor): these belong to the family's processor, written separately; until its steps are
# planned here the coverage test lists them as unaccounted.
#   raw_image_rgb -> input_image            resize longest side to 256 (INTER_AREA), min-max to [0, 1], pad
#   box_orig (+ raw_image_rgb) -> box       int(c * 256 / max(H, W))
#   point_coords_orig -> point_coords       SAM's apply_coords scaling
#   lowres_t_single -> pred_t_logits, pred_t_binary   crop [:newh, :neww], bilinear to H x W, sigmoid > 0.5
#   volume + box3d -> infer3d_segs          3D box propagation (CVPR24_LiteMedSAM_infer.py)
#   label_2d, label_3d                      references for Dice only, not compared
PROCESSOR_TENSORS = (
    "raw_image_rgb",
    "box_orig",
    "point_coords_orig",
    "pred_{mode}_logits",
    "pred_{mode}_binary",
    "volume",
    "box3d",
    "infer3d_segs",
    "label_2d",
    "label_3d",
)


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
