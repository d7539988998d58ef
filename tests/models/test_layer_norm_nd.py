"""The channel LayerNorm's fused path equals upstream's elementwise computation, forward and backward."""

import pytest
import torch

from zoo.models.components.compute_path import reference_computation
from zoo.models.components.layers import LayerNormNd


@pytest.mark.parametrize("shape", [(3, 8, 5, 6), (2, 4, 3, 5, 6)])
def test_fused_channel_layer_norm_matches_the_reference_forward_and_backward(shape):
    generator = torch.Generator().manual_seed(0)
    norm = LayerNormNd(shape[1])
    with torch.no_grad():
        norm.weight.copy_(torch.randn(shape[1], generator=generator))
        norm.bias.copy_(torch.randn(shape[1], generator=generator))
    x = (torch.randn(shape, generator=generator, dtype=torch.float64) * 3 + 1).requires_grad_()
    upstream = torch.randn(shape, generator=generator, dtype=torch.float64)
    norm.double()

    results = []
    for reference in (True, False):
        with reference_computation() if reference else torch.enable_grad():
            out = norm(x)
        grads = torch.autograd.grad(out, (x, norm.weight, norm.bias), upstream)
        results.append((out, *grads))
    (expected, *expected_grads), (fused, *fused_grads) = results
    assert fused.shape == expected.shape and fused.dtype == torch.float64
    assert fused.movedim(1, -1).is_contiguous(), "the fused result keeps the channels-last layout"
    torch.testing.assert_close(fused, expected, rtol=0, atol=1e-12)
    for name, actual, wanted in zip(("input", "weight", "bias"), fused_grads, expected_grads):
        torch.testing.assert_close(actual, wanted, rtol=0, atol=1e-10, msg=name)
