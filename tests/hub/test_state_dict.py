"""Finding the weights inside each official wrapping, and telling the family from keys and shapes."""

import pytest
import torch

from zoo.hub import CheckpointError, detect_checkpoint, extract_state_dict, read_state_dict

from .official_format import sam_med2d_official_checkpoint, sam_med3d_official_checkpoint, with_prefix


WEIGHTS = {"image_encoder.pos_embed": torch.ones(1, 2, 2, 4), "mask_decoder.iou_token.weight": torch.zeros(1, 4)}


@pytest.mark.parametrize(
    "wrapping",
    [
        pytest.param(sam_med3d_official_checkpoint, id="model_state_dict"),
        pytest.param(sam_med2d_official_checkpoint, id="model"),
        pytest.param(lambda sd: {"state_dict": sd, "epoch": 1}, id="state_dict"),
        pytest.param(lambda sd: sd, id="bare"),
        pytest.param(lambda sd: {"model": with_prefix(sd)}, id="module-prefix"),
    ],
)
def test_weights_are_found_in_every_official_wrapping(wrapping):
    assert extract_state_dict(wrapping(dict(WEIGHTS)), "ckpt.pth").keys() == WEIGHTS.keys()


def test_a_partly_prefixed_state_dict_keeps_its_keys():
    mixed = {"module.a": torch.ones(1), "b": torch.ones(1)}
    assert extract_state_dict(mixed, "ckpt.pth").keys() == mixed.keys()


def test_read_state_dict_reads_a_file_and_names_it(tmp_path):
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(sam_med3d_official_checkpoint(with_prefix(dict(WEIGHTS))), path)
    state_dict, name = read_state_dict(path)
    assert state_dict.keys() == WEIGHTS.keys()
    assert name == str(path)


def test_a_dict_without_weights_is_reported_with_its_keys():
    with pytest.raises(CheckpointError, match=r"ckpt\.pth: holds no state dict.*top-level keys: 'epoch', 'notes'"):
        extract_state_dict({"epoch": 3, "notes": "x"}, "ckpt.pth")


def test_a_non_dict_is_reported():
    with pytest.raises(CheckpointError, match=r"ckpt\.pth: holds a Tensor, not a state dict"):
        extract_state_dict(torch.ones(3), "ckpt.pth")


def shaped(**shapes):
    """A state dict with the given (full-size) shapes; expanded views, so no memory is allocated."""
    return {key.replace("__", "."): torch.zeros(()).expand(*shape) for key, shape in shapes.items()}


def test_a_3d_patch_embedding_of_width_768_is_sam_med3d_turbo():
    kind = detect_checkpoint(shaped(image_encoder__patch_embed__proj__weight=(768, 1, 16, 16, 16)))
    assert (kind.family, kind.model_name) == ("sam_med3d", "sam_med3d_turbo")


def test_a_3d_checkpoint_of_another_width_is_sam_med3d_without_a_variant():
    kind = detect_checkpoint(shaped(image_encoder__patch_embed__proj__weight=(384, 1, 16, 16, 16)))
    assert (kind.family, kind.model_name) == ("sam_med3d", None)


def test_vit_b_with_adapters_at_256_is_sam_med2d_b():
    kind = detect_checkpoint(
        {
            **shaped(
                image_encoder__patch_embed__proj__weight=(768, 3, 16, 16), image_encoder__pos_embed=(1, 16, 16, 768)
            ),
            "image_encoder.blocks.0.Adapter.norm.weight": torch.zeros(768),
        }
    )
    assert (kind.family, kind.model_name) == ("sam_med2d", "sam_med2d_b")


def test_vit_b_without_adapters_at_1024_is_meta_sam():
    kind = detect_checkpoint(
        shaped(image_encoder__patch_embed__proj__weight=(768, 3, 16, 16), image_encoder__pos_embed=(1, 64, 64, 768))
    )
    assert (kind.family, kind.model_name) == ("sam", "sam_vit_b")


def test_vit_b_without_adapters_at_256_is_ambiguous():
    kind = detect_checkpoint(
        shaped(image_encoder__patch_embed__proj__weight=(768, 3, 16, 16), image_encoder__pos_embed=(1, 16, 16, 768))
    )
    assert (kind.family, kind.model_name) == ("sam_med2d", None)


def test_sam_vit_h_is_sam_family_without_a_variant():
    kind = detect_checkpoint(shaped(image_encoder__patch_embed__proj__weight=(1280, 3, 16, 16)))
    assert (kind.family, kind.model_name) == ("sam_med2d", None)


@pytest.mark.parametrize(
    ("vit_key", "resnet_key", "variant"),
    [
        ("image_encoder.sam_img_encoder.pos_embed", "resnet.stage1.0.conv2.weight", "sam_unet_r34"),
        ("image_encoder.sam_img_encoder.pos_embed", "resnet.stage1.0.conv3.weight", "sam_unet_r50"),
        ("image_encoder.pos_embed", "resnet.layer1.0.conv2.weight", "sam_unet_r34"),
        ("image_encoder.pos_embed", "resnet.layer1.0.conv3.weight", "sam_unet_r50"),
    ],
    ids=["upstream-r34", "upstream-r50", "zoo-r34", "zoo-r50"],
)
def test_sam_unet_keys_name_the_backbone(vit_key, resnet_key, variant):
    kind = detect_checkpoint({vit_key: torch.zeros(1), resnet_key: torch.zeros(1)})
    assert (kind.family, kind.model_name) == ("sam_unet", variant)


def test_unknown_keys_are_not_guessed():
    assert detect_checkpoint({"backbone.conv.weight": torch.zeros(1)}) is None
