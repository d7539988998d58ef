"""SAM-UNet parity runner.

Format (case.json ``tensor_naming`` / ``tensor_meaning``). Image-side tensors are stored once, batched over the
case's images: ``input_image_<i>`` (resized 0..255 image, input) -> ``preprocessed_image`` -> ``conv_feat_<s>``
(ResNet stages) -> ``conv_adapted_<s>`` (``adapters_in``); ``vit_patch_embed`` (before positions),
``vit_block_<KK>_out`` and ``vit_block_<KK>_in`` (the input of a block that receives a conv stage),
``bridge_feat_<j>``, ``image_embeddings``, ``embedding_encoder_out``, ``multi_scale_feature``, ``image_pe``.
Per prompt mode and image: ``<mode>.img<i>.<what>`` with prompts ``input_boxes`` / ``input_point_coords`` /
``input_point_labels`` (inputs), then ``sparse_embeddings``, ``dense_embeddings``, ``dec_hs``, ``dec_src``,
``dec_upscaled_sam``, ``dec_maskfeature``, ``dec_hyper_in``, ``low_res_logits``, ``masks_logits_train``,
``masks_logits_orig`` and ``masks``. Original image sizes come from case.json ``inputs.images``.

Every tensor is checked twice: through the model's own code path (forward hooks record the intermediates of
one ``encode_image`` / ``mask_decoder`` call, and a pipeline step runs the processor's normalise-and-pad ->
``encode_image`` -> ``SamUNetProcessor.decode`` -> ``upsample`` / ``to_original`` from the resized image), and
component by component on upstream's inputs. The fixture starts from the resized image (its original pixels are
not stored), so the frame that maps results back is built from the sizes case.json gives; the whole path from an
original image is the ``sam_unet_pipeline`` case's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor, nn

from zoo.models.components.conv_branch import RESNET_VARIANTS
from zoo.models.sam_unet import SamUNetConfig
from zoo.processors import ImageFrame, SamUNetProcessor, processor_for
from zoo.processors.longest_side import longest_side_frame_map, normalise_and_pad
from zoo.prompts.types import BoxPrompts, PointPrompts, Prompts

from ..harness import Arg, Case, Expect, Plan, StepContext, build_model as build_checked_model

FLOAT = Expect("float")
SPATIAL_DIMS = 2
INIT_ONLY = "initialisation option; weights are loaded"
RELEASED_MODELS = {34: "sam_unet_r34", 50: "sam_unet_r50"}
RESNET_DEPTH = {"resnet34": 34, "resnet50": 50}


def _grid(config: Any) -> int:
    return config.image_size // config.patch_size


def _number_in(text: str) -> int:
    """The image size in upstream's description ``config_dict["img_size"] (set to 64)``."""
    match = re.search(r"set to (\d+)", str(text))
    if not match:
        raise ValueError(f"cannot read an image size from {text!r}")
    return int(match.group(1))


CONSTRUCTOR = {
    "SAM_UNET": {
        "resnet_type": Arg(check=lambda c: RESNET_DEPTH[c.resnet]),
        "is_resnet_pretrained_or_not": Arg(ignore=INIT_ONLY),
        "ori_sam": Arg(ignore="the SAM parts are described by the ImageEncoderViT/PromptEncoder/MaskDecoder blocks"),
        "hardcoded": {
            "transformer_dim": Arg(field="prompt_embed_dim"),
            "img_size": Arg(field="image_size", convert=_number_in),
        },
    },
    "ResNet": {
        "torchvision_class": Arg(text=r"^torchvision\.models\.resnet\.ResNet$"),
        "block": Arg(check=lambda c: RESNET_VARIANTS[c.resnet].block),
        "layers": Arg(field="resnet_layers", convert=tuple),
        "channel_list": Arg(check=lambda c: c.stage_channels),
        "note": Arg(ignore="description"),
    },
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
        "activation": Arg(text=r"^(nn\.)?GELU$"),
        "TwoWayTransformer": {
            "depth": Arg(field="decoder_depth"),
            "embedding_dim": Arg(field="prompt_embed_dim"),
            "mlp_dim": Arg(field="decoder_mlp_dim"),
            "num_heads": Arg(field="decoder_num_heads"),
            "attention_downsample_rate": Arg(field="attention_downsample_rate"),
            "activation": Arg(text=r"^(nn\.)?ReLU$"),
        },
    },
    "SAMMaskDecoderWrapper_Med": {"transformer_dim": Arg(field="prompt_embed_dim")},
    "pixel_mean": Arg(field="pixel_mean", convert=tuple),
    "pixel_std": Arg(field="pixel_std", convert=tuple),
}


def build_model(case: Case) -> nn.Module:
    args = case.spec["constructor_args"]
    resnet_type = args["SAM_UNET"]["resnet_type"]
    if resnet_type not in RELEASED_MODELS:
        raise ValueError(f"{case.case_id}: no SAM-UNet variant with a ResNet-{resnet_type}")
    model = build_checked_model(RELEASED_MODELS[resnet_type], args, CONSTRUCTOR, case.weights_path)
    # The harness checks that every tensor of the file arrived; here also that the model holds no tensor the file lacks.
    loaded = model.state_dict()
    renamed = model.adapt_official_state_dict(load_file(case.weights_path))
    differ = [key for key, value in renamed.items() if not torch.equal(loaded[key], value)]
    if differ or set(renamed) != set(loaded):
        raise AssertionError(f"{case.weights_path}: tensors changed or went missing on the way in: {differ[:5]}")
    return model


# --------------------------------------------------------------------------------------------------- name grammar

IMAGE_INPUT = re.compile(r"input_image_(?P<image>\d+)")
CONV_FEATURE = re.compile(r"conv_(?P<what>feat|adapted)_(?P<stage>\d+)")
VIT_BLOCK = re.compile(r"vit_block_(?P<block>\d+)_(?P<side>in|out)")
BRIDGE = re.compile(r"bridge_feat_(?P<bridge>\d+)")
IMAGE_SIDE = ("preprocessed_image", "vit_patch_embed", "image_embeddings", "embedding_encoder_out",
              "multi_scale_feature", "image_pe")
PER_PROMPT = re.compile(r"(?P<mode>[a-z_]+)\.img(?P<image>\d+)\.(?P<what>\w+)")
PROMPT_INPUTS = ("input_boxes", "input_point_coords", "input_point_labels")
PROMPT_OUTPUTS = ("sparse_embeddings", "dense_embeddings")
DECODER_OUTPUTS = ("dec_hs", "dec_src", "dec_upscaled_sam", "dec_maskfeature", "dec_hyper_in", "low_res_logits")
POSTPROCESS_OUTPUTS = ("masks_logits_train", "masks_logits_orig", "masks")


def _understood(name: str) -> bool:
    if name in IMAGE_SIDE or any(p.fullmatch(name) for p in (IMAGE_INPUT, CONV_FEATURE, VIT_BLOCK, BRIDGE)):
        return True
    match = PER_PROMPT.fullmatch(name)
    return bool(match) and match["what"] in (*PROMPT_INPUTS, *PROMPT_OUTPUTS, *DECODER_OUTPUTS, *POSTPROCESS_OUTPUTS)


def _matching(case: Case, pattern: re.Pattern[str], group: str) -> dict[int, str]:
    """Stored names matching ``pattern``, keyed by the integer in ``group``."""
    return {int(m[group]): m.string for m in map(pattern.fullmatch, case.tensor_names) if m}


def _vit_blocks(case: Case, side: str) -> dict[int, str]:
    return {
        int(m["block"]): m.string for m in map(VIT_BLOCK.fullmatch, case.tensor_names) if m and m["side"] == side
    }


def injection_blocks(case: Case) -> tuple[int, ...]:
    """The ViT blocks that receive a conv stage: those whose input is stored, else upstream's default."""
    stored = tuple(sorted(_vit_blocks(case, "in")))
    return stored or SamUNetConfig().conv_injection_blocks


def prompt_sets(case: Case) -> dict[tuple[str, int], dict[str, str]]:
    """``(mode, image) -> {what: stored name}`` for every per-prompt tensor."""
    found: dict[tuple[str, int], dict[str, str]] = {}
    for name in case.tensor_names:
        match = PER_PROMPT.fullmatch(name)
        if match:
            found.setdefault((match["mode"], int(match["image"])), {})[match["what"]] = name
    return found


# ------------------------------------------------------------------------------------------------------------ plan


def plan(case: Case) -> Plan:
    plan = Plan(not_understood=[name for name in case.tensor_names if not _understood(name)])
    images = _matching(case, IMAGE_INPUT, "image")
    listed = case.spec.get("inputs", {}).get("images", [])
    if sorted(images) != list(range(len(listed))):
        raise ValueError(f"stored images {sorted(images)} do not match the {len(listed)} listed in case.json inputs")
    image_inputs = [images[i] for i in sorted(images)]
    if case.knows("preprocessed_image"):
        plan.add("preprocess", image_inputs, {"preprocessed_image": FLOAT}, _preprocess(image_inputs))
    _plan_image_side(case, plan)
    if case.knows("image_pe"):
        plan.add("image_pe", [], {"image_pe": FLOAT}, _image_pe)
    for (mode, image), names in prompt_sets(case).items():
        _plan_prompt_set(case, plan, mode, image, names, images[image])
    return plan


def _floats(names) -> dict[str, Expect]:
    return {name: FLOAT for name in names}


def _plan_image_side(case: Case, plan: Plan) -> None:
    conv_feat = _matching(case, re.compile(r"conv_feat_(?P<stage>\d+)"), "stage")
    conv_adapted = _matching(case, re.compile(r"conv_adapted_(?P<stage>\d+)"), "stage")
    block_out, block_in = _vit_blocks(case, "out"), _vit_blocks(case, "in")
    bridges = _matching(case, BRIDGE, "bridge")
    injected = injection_blocks(case)
    singles = ("vit_patch_embed", "image_embeddings", "embedding_encoder_out", "multi_scale_feature")
    recorded = [
        *conv_feat.values(), *conv_adapted.values(), *block_out.values(), *block_in.values(), *bridges.values(),
        *(name for name in singles if case.knows(name)),
    ]
    if recorded:
        plan.add("image_encoder", ["preprocessed_image"], _floats(recorded), _encode_recorded(injected, recorded))

    # Component by component, each on upstream's inputs.
    if conv_feat:
        plan.add("resnet", ["preprocessed_image"], _floats(conv_feat.values()), _resnet(conv_feat))
    for stage, name in conv_adapted.items():
        step = _module_step(f"adapters_in.{stage}", conv_feat[stage], name)
        plan.add(f"adapters_in.{stage}", [conv_feat[stage]], _floats([name]), step)
    if case.knows("vit_patch_embed"):
        step = _module_step("image_encoder.patch_embed", "preprocessed_image", "vit_patch_embed")
        plan.add("patch_embed", ["preprocessed_image"], _floats(["vit_patch_embed"]), step)
    # Tokens entering block b: the patch embedding (plus positions) for b = 0, else block b-1's output.
    block_out[-1] = "vit_patch_embed"
    for block, name in sorted(block_in.items()):
        stage, before = injected.index(block), block_out.get(block - 1)
        if before and case.knows(before) and stage in conv_adapted:
            step = _inject(block, stage, before, conv_adapted[stage], name)
            plan.add(f"inject.{stage}", [before, conv_adapted[stage]], _floats([name]), step)
    for block, name in sorted(block_out.items()):
        source = block_in.get(block) or block_out.get(block - 1)
        if block >= 0 and source and case.knows(source):
            plan.add(f"vit_block_{block:02d}", [source], _floats([name]), _vit_block(block, source, name))
    num_bridges = len(injected) - 1
    for bridge, name in bridges.items():
        tapped = block_out.get(injected[num_bridges - 1 - bridge])
        if tapped:
            step = _module_step(f"adapters_bridge.{bridge}", tapped, name, channels_last=True)
            plan.add(f"adapters_bridge.{bridge}", [tapped], _floats([name]), step)
    last = block_out.get(int(case.spec["constructor_args"]["ImageEncoderViT"]["depth"]) - 1)
    if case.knows("image_embeddings") and last:
        plan.add("neck", [last], _floats(["image_embeddings"]), _neck(last))
    if case.knows("embedding_encoder_out"):
        step = _module_step("embedding_encoder", "image_embeddings", "embedding_encoder_out")
        plan.add("embedding_encoder", ["image_embeddings"], _floats(["embedding_encoder_out"]), step)
    if case.knows("multi_scale_feature") and case.knows("embedding_encoder_out") and bridges:
        parts = ["embedding_encoder_out", *(bridges[j] for j in sorted(bridges))]
        plan.add("multi_scale_fusion", parts, _floats(["multi_scale_feature"]), _sum_of(parts, "multi_scale_feature"))


def _plan_prompt_set(case: Case, plan: Plan, mode: str, image: int, names: Mapping[str, str], raw_image: str) -> None:
    prefix = f"{mode}.img{image}"
    prompts = {what: names[what] for what in PROMPT_INPUTS if what in names}
    if not prompts:
        raise ValueError(f"{prefix}: no prompt tensors ({', '.join(PROMPT_INPUTS)}) stored")
    if ("input_point_coords" in prompts) != ("input_point_labels" in prompts):
        raise ValueError(f"{prefix}: point coordinates and labels must be stored together")
    prompt_inputs = list(prompts.values())
    encoded = {what: names[what] for what in PROMPT_OUTPUTS if what in names}
    if encoded:
        step = _prompt_encoder(case, mode, image, prompts, encoded)
        plan.add(f"{prefix}/prompt_encoder", prompt_inputs, _floats(encoded.values()), step)
    decoded = {what: names[what] for what in DECODER_OUTPUTS if what in names}
    sparse, dense = names.get("sparse_embeddings"), names.get("dense_embeddings")
    if decoded:
        if not (sparse and dense):
            raise ValueError(f"{prefix}: decoder tensors are stored without the prompt embeddings they come from")
        inputs = ["image_embeddings", "multi_scale_feature", "image_pe", sparse, dense]
        plan.add(f"{prefix}/mask_decoder", inputs, _floats(decoded.values()), _decoder_recorded(image, inputs, decoded))
        _plan_decoder_components(plan, prefix, image, decoded)
    post = {what: names[what] for what in POSTPROCESS_OUTPUTS if what in names}
    if post:
        low_res = names["low_res_logits"]
        expects = {name: _expect(what, names) for what, name in post.items()}
        step = _postprocess(case, image, low_res, raw_image, post)
        plan.add(f"{prefix}/postprocess", [low_res, raw_image], expects, step)
    end_to_end = {what: names[what] for what in ("low_res_logits", *POSTPROCESS_OUTPUTS) if what in names}
    if end_to_end:
        expects = {name: _expect(what, names) for what, name in end_to_end.items()}
        step = _pipeline(case, image, raw_image, prompts, end_to_end)
        plan.add(f"{prefix}/pipeline", [raw_image, *prompt_inputs], expects, step)


def _expect(what: str, names: Mapping[str, str]) -> Expect:
    return Expect("binary", logits=names.get("masks_logits_orig")) if what == "masks" else FLOAT


def _plan_decoder_components(plan: Plan, prefix: str, image: int, decoded: Mapping[str, str]) -> None:
    def have(*whats: str) -> bool:
        return all(what in decoded for what in whats)

    if have("dec_src", "dec_upscaled_sam"):
        source, target = decoded["dec_src"], decoded["dec_upscaled_sam"]
        plan.add(f"{prefix}/output_upscaling", [source], _floats([target]), _upscale(source, target))
    if have("dec_upscaled_sam", "dec_maskfeature"):
        source, target = decoded["dec_upscaled_sam"], decoded["dec_maskfeature"]
        step = _module_step("mask_decoder.embedding_maskfeature", source, target)
        plan.add(f"{prefix}/embedding_maskfeature", [source], _floats([target]), step)
    if have("dec_hs", "dec_hyper_in"):
        source, target = decoded["dec_hs"], decoded["dec_hyper_in"]
        plan.add(f"{prefix}/hf_mlp", [source], _floats([target]), _hypernetwork(source, target))
    if have("dec_hyper_in", "dec_maskfeature", "low_res_logits"):
        inputs = [decoded["dec_hyper_in"], decoded["dec_maskfeature"], "multi_scale_feature"]
        target = decoded["low_res_logits"]
        plan.add(f"{prefix}/mask_product", inputs, _floats([target]), _mask_product(image, inputs, target))


# ------------------------------------------------------------------------------------------------------ recording


class _Recorder:
    """Forward hooks that keep what named submodules receive or return during one call; removed on exit."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._handles: list[Any] = []

    def output(self, name: str, module: nn.Module) -> None:
        self._handles.append(module.register_forward_hook(lambda _m, _args, out: self.values.__setitem__(name, out)))

    def input(self, name: str, module: nn.Module) -> None:
        self._handles.append(module.register_forward_pre_hook(lambda _m, args: self.values.__setitem__(name, args[0])))

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()


def _check_injection_blocks(model: nn.Module, injected: tuple[int, ...]) -> None:
    if tuple(model.config.conv_injection_blocks) != tuple(injected):
        raise AssertionError(
            f"the fixture injects conv stages before blocks {injected}, the model before "
            f"{model.config.conv_injection_blocks}"
        )


def _encode_recorded(injected: tuple[int, ...], outputs: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        model = ctx.model
        _check_injection_blocks(model, injected)
        encoder = model.image_encoder
        with _Recorder() as rec:
            rec.output("resnet", model.resnet)
            for stage, module in enumerate(model.adapters_in):
                rec.output(f"conv_adapted_{stage}", module)
            rec.output("vit_patch_embed", encoder.patch_embed)
            for index, block in enumerate(encoder.blocks):
                rec.output(f"vit_block_{index:02d}_out", block)
                rec.input(f"vit_block_{index:02d}_in", block)
            for bridge, module in enumerate(model.adapters_bridge):
                rec.output(f"bridge_feat_{bridge}", module)
            rec.output("embedding_encoder_out", model.embedding_encoder)
            encoding = model.encode_image(values["preprocessed_image"])
        produced = dict(rec.values)
        produced.update({f"conv_feat_{stage}": feature for stage, feature in enumerate(produced.pop("resnet"))})
        produced["image_embeddings"] = encoding.image_embeddings
        produced["multi_scale_feature"] = encoding.multi_scale_feature
        return {name: produced[name] for name in outputs}

    return run


def _decoder_recorded(image: int, inputs: list[str], decoded: Mapping[str, str]):
    embeddings, multi_scale, image_pe, sparse, dense = inputs

    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        decoder = ctx.model.mask_decoder
        with _Recorder() as rec:
            rec.output("transformer", decoder.transformer)
            rec.output("dec_upscaled_sam", decoder.output_upscaling)
            rec.output("dec_maskfeature", decoder.embedding_maskfeature)
            rec.output("dec_hyper_in", decoder.hf_mlp)
            prediction = decoder(
                image_embeddings=values[embeddings][image : image + 1],
                image_pe=values[image_pe],
                sparse_prompt_embeddings=values[sparse],
                dense_prompt_embeddings=values[dense],
                multi_scale_feature=values[multi_scale][image : image + 1],
            )
        if prediction.iou_predictions is not None:
            raise AssertionError("SAM-UNet has no IoU head; iou_predictions must be None")
        produced = dict(rec.values)
        produced["dec_hs"], produced["dec_src"] = produced.pop("transformer")
        produced["low_res_logits"] = prediction.low_res_logits
        return {name: produced[what] for what, name in decoded.items()}

    return run


# ------------------------------------------------------------------------------------------------------ step bodies


def _processor(ctx: StepContext) -> SamUNetProcessor:
    processor = processor_for(ctx.model)
    assert isinstance(processor, SamUNetProcessor)
    return processor


def _normalised(processor: SamUNetProcessor, resized: Tensor) -> Tensor:
    """``normalise_and_pad`` of a resized ``3 x h x w`` 0..255 image (the processor's step after the resize)."""
    config = processor.config
    return normalise_and_pad(resized.permute(1, 2, 0).numpy(), config.image_size, config.pixel_mean, config.pixel_std)


def _preprocess(image_inputs: list[str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        processor = _processor(ctx)
        return {"preprocessed_image": torch.stack([_normalised(processor, values[name]) for name in image_inputs])}

    return run


def _module_step(path: str, source: str, target: str, channels_last: bool = False):
    """Run the submodule at dotted ``path`` on ``source`` (NHWC tokens permuted to NCHW if ``channels_last``)."""

    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        module = ctx.model.get_submodule(path)
        x = values[source]
        return {target: module(x.permute(0, 3, 1, 2) if channels_last else x)}

    return run


def _resnet(conv_feat: Mapping[int, str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        features = ctx.model.resnet(values["preprocessed_image"])
        return {name: features[stage] for stage, name in conv_feat.items()}

    return run


def _inject(block: int, stage: int, before: str, adapted: str, target: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        if ctx.model.config.conv_injection_blocks[stage] != block:
            raise AssertionError(f"the fixture adds conv stage {stage} before block {block}; the model does not")
        tokens = values[before]
        if before == "vit_patch_embed":
            tokens = tokens + ctx.model.image_encoder.pos_embed
        return {target: tokens + values[adapted].permute(0, 2, 3, 1)}

    return run


def _vit_block(block: int, source: str, target: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        tokens = values[source]
        if source == "vit_patch_embed":
            tokens = tokens + ctx.model.image_encoder.pos_embed
        return {target: ctx.model.image_encoder.blocks[block](tokens)}

    return run


def _neck(source: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {"image_embeddings": ctx.model.image_encoder.project(values[source])}

    return run


def _sum_of(parts: list[str], target: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        total = values[parts[0]]
        for name in parts[1:]:
            total = total + values[name]
        return {target: total}

    return run


def _image_pe(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {"image_pe": ctx.model.prompt_encoder.get_dense_pe()}


def _listed_prompts(case: Case, mode: str, image: int) -> dict[str, Tensor]:
    """The prompts case.json lists for ``mode`` (``box``, ``points``, ``box_points``); empty for other modes."""
    inputs = case.spec.get("inputs", {})
    listed: dict[str, Tensor] = {}
    boxes = inputs.get("boxes_per_image")
    points = inputs.get("points")
    if mode in ("box", "box_points") and boxes is not None:
        listed["input_boxes"] = torch.tensor(boxes[image], dtype=torch.float32)
    if mode == "points" and points is not None:
        listed["input_point_coords"] = torch.tensor(points[image]["coords"], dtype=torch.float32)
        listed["input_point_labels"] = torch.tensor(points[image]["labels"], dtype=torch.float32)
    if mode == "box_points" and points is not None and boxes is not None:
        count = len(boxes[image])
        listed["input_point_coords"] = torch.tensor([points[image]["coords"][0]] * count, dtype=torch.float32)
        listed["input_point_labels"] = torch.tensor([points[image]["labels"][0]] * count, dtype=torch.float32)
    return listed


def _model_prompts(prompts: Mapping[str, str], values: Mapping[str, Tensor]) -> dict[str, Any]:
    points = None
    if "input_point_coords" in prompts:
        points = (values[prompts["input_point_coords"]], values[prompts["input_point_labels"]])
    boxes = values[prompts["input_boxes"]] if "input_boxes" in prompts else None
    return {"points": points, "boxes": boxes}


def _prompt_encoder(case: Case, mode: str, image: int, prompts: Mapping[str, str], encoded: Mapping[str, str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        for what, expected in _listed_prompts(case, mode, image).items():
            if what in prompts and not torch.equal(values[prompts[what]].float(), expected):
                raise AssertionError(f"{mode}.img{image}: stored {what} differs from the prompts case.json lists")
        sparse, dense = ctx.model.prompt_encoder(**_model_prompts(prompts, values), masks=None)
        produced = {"sparse_embeddings": sparse, "dense_embeddings": dense}
        return {name: produced[what] for what, name in encoded.items()}

    return run


def _upscale(source: str, target: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        grid = _grid(ctx.model.config)
        return {target: ctx.model.mask_decoder.upscale(values[source], (grid, grid))}

    return run


def _hypernetwork(source: str, target: str):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        return {target: ctx.model.mask_decoder.hf_mlp(values[source][:, 0])}

    return run


def _mask_product(image: int, inputs: list[str], target: str):
    hyper_in, mask_feature, multi_scale = inputs

    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        features = values[mask_feature] + values[multi_scale][image : image + 1]
        return {target: ctx.model.mask_decoder.predict_masks(values[hyper_in], features)}

    return run


def _original_size(case: Case, image: int) -> tuple[int, int]:
    height, width = case.spec["inputs"]["images"][image]["original_size"]
    return int(height), int(width)


def _frame(processor: SamUNetProcessor, model_input: Tensor, resized: Tensor, original: tuple[int, int]) -> ImageFrame:
    """The frame ``prepare`` would give for an original image of size ``original`` resized to ``resized``'s size."""
    input_size = (int(resized.shape[-2]), int(resized.shape[-1]))
    to_model = longest_side_frame_map(original, input_size, processor.config.image_size)
    return ImageFrame(model_input, original, to_model, {"input_size": input_size})


def _postprocess(case: Case, image: int, low_res: str, raw_image: str, post: Mapping[str, str]):
    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        processor = _processor(ctx)
        resized = values[raw_image]
        frame = _frame(processor, _normalised(processor, resized), resized, _original_size(case, image))
        produced = _postprocessed(processor, values[low_res], frame)
        return {name: produced[what] for what, name in post.items()}

    return run


def _postprocessed(processor: SamUNetProcessor, low_res: Tensor, frame: ImageFrame) -> dict[str, Tensor]:
    back = processor.to_original(low_res, frame)
    return {
        "masks_logits_train": processor.upsample(low_res),
        "masks_logits_orig": back.logits,
        "masks": back.mask,
    }


def _model_space(prompts: Mapping[str, str], values: Mapping[str, Tensor], shape: tuple[int, ...]) -> Prompts:
    """The stored model-grid prompts (``(x, y)`` points, ``(x0, y0, x1, y1)`` boxes) as the processor's containers."""
    points = boxes = None
    if "input_point_coords" in prompts:
        coords, labels = values[prompts["input_point_coords"]], values[prompts["input_point_labels"]]
        points = PointPrompts(coords.flip(-1).contiguous(), labels.to(torch.int64), shape)
    if "input_boxes" in prompts:
        box = values[prompts["input_boxes"]]
        valid = torch.ones(box.shape[0], dtype=torch.bool)
        boxes = BoxPrompts(box[:, [1, 0]].contiguous(), box[:, [3, 2]].contiguous(), valid, shape)
    return Prompts(points, boxes)


def _pipeline(case: Case, image: int, raw_image: str, prompts: Mapping[str, str], outputs: Mapping[str, str]):
    """Upstream ``infer()`` for one image: the processor's normalisation and padding, ``encode_image``, the processor's
    decode policy (one mask per prompt set), its upsampling and its way back to the original size."""

    def run(ctx: StepContext, values: Mapping[str, Tensor]) -> dict[str, Tensor]:
        processor = _processor(ctx)
        resized = values[raw_image]
        frame = _frame(processor, _normalised(processor, resized), resized, _original_size(case, image))
        encoding = ctx.model.encode_image(frame.model_input[None])
        decoded = processor.decode(ctx.model, encoding, _model_space(prompts, values, processor.input_shape))
        if decoded.iou_predictions is not None:
            raise AssertionError("SAM-UNet has no IoU head; the processor must return no IoU predictions")
        produced = _postprocessed(processor, decoded.low_res_logits, frame)
        produced["low_res_logits"] = decoded.low_res_logits
        return {name: produced[what] for what, name in outputs.items()}

    return run
