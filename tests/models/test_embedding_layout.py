"""Image embeddings come out channels-last off the reference path, so that the mask decoder reads them as tokens
without a transposing copy on every click."""

import pytest
import torch
from tiny_models import tiny_model

from zoo.models.components.compute_path import reference_computation

FAMILIES = ["sam_med3d_turbo", "sam_med2d_b", "sam_unet_r34", "litemedsam", "sam_vit_b"]


def _embedding(encoding):
    return getattr(encoding, "image_embeddings", encoding)


@pytest.mark.parametrize("family", FAMILIES)
def test_the_decoder_reads_the_image_embedding_as_tokens_without_a_copy(family):
    model = tiny_model(family)
    size = model.config.image_size
    spatial_dims = len(model.prompt_encoder.image_embedding_size)
    channels = 1 if spatial_dims == 3 else 3
    image = torch.rand(1, channels, *([size] * spatial_dims))
    token_views = []
    model.mask_decoder.transformer.register_forward_pre_hook(
        lambda module, args: token_views.append(args[0].flatten(2).transpose(1, 2).is_contiguous())
    )
    points = (torch.full((1, 1, spatial_dims), size / 2), torch.tensor([[1]]))
    mask = torch.randn(1, 1, *model.prompt_encoder.mask_input_size)
    layout = torch.channels_last if spatial_dims == 2 else torch.channels_last_3d
    with torch.no_grad():
        encoding = model.encode_image(image)
        assert _embedding(encoding).is_contiguous(memory_format=layout)
        fast = [model.decode(encoding, points=points, masks=masks).low_res_logits for masks in (None, mask)]
        # The sum with the mask prompt's embedding too (a channels-last map in 2D, a channels-first one in 3D).
        assert token_views == [True, True]
        with reference_computation():
            reference_encoding = model.encode_image(image)
            assert _embedding(reference_encoding).is_contiguous()  # upstream's layout
            expected = [model.decode(reference_encoding, points=points, masks=m).low_res_logits for m in (None, mask)]
    for got, want in zip(fast, expected):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
