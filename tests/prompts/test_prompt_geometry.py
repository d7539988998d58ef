"""Index maps move prompts exactly as the matching image operation moves pixels (real SAM-Med2D masks)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from zoo.geometry import IndexMap
from zoo.geometry.image2d import nearest_source_indices
from zoo.prompts import BoxPrompts, boxes_from_masks, first_click_random_foreground


def pixel_grid(height: int, width: int) -> torch.Tensor:
    """Every pixel index of an H x W image as 1 x (H*W) x 2 coordinates."""
    rows, cols = torch.meshgrid(torch.arange(float(height)), torch.arange(float(width)), indexing="ij")
    return torch.stack([rows, cols], dim=-1).reshape(1, -1, 2)


def value_under(image: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """image[round(p)] for each point of a 1 x N x 2 coords tensor (image is H x W)."""
    index = coords[0].round().long()
    return image[index[:, 0], index[:, 1]]


def clicks(mask: torch.Tensor, count: int = 32) -> torch.Tensor:
    many = mask[None].expand(count, -1, -1)
    points = first_click_random_foreground(many, torch.Generator().manual_seed(0))
    return points.coords[:, 0][None]


def test_flip_moves_points_with_the_flipped_image(masks_2d):
    liver = masks_2d[1]
    flipped = torch.flip(liver, dims=(0, 1))
    index_map = IndexMap.flip(liver.shape, axes=(0, 1))
    before = clicks(liver)
    after = index_map.map_coords(before)
    assert value_under(flipped, after).all()
    assert torch.equal(index_map.inverse().map_coords(after), before.double())


def test_crop_or_pad_moves_points_with_the_window(masks_2d):
    spleen = masks_2d[2]
    padded = F.pad(spleen, (10, 0, 20, 0))  # 20 rows above, 10 columns left
    window = padded[10:210, 10:266]
    index_map = IndexMap.crop_or_pad(spleen.shape, start=(-10, 0), dst_shape=window.shape)
    assert value_under(window, index_map.map_coords(clicks(spleen))).all()


def test_nearest_floor_resize_inverse_finds_the_source_pixel_opencv_reads():
    index_map = IndexMap.resize((181, 258), (256, 256), convention="nearest_floor")
    grid = pixel_grid(256, 256)
    source = index_map.inverse().map_coords(grid)[0]
    assert torch.equal(source[:, 0].floor().long().unique(), nearest_source_indices(181, 256).unique())
    rows = nearest_source_indices(181, 256)[grid[0, :, 0].long()]
    assert torch.equal(source[:, 0].floor().long(), rows)


def test_align_corners_false_resize_matches_torch_nearest_exact(masks_2d):
    aorta = masks_2d[0].float()[None, None]
    resized = F.interpolate(aorta, size=(400, 170), mode="nearest-exact")[0, 0]
    index_map = IndexMap.resize((256, 256), (400, 170))
    grid = pixel_grid(400, 170)
    source = index_map.inverse().map_coords(grid)
    assert torch.equal(value_under(aorta[0, 0], source), resized.flatten())


def test_boxes_follow_flips_and_resizes_through_their_edges(masks_2d):
    boxes = boxes_from_masks(masks_2d[:1])
    flipped = boxes.mapped(IndexMap.flip((256, 256), axes=(1,)))
    assert flipped.lo[0, 1] == 256 - boxes.hi[0, 1] and flipped.hi[0, 1] == 256 - boxes.lo[0, 1]
    assert flipped.lo[0, 0] == boxes.lo[0, 0] and flipped.hi[0, 0] == boxes.hi[0, 0]
    doubled = boxes.mapped(IndexMap.resize((256, 256), (512, 512)))
    assert torch.equal(doubled.lo, 2 * boxes.lo) and torch.equal(doubled.hi, 2 * boxes.hi)
    flipped_mask = torch.flip(masks_2d[:1], dims=(2,))
    assert flipped.contains(flipped_mask).all()


def test_invalid_boxes_stay_invalid_when_moved():
    boxes = BoxPrompts(torch.zeros(1, 2), torch.zeros(1, 2), torch.tensor([False]), (8, 8))
    moved = boxes.mapped(IndexMap.crop_or_pad((8, 8), (-3, -3), (14, 14)))
    assert not moved.valid.any() and (moved.lo == 0).all()


def test_composition_and_inverse_round_trip_points():
    chain = (
        IndexMap.resize((100, 80), (256, 256))
        .then(IndexMap.flip((256, 256), axes=(0,)))
        .then(IndexMap.crop_or_pad((256, 256), (10, -4), (128, 128)))
    )
    points = torch.tensor([[[3.0, 7.0], [99.0, 0.0], [50.5, 40.25]]])
    assert torch.allclose(chain.inverse().map_coords(chain.map_coords(points)), points.double(), atol=1e-9)


def test_affine_maps_are_batched_per_sample():
    src = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    dst = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    dst[0, :3, 3] = torch.tensor([1.0, 2.0, 3.0])  # sample 0's destination grid starts 1, 2, 3 mm further
    dst[1, :3, :3] *= 2.0  # sample 1's destination voxels are 2 mm
    index_map = IndexMap.from_affines(src, dst, (8, 8, 8), (8, 8, 8))
    moved = index_map.map_coords(torch.tensor([[[4.0, 4.0, 4.0]], [[4.0, 4.0, 4.0]]]))
    assert moved.tolist() == [[[3.0, 2.0, 1.0]], [[2.0, 2.0, 2.0]]]
