"""Tokens viewed as a channels-last map whatever the stride of a batch of one, and the models' maps that rely on it."""

import pytest
import torch
from tiny_models import tiny_model

from zoo.models.components.layers import tokens_as_map


@pytest.mark.parametrize("grid", [(4, 5), (2, 3, 4)])
def test_tokens_become_a_channels_last_map_without_a_copy_whatever_the_stride_of_a_batch_of_one(grid):
    layout = torch.channels_last if len(grid) == 2 else torch.channels_last_3d
    map_ = torch.randn(1, 6, *grid).contiguous(memory_format=layout)
    tokens = map_.flatten(2).transpose(1, 2)
    odd = tokens.as_strided(tokens.shape, (6, 6, 1))  # a batch of one may carry any stride after a view
    for source in (tokens, odd):
        viewed = tokens_as_map(source, grid)
        assert viewed.stride() == map_.stride() and viewed.is_contiguous(memory_format=layout)
        assert viewed.data_ptr() == map_.data_ptr() and torch.equal(viewed, map_)
    first = torch.randn(1, 6, tokens.shape[1]).transpose(1, 2)  # channels-first tokens: the same values
    assert torch.equal(tokens_as_map(first, grid), first.transpose(1, 2).reshape(1, 6, *grid))
    batch = torch.randn(3, tokens.shape[1], 6)
    assert torch.equal(tokens_as_map(batch, grid), batch.transpose(1, 2).reshape(3, 6, *grid))
    with pytest.raises(ValueError, match=f"got {tokens.shape[1]}"):
        tokens_as_map(tokens, (1, *grid[1:]))  # a view of fewer tokens than there are would drop some silently


def test_sam_unet_mask_upscaling_runs_channels_last_at_batch_one():
    model = tiny_model("sam_unet_r34")
    layouts = []
    for module in model.mask_decoder.output_upscaling:
        if isinstance(module, torch.nn.ConvTranspose2d):
            module.register_forward_hook(
                lambda module, args, out: layouts.append(out.is_contiguous(memory_format=torch.channels_last))
            )
    with torch.no_grad():
        encoding = model.encode_image(torch.rand(1, 3, model.config.image_size, model.config.image_size))
        model.decode(encoding, points=(torch.tensor([[[8.0, 8.0]]]), torch.tensor([[1]])))
    assert layouts == [True, True]
