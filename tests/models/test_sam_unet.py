"""SAM-UNet: configuration, forward behaviour, key mapping, training freeze, initialisation and Hub round trip.

Numerical agreement with upstream is the parity suite's job (tests/parity, runner ``sam_unet``); the tests here
that read the upstream fixture folder say so and skip without it (under ``CI=true`` they fail instead).
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

import zoo
from zoo.hub.loading import load_official_weights
from zoo.models.sam_unet import SamUNet, SamUNetConfig, sam_unet_r34, sam_unet_r50, upstream_to_zoo_keys
from zoo.hub.sam_unet_init import init_sam_unet

REPO_ROOT = Path(__file__).resolve().parents[2]
IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def _fixture_folder() -> Path:
    """``sam_unet/`` under ``$ZOO_PARITY_DIR`` (default ``../shared/parity``), else under the pending root."""
    roots = [
        Path(os.environ.get("ZOO_PARITY_DIR") or REPO_ROOT.parent / "shared" / "parity"),
        Path(os.environ.get("ZOO_PARITY_PENDING_DIR") or REPO_ROOT.parent / "shared" / "parity-pending"),
    ]
    for root in roots:
        if (root / "sam_unet" / "case.json").is_file():
            return root / "sam_unet"
    return roots[0] / "sam_unet"


FIXTURE = _fixture_folder()

# The parity fixture's architecture: full ResNet widths and decoder width, everything else shrunk.
TINY = dict(image_size=64, embed_dim=48, num_heads=2, window_size=3, resnet_layers=(1, 1, 1, 1), decoder_mlp_dim=64)
UPSTREAM_NAMES = {"sam_unet_r34": "res34_sam_unet", "sam_unet_r50": "res50_sam_unet"}


def needs_fixture() -> None:
    if not (FIXTURE / "case.json").is_file():
        message = f"no SAM-UNet parity fixture at {FIXTURE} (set ZOO_PARITY_DIR)"
        if IN_CI:
            pytest.fail(message + "; under CI=true the fixtures must be present")
        pytest.skip(message)


@pytest.fixture(scope="module")
def tiny() -> SamUNet:
    torch.manual_seed(0)
    return sam_unet_r34(**TINY).eval()


@pytest.fixture(scope="module")
def full_size() -> dict[str, SamUNet]:
    """Each released architecture built once for the module (about 0.5 GB each)."""
    torch.manual_seed(0)
    return {"sam_unet_r34": sam_unet_r34(), "sam_unet_r50": sam_unet_r50()}


def image_batch(batch: int = 1, size: int = 64) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(1))


BOXES = torch.tensor([[4.0, 6.0, 40.0, 30.0], [20.5, 10.0, 60.0, 44.0]])


# ----------------------------------------------------------------------------------------------------- registry


def test_released_variants_are_registered():
    assert zoo.list_models("sam_unet*") == ["sam_unet_r34", "sam_unet_r50"]
    assert zoo.create_model("sam_unet_r50", **TINY).config.resnet == "resnet50"


def test_importing_zoo_registers_the_family():
    """A fresh interpreter: ``zoo.create_model('sam_unet_r34')`` and ``zoo.from_pretrained`` need no extra import."""
    code = (
        "import zoo; from zoo.registry import family_class; "
        "print(zoo.list_models('sam_unet*'), family_class('sam_unet').__name__)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr.strip().splitlines()[-1]
    assert result.stdout.split() == ["['sam_unet_r34',", "'sam_unet_r50']", "SamUNet"]


def test_default_config_is_upstream_res34_sam_unet():
    config = SamUNetConfig()
    assert (config.image_size, config.patch_size, config.embed_dim) == (256, 16, 768)
    assert (config.depth, config.num_heads) == (12, 12)
    assert (config.window_size, config.global_attn_indexes) == (14, (2, 5, 8, 11))
    assert config.resnet == "resnet34" and config.resnet_layers is None
    assert config.conv_injection_blocks == (2, 5, 8, 11)
    assert (config.prompt_embed_dim, config.decoder_depth, config.decoder_mlp_dim) == (256, 2, 2048)


# ------------------------------------------------------------------------------------------------------ forward


def test_predicts_one_low_res_mask_per_prompt_set_and_no_iou(tiny):
    with torch.inference_mode():
        prediction = tiny(image_batch(2), boxes=BOXES)
    assert prediction.low_res_logits.shape == (2, 1, 16, 16)
    assert prediction.iou_predictions is None


def test_multimask_output_is_refused(tiny):
    with pytest.raises(ValueError, match="single mask"):
        tiny(image_batch(), boxes=BOXES[:1], multimask_output=True)


def test_one_image_serves_several_prompt_sets(tiny):
    image = image_batch()
    with torch.inference_mode():
        together = tiny(image, boxes=BOXES).low_res_logits
        apart = torch.cat([tiny(image, boxes=BOXES[i : i + 1]).low_res_logits for i in range(2)])
    torch.testing.assert_close(together, apart)


def test_cached_encoding_decodes_like_forward(tiny):
    image, points = image_batch(), (torch.tensor([[[12.0, 20.0], [50.0, 8.0]]]), torch.tensor([[1, 0]]))
    with torch.inference_mode():
        encoding = tiny.encode_image(image)
        assert encoding.image_embeddings.shape == (1, 256, 4, 4)
        assert encoding.multi_scale_feature.shape == (1, 32, 16, 16)
        decoded = tiny.decode(encoding, points=points).low_res_logits
        torch.testing.assert_close(decoded, tiny(image, points=points).low_res_logits)


def test_mask_prompts_are_low_res_logits(tiny):
    with torch.inference_mode():
        prediction = tiny(image_batch(), boxes=BOXES[:1], masks=torch.randn(1, 1, 16, 16))
    assert prediction.low_res_logits.shape == (1, 1, 16, 16)


def test_wrong_input_size_is_refused(tiny):
    with pytest.raises(ValueError, match="spatial size"):
        tiny(image_batch(size=96), boxes=BOXES[:1])


def test_conv_stages_enter_the_blocks_the_config_names():
    torch.manual_seed(0)
    config = dict(TINY, depth=6, global_attn_indexes=(1, 3, 5), conv_injection_blocks=(0, 2, 3, 5))
    model = sam_unet_r34(**config).eval()
    block_in, block_out, adapted, bridge_in = {}, {}, {}, {}
    hooks = [model.image_encoder.patch_embed.register_forward_hook(lambda m, a, out: block_out.__setitem__(-1, out))]
    for index, block in enumerate(model.image_encoder.blocks):
        hooks.append(block.register_forward_pre_hook(lambda m, a, i=index: block_in.__setitem__(i, a[0])))
        hooks.append(block.register_forward_hook(lambda m, a, out, i=index: block_out.__setitem__(i, out)))
    for stage, adapter in enumerate(model.adapters_in):
        hooks.append(adapter.register_forward_hook(lambda m, a, out, s=stage: adapted.__setitem__(s, out)))
    for index, bridge in enumerate(model.adapters_bridge):
        hooks.append(bridge.register_forward_pre_hook(lambda m, a, j=index: bridge_in.__setitem__(j, a[0])))
    with torch.inference_mode():
        model.encode_image(image_batch())
    for hook in hooks:
        hook.remove()

    block_out[-1] = block_out[-1] + model.image_encoder.pos_embed  # block 0 sees patches plus positions
    stage_of = {block: stage for stage, block in enumerate(config["conv_injection_blocks"])}
    for index in range(config["depth"]):
        expected = block_out[index - 1]
        if index in stage_of:
            expected = expected + adapted[stage_of[index]].permute(0, 2, 3, 1)
        torch.testing.assert_close(block_in[index], expected, rtol=0, atol=0)
    # Bridge 0 (the deepest) taps the third injection block, bridge 2 the first.
    for bridge, block in enumerate((3, 2, 0)):
        torch.testing.assert_close(bridge_in[bridge], block_out[block].permute(0, 3, 1, 2), rtol=0, atol=0)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (dict(conv_injection_blocks=(2, 5, 8)), "one ViT block per ResNet stage"),
        (dict(conv_injection_blocks=(2, 5, 5, 11)), "strictly increasing"),
        (dict(conv_injection_blocks=(11, 8, 5, 2)), "strictly increasing"),
        (dict(conv_injection_blocks=(2, 5, 8, 12)), r"0\.\.11"),
        (dict(depth=10, conv_injection_blocks=(2, 5, 8, 11)), r"0\.\.9"),
        (dict(image_size=80), "multiple of 32"),
        (dict(image_size=96, patch_size=12), "power of two"),
        (dict(resnet="resnet18"), "resnet34, resnet50"),
        (dict(resnet_layers=(1, 1, 1)), "4 positive block counts"),
    ],
)
def test_config_refuses_what_the_architecture_cannot_honour(overrides, message):
    with pytest.raises(ValueError, match=message):
        SamUNetConfig(**overrides)


# ----------------------------------------------------------------------------------------------- checkpoint keys


@pytest.mark.parametrize(
    ("upstream", "ours"),
    [
        ("image_encoder.sam_img_encoder.blocks.2.attn.rel_pos_h", "image_encoder.blocks.2.attn.rel_pos_h"),
        ("image_encoder.sam_img_encoder.neck.3.bias", "image_encoder.neck.3.bias"),
        ("prompt_encoder.sam_prompt_encoder.point_embeddings.2.weight", "prompt_encoder.point_embeddings.2.weight"),
        (
            "mask_decoder.sam_mask_decoder.transformer.layers.1.norm4.bias",
            "mask_decoder.transformer.layers.1.norm4.bias",
        ),
        ("mask_decoder.sam_mask_decoder.output_upscaling.3.bias", "mask_decoder.output_upscaling.3.bias"),
        ("mask_decoder.med_token.weight", "mask_decoder.med_token.weight"),
        ("mask_decoder.hf_mlp.layers.2.weight", "mask_decoder.hf_mlp.layers.2.weight"),
        ("resnet.stage0.0.weight", "resnet.conv1.weight"),
        ("resnet.stage0.1.num_batches_tracked", "resnet.bn1.num_batches_tracked"),
        ("resnet.stage1.0.conv3.weight", "resnet.layer1.0.conv3.weight"),
        ("resnet.stage4.0.downsample.1.running_var", "resnet.layer4.0.downsample.1.running_var"),
        ("adapters_in.0.reshaper.6.weight", "adapters_in.0.6.weight"),
        ("adapters_bridge.2.3.bias", "adapters_bridge.2.3.bias"),
        ("embedding_encoder.1.weight", "embedding_encoder.1.weight"),
    ],
)
def test_upstream_keys_map_to_ours(upstream, ours):
    assert list(upstream_to_zoo_keys({upstream: torch.zeros(1)})) == [ours]


def test_a_state_dict_mixing_both_namings_is_refused():
    with pytest.raises(ValueError, match="resnet.conv1.weight"):
        upstream_to_zoo_keys({"resnet.stage0.0.weight": torch.zeros(1), "resnet.conv1.weight": torch.zeros(1)})


@pytest.mark.parity
@pytest.mark.full_size
@pytest.mark.parametrize("name", ["sam_unet_r34", "sam_unet_r50"])
def test_upstream_full_key_set_loads_strictly(full_size, name):
    """Every key and shape of upstream's SAM_UNET.state_dict() (full_keys.json) loads, nothing left over."""
    needs_fixture()
    shapes = json.loads((FIXTURE / "full_keys.json").read_text())[UPSTREAM_NAMES[name]]
    state_dict = {
        key: torch.zeros((), dtype=torch.long) if key.endswith("num_batches_tracked") else torch.full(shape, 0.5)
        for key, shape in shapes.items()
    }
    model = full_size[name]
    load_official_weights(model, state_dict)
    assert all(bool((value == 0.5).all()) for key, value in model.state_dict().items() if value.is_floating_point())


@pytest.mark.parity
def test_authors_checkpoint_with_a_pickled_optimizer_loads(tmp_path, tiny):
    """Upstream saves {'model': state_dict, 'optimizer': <Adam object>}; it is read safely and loads strictly."""
    needs_fixture()
    weights = load_file(FIXTURE / "weights.safetensors")
    optimizer = torch.optim.Adam([torch.nn.Parameter(torch.zeros(2))], lr=1e-4)
    torch.save({"model": weights, "optimizer": optimizer}, tmp_path / "sam_unet.pth")
    model = sam_unet_r34(**TINY)
    load_official_weights(model, tmp_path / "sam_unet.pth")
    loaded = model.state_dict()
    for key, value in upstream_to_zoo_keys(weights).items():
        assert torch.equal(loaded[key], value), key


# ------------------------------------------------------------------------------------------------------ training


def test_freeze_for_training_freezes_exactly_the_vit(tiny):
    model = tiny.freeze_for_training()
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert frozen == {name for name, _ in model.named_parameters() if name.startswith("image_encoder.")}
    assert sum(p.numel() for p in model.trainable_parameters()) == sum(
        p.numel() for name, p in model.named_parameters() if name not in frozen
    )


@pytest.mark.full_size
@pytest.mark.parametrize(("name", "upstream_millions"), [("sam_unet_r34", 29.35), ("sam_unet_r50", 51.76)])
def test_trainable_parameters_match_upstream(full_size, name, upstream_millions):
    """Upstream (ViT frozen) trains 29.35 M parameters with ResNet-34 and 51.76 M with ResNet-50."""
    model = full_size[name].freeze_for_training()
    trainable = sum(p.numel() for p in model.trainable_parameters())
    assert round(trainable / 1e6, 2) == upstream_millions


@pytest.mark.parity
@pytest.mark.full_size
@pytest.mark.parametrize("name", ["sam_unet_r34", "sam_unet_r50"])
def test_trainable_parameters_are_upstreams_non_vit_parameters_exactly(full_size, name):
    """Exact count: upstream's parameters (buffers excluded) outside the frozen SAM image encoder."""
    needs_fixture()
    shapes = json.loads((FIXTURE / "full_keys.json").read_text())[UPSTREAM_NAMES[name]]
    buffers = ("running_mean", "running_var", "num_batches_tracked", "positional_encoding_gaussian_matrix")
    expected = sum(
        math.prod(shape)
        for key, shape in shapes.items()
        if not key.startswith("image_encoder.") and not key.endswith(buffers)
    )
    model = full_size[name].freeze_for_training()
    assert sum(p.numel() for p in model.trainable_parameters()) == expected


# ------------------------------------------------------------------------------------------------ initialisation


def test_initialises_from_sam_and_an_imagenet_resnet(tmp_path):
    torch.manual_seed(0)
    sam = zoo.create_model(
        "sam_vit_b", image_size=128, embed_dim=48, num_heads=2, window_size=3, decoder_mlp_dim=64
    ).state_dict()
    resnet = timm.create_model("resnet34", layers=(1, 1, 1, 1)).state_dict()  # with its classifier, like torchvision's
    torch.save(sam, tmp_path / "sam_vit_b.pth")
    torch.save(resnet, tmp_path / "resnet34.pth")
    model = sam_unet_r34(**TINY)
    adapter_before = model.adapters_in[0][0].weight.clone()

    report = init_sam_unet(model, tmp_path / "sam_vit_b.pth", tmp_path / "resnet34.pth")

    ours = model.state_dict()
    copied_from_sam = (
        "image_encoder.blocks.0.attn.qkv.weight",
        "image_encoder.blocks.1.attn.rel_pos_h",  # a windowed block: same size, copied
        "prompt_encoder.pe_layer.positional_encoding_gaussian_matrix",
        "mask_decoder.transformer.layers.0.mlp.lin1.weight",
        "mask_decoder.output_upscaling.0.weight",
    )
    for key in copied_from_sam:
        assert torch.equal(ours[key], sam[key]), key
    # As upstream's load_from: bilinear, align_corners=False, 8x8 -> 4x4 positions and 15 -> 7 global rel-pos rows.
    pos = sam["image_encoder.pos_embed"].permute(0, 3, 1, 2)
    pos = F.interpolate(pos, (4, 4), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours["image_encoder.pos_embed"], pos.permute(0, 2, 3, 1), rtol=0, atol=0)
    rel = sam["image_encoder.blocks.2.attn.rel_pos_w"][None, None]
    rel = F.interpolate(rel, (7, 24), mode="bilinear", align_corners=False)
    torch.testing.assert_close(ours["image_encoder.blocks.2.attn.rel_pos_w"], rel[0, 0], rtol=0, atol=0)
    for key, value in resnet.items():
        if not key.startswith("fc."):
            assert torch.equal(ours[f"resnet.{key}"], value), key
    assert torch.equal(model.adapters_in[0][0].weight, adapter_before)
    assert "mask_decoder.iou_prediction_head.layers.0.weight" in report.not_used
    assert any(entry.endswith("fc.weight") for entry in report.not_used)
    assert "adapters_in.0.0.weight" in report.kept_at_init and "resnet.conv1.weight" not in report.kept_at_init


# ---------------------------------------------------------------------------------------------------------- hub


def test_hub_round_trip_restores_config_and_weights(tmp_path, tiny):
    tiny.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["family"] == "sam_unet"
    restored = SamUNet.from_pretrained(tmp_path)
    assert restored.config == tiny.config
    with torch.inference_mode():
        expected = tiny(image_batch(), boxes=BOXES[:1]).low_res_logits
        torch.testing.assert_close(restored(image_batch(), boxes=BOXES[:1]).low_res_logits, expected)
