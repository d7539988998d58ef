"""Position-table resizing matches bilinear interpolation with align_corners=False (SAM-Med2D's load_from).

An affine field is reproduced exactly by bilinear interpolation wherever no border clamping happens, so the
expected values follow from the sampling positions alone: output index i samples input position
(i + 0.5) * in / out - 0.5.
"""

import pytest
import torch

from zoo.hub.resize import resize_abs_pos_embed, resize_rel_pos


def grid(*sizes):
    return torch.meshgrid(*(torch.arange(size, dtype=torch.float64) for size in sizes), indexing="ij")


def source_position(index, size_in, size_out):
    return (index + 0.5) * size_in / size_out - 0.5


def test_sam_vit_b_pos_embed_64_to_16_samples_the_right_positions():
    y, x, c = grid(64, 64, 3)
    pos_embed = (2.0 * y + 0.5 * x + 100.0 * c)[None]  # 1 x H x W x C, a different slope per axis
    resized = resize_abs_pos_embed(pos_embed, (16, 16))
    i, j, k = grid(16, 16, 3)
    expected = 2.0 * source_position(i, 64, 16) + 0.5 * source_position(j, 64, 16) + 100.0 * k
    assert resized.shape == (1, 16, 16, 3)
    torch.testing.assert_close(resized[0], expected, rtol=0, atol=1e-9)


def test_non_square_grids_keep_rows_and_columns_apart():
    y, x = grid(8, 12)
    pos_embed = (y + 10.0 * x)[None, ..., None]
    resized = resize_abs_pos_embed(pos_embed, (4, 6))
    i, j = grid(4, 6)
    expected = source_position(i, 8, 4) + 10.0 * source_position(j, 12, 6)
    torch.testing.assert_close(resized[0, ..., 0], expected, rtol=0, atol=1e-9)


def test_global_rel_pos_127_to_31_interpolates_positions_and_keeps_channels():
    rows, channels = grid(127, 64)
    table = 3.0 * rows - channels
    resized = resize_rel_pos(table, 31)
    i, k = grid(31, 64)
    expected = 3.0 * source_position(i, 127, 31) - k
    assert resized.shape == (31, 64)
    torch.testing.assert_close(resized, expected, rtol=0, atol=1e-9)


def test_resizing_to_the_same_size_changes_nothing():
    table = torch.randn(27, 64)
    pos_embed = torch.randn(1, 16, 16, 8)
    torch.testing.assert_close(resize_rel_pos(table, 27), table, rtol=0, atol=1e-6)
    torch.testing.assert_close(resize_abs_pos_embed(pos_embed, (16, 16)), pos_embed, rtol=0, atol=1e-6)


@pytest.mark.parametrize(
    ("function", "tensor", "size"),
    [(resize_rel_pos, torch.zeros(1, 2, 3), 4), (resize_abs_pos_embed, torch.zeros(2, 3), (4, 4))],
)
def test_tables_of_the_wrong_rank_are_refused(function, tensor, size):
    with pytest.raises(ValueError, match="expected"):
        function(tensor, size)
