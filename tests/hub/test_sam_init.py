"""Initialising SAM-Med2D from SAM: what is copied, resized and left at initialisation, all reported."""

import pytest
import torch

import zoo
from zoo.hub import CheckpointError, init_from_sam
from zoo.hub.resize import resize_abs_pos_embed, resize_rel_pos

from .official_format import sam_med3d_official_checkpoint
from .tiny_configs import TINY_2D, TINY_SAM


DECODER_HEADS = ("mask_tokens", "output_hypernetworks_mlps", "iou_prediction_head")


@pytest.fixture
def sam_file(tmp_path):
    torch.manual_seed(1)
    sam = zoo.create_model("sam_vit_b", **TINY_SAM)
    weights = {key: value + 1 for key, value in sam.state_dict().items()}  # distinguishable from any init
    path = tmp_path / "sam_vit_b_01ec64.pth"
    torch.save(weights, path)
    return path, weights


def test_position_tables_are_resized_and_reported(med2d, sam_file):
    path, sam = sam_file
    report = init_from_sam(med2d, path)
    global_block = TINY_2D["global_attn_indexes"][0]
    rel_pos_keys = [f"image_encoder.blocks.{global_block}.attn.rel_pos_{axis}" for axis in "hw"]
    assert set(report.resized) == {"image_encoder.pos_embed", *rel_pos_keys}
    grid_in, grid_out = TINY_SAM["image_size"] // 16, TINY_2D["image_size"] // 16
    head_dim = TINY_2D["embed_dim"] // TINY_2D["num_heads"]
    assert report.resized[rel_pos_keys[0]] == ((2 * grid_in - 1, head_dim), (2 * grid_out - 1, head_dim))
    state = med2d.state_dict()
    expected_pos_embed = resize_abs_pos_embed(sam["image_encoder.pos_embed"], (grid_out, grid_out))
    torch.testing.assert_close(state["image_encoder.pos_embed"], expected_pos_embed)
    for key in rel_pos_keys:
        torch.testing.assert_close(state[key], resize_rel_pos(sam[key], 2 * grid_out - 1))


def test_decoder_heads_and_adapters_stay_at_initialisation(med2d, sam_file):
    path, _ = sam_file
    initial = {key: value.clone() for key, value in med2d.state_dict().items()}
    report = init_from_sam(med2d, path)
    expected_kept = [key for key in initial if ".Adapter." in key or any(head in key for head in DECODER_HEADS)]
    assert sorted(report.kept_at_init) == sorted(expected_kept)
    assert all(torch.equal(med2d.state_dict()[key], initial[key]) for key in expected_kept)
    assert sorted(report.not_used) == sorted(key for key in initial if any(head in key for head in DECODER_HEADS))


def test_everything_else_is_copied_exactly(med2d, sam_file):
    path, sam = sam_file
    report = init_from_sam(med2d, path)
    assert report.copied, "nothing was copied"
    window_block_rel_pos = "image_encoder.blocks.0.attn.rel_pos_h"
    assert window_block_rel_pos in report.copied
    state = med2d.state_dict()
    assert all(torch.equal(state[key], sam[key]) for key in report.copied)
    assert len(report.copied) + len(report.resized) + len(report.kept_at_init) == len(state)


def test_the_report_lists_every_key_that_was_not_copied(med2d, sam_file):
    path, _ = sam_file
    report = init_from_sam(med2d, path)
    summary = report.summary()
    assert summary.startswith(f"Initialised from {path}: {len(report.copied)} tensors copied, 3 resized")
    for key in [*report.resized, *report.kept_at_init, *report.not_used]:
        assert key in summary


def test_a_3d_checkpoint_is_not_taken_for_sam(med2d, tmp_path):
    torch.manual_seed(0)
    from .tiny_configs import TINY_3D

    med3d = zoo.create_model("sam_med3d_turbo", **TINY_3D)
    path = tmp_path / "sam_med3d_turbo.pth"
    torch.save(sam_med3d_official_checkpoint(med3d.state_dict()), path)
    with pytest.raises(CheckpointError, match=r"sam_med3d_turbo\.pth: looks like a sam_med3d checkpoint"):
        init_from_sam(med2d, path)
