"""With the whole image side frozen, each distinct image is encoded once per fit and its encoding reused."""

from __future__ import annotations

import torch

from zoo.training.module import PromptableSegmentationModule

TINY_2D = dict(image_size=64, patch_size=8, embed_dim=32, depth=2, num_heads=2, window_size=3,
               prompt_embed_dim=32, decoder_num_heads=2, decoder_mlp_dim=64, iou_head_hidden_dim=32)


def _counting(module: PromptableSegmentationModule) -> list[int]:
    calls: list[int] = []
    module.net.image_encoder.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    return calls


def test_a_frozen_encoder_encodes_each_image_once_and_reuses_it_exactly() -> None:
    torch.manual_seed(0)
    module = PromptableSegmentationModule(model="sam_med2d_b", model_overrides=TINY_2D, freeze=["image_encoder.*"])
    calls = _counting(module)
    images = torch.randn(3, 3, 64, 64)
    first = module._encode(images)
    again = module._encode(images[[2, 0]])
    assert calls == [3]
    assert torch.equal(again, first[[2, 0]])
    with torch.no_grad():
        assert torch.allclose(first, module.net.encode_image(images), atol=1e-6)


def test_a_trainable_encoder_is_encoded_every_time_with_gradients() -> None:
    torch.manual_seed(0)
    module = PromptableSegmentationModule(model="sam_med2d_b", model_overrides=TINY_2D)
    calls = _counting(module)
    images = torch.randn(2, 3, 64, 64)
    module._encode(images)
    encoding = module._encode(images)
    assert calls == [2, 2] and encoding.requires_grad


def test_the_cache_is_cleared_when_a_fit_starts() -> None:
    torch.manual_seed(0)
    module = PromptableSegmentationModule(model="sam_med2d_b", model_overrides=TINY_2D, freeze=["image_encoder.*"])
    calls = _counting(module)
    images = torch.randn(1, 3, 64, 64)
    module._encode(images)
    module.on_fit_start()
    module._encode(images)
    assert calls == [1, 1]


def test_only_the_new_images_of_a_batch_are_encoded_and_repeats_once() -> None:
    torch.manual_seed(0)
    module = PromptableSegmentationModule(model="sam_med2d_b", model_overrides=TINY_2D, freeze=["image_encoder.*"])
    calls = _counting(module)
    known, new = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    module._encode(known)
    mixed = module._encode(torch.cat([known, new, new]))
    assert calls == [1, 1]  # the known image from the cache, the repeated new one encoded once
    with torch.no_grad():
        assert torch.allclose(mixed, module.net.encode_image(torch.cat([known, new, new])), atol=1e-6)
