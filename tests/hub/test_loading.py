"""load_official_weights: every official wrapping loads strictly; every kind of bad input gets a clear error."""

import pytest
import torch
from safetensors.torch import save_file

import zoo
from zoo.hub import CheckpointError, load_official_weights
from zoo.models.sam_med3d import SamMed3D, SamMed3DConfig

from .official_format import (
    identical_state_dicts,
    sam_med2d_official_checkpoint,
    sam_med3d_official_checkpoint,
    with_prefix,
)
from .tiny_configs import TINY_3D, TINY_SAM


def trained_weights(model):
    """The model's state dict with every tensor changed, so a load is visible."""
    return {key: value + 1 if value.is_floating_point() else value for key, value in model.state_dict().items()}


@pytest.mark.parametrize(
    "wrapping",
    [
        pytest.param(sam_med3d_official_checkpoint, id="sam_med3d-layout"),
        pytest.param(lambda sd: sd, id="bare"),
        pytest.param(lambda sd: sam_med3d_official_checkpoint(with_prefix(sd)), id="module-prefix"),
    ],
)
def test_sam_med3d_official_files_load(med3d, tmp_path, wrapping):
    weights = trained_weights(med3d)
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(wrapping(weights), path)
    load_official_weights(med3d, path)
    assert identical_state_dicts(med3d.state_dict(), weights)


@pytest.mark.parametrize(
    "wrapping",
    [
        pytest.param(sam_med2d_official_checkpoint, id="sam_med2d-layout"),
        pytest.param(lambda sd: sd, id="bare"),
        pytest.param(lambda sd: sam_med2d_official_checkpoint(with_prefix(sd)), id="module-prefix"),
    ],
)
def test_sam_med2d_official_files_load(med2d, tmp_path, wrapping):
    weights = trained_weights(med2d)
    path = tmp_path / "sam-med2d_b.pth"
    torch.save(wrapping(weights), path)
    load_official_weights(med2d, path)
    assert identical_state_dicts(med2d.state_dict(), weights)


def test_safetensors_files_load(med3d, tmp_path):
    weights = trained_weights(med3d)
    save_file(weights, tmp_path / "weights.safetensors")
    load_official_weights(med3d, tmp_path / "weights.safetensors")
    assert identical_state_dicts(med3d.state_dict(), weights)


def test_an_in_memory_checkpoint_loads(med3d):
    weights = trained_weights(med3d)
    load_official_weights(med3d, sam_med3d_official_checkpoint(weights))
    assert identical_state_dicts(med3d.state_dict(), weights)


def test_a_2d_checkpoint_given_to_a_3d_model_is_named_as_such(med3d, med2d, tmp_path):
    path = tmp_path / "sam-med2d_b.pth"
    torch.save(sam_med2d_official_checkpoint(med2d.state_dict()), path)
    with pytest.raises(CheckpointError, match=r"sam-med2d_b\.pth: looks like a sam_med2d checkpoint .*SamMed3D"):
        load_official_weights(med3d, path)


def test_a_3d_checkpoint_given_to_a_2d_model_is_named_as_such(med3d, med2d, tmp_path):
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(sam_med3d_official_checkpoint(med3d.state_dict()), path)
    with pytest.raises(CheckpointError, match=r"sam_med3d_turbo\.pth: looks like a sam_med3d checkpoint .*SamMed2D"):
        load_official_weights(med2d, path)


def test_missing_keys_are_counted_and_the_first_few_listed(med3d, tmp_path):
    weights = med3d.state_dict()
    dropped = [key for key in weights if key.startswith("mask_decoder.")]
    path = tmp_path / "partial.pth"
    torch.save({key: value for key, value in weights.items() if key not in dropped}, path)
    with pytest.raises(CheckpointError) as error:
        load_official_weights(med3d, path)
    message = str(error.value)
    assert message.startswith(f"{path}: does not fit SamMed3D: {len(dropped)} missing keys ({dropped[0]}, ")
    assert ", ...)" in message and dropped[-1] not in message


def test_unexpected_keys_are_counted_and_listed(med3d, tmp_path):
    path = tmp_path / "extra.pth"
    torch.save({**med3d.state_dict(), "mask_decoder.extra_head.weight": torch.ones(2)}, path)
    expected = r"extra\.pth: does not fit SamMed3D: 1 unexpected key \(mask_decoder\.extra_head\.weight\)"
    with pytest.raises(CheckpointError, match=expected):
        load_official_weights(med3d, path)


def test_a_shape_mismatch_names_key_expected_and_found(med3d, tmp_path):
    weights = med3d.state_dict()
    weights["mask_decoder.iou_token.weight"] = torch.zeros(1, 99)
    path = tmp_path / "reshaped.pth"
    torch.save(weights, path)
    expected = tuple(med3d.mask_decoder.iou_token.weight.shape)
    message = rf"mask_decoder\.iou_token\.weight expected \({expected[0]}, {expected[1]}\), found \(1, 99\)"
    with pytest.raises(CheckpointError, match=rf"reshaped\.pth: .*1 shape mismatch \({message}\)"):
        load_official_weights(med3d, path)


def test_a_failed_load_leaves_the_model_unchanged(med3d, tmp_path):
    before = {key: value.clone() for key, value in med3d.state_dict().items()}
    weights = trained_weights(med3d)
    weights.pop("mask_decoder.iou_token.weight")
    torch.save(weights, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError):
        load_official_weights(med3d, tmp_path / "partial.pth")
    assert identical_state_dicts(med3d.state_dict(), before)


def test_a_file_that_is_not_a_checkpoint_is_named(med3d, tmp_path):
    path = tmp_path / "image.nii.gz"
    path.write_bytes(b"\x1f\x8b\x08\x00 not weights")
    with pytest.raises(CheckpointError, match=r"image\.nii\.gz: is not a checkpoint"):
        load_official_weights(med3d, path)


def test_a_truncated_file_is_named(med3d, tmp_path):
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(sam_med3d_official_checkpoint(med3d.state_dict()), path)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"sam_med3d_turbo\.pth: is truncated"):
        load_official_weights(med3d, path)


def test_meta_sam_given_to_sam_med2d_points_to_the_sam_initialisation(med2d, tmp_path):
    torch.manual_seed(1)
    sam = zoo.create_model("sam_vit_b", **TINY_SAM)
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(sam.state_dict(), path)
    expected = r"sam_vit_b_01ec64\.pth: does not fit SamMed2D: .*missing keys.*SAM without SAM-Med2D's adapters"
    with pytest.raises(CheckpointError, match=expected + ".*init_from_sam"):
        load_official_weights(med2d, path)


class RenamingSamMed3D(SamMed3D):
    """A model whose authors' files use other key names: the per-family hook maps them."""

    def adapt_official_state_dict(self, state_dict):
        return {key.removeprefix("net."): value for key, value in state_dict.items()}


def test_the_family_hook_maps_official_keys_before_the_strict_load(med3d, tmp_path):
    model = RenamingSamMed3D(SamMed3DConfig(**TINY_3D))
    weights = trained_weights(med3d)
    path = tmp_path / "renamed.pth"
    torch.save({"model": {"net." + key: value for key, value in weights.items()}}, path)
    load_official_weights(model, path)
    assert identical_state_dicts(model.state_dict(), weights)
