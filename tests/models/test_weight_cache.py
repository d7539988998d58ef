"""Derived tensors are cached per parameter state, never while training, and apart inside inference mode."""

import torch
from torch import nn

import zoo
from zoo.models.components.weight_cache import derived_from_parameters


def counting(module: nn.Module, calls: list[int]):
    def derive() -> torch.Tensor:
        calls.append(1)
        return module.weight * 2

    return lambda: derived_from_parameters(module, "double", [module.weight], derive)


def test_derived_once_per_parameter_state():
    module, calls = nn.Linear(3, 2), []
    double = counting(module, calls)
    with torch.no_grad():
        first = double()
        assert double() is first and len(calls) == 1
        module.weight.add_(1.0)  # in-place update: new version
        torch.testing.assert_close(double(), module.weight * 2)
        module.weight = nn.Parameter(torch.zeros(2, 3))  # swapped parameter: new storage
        assert double().abs().sum() == 0
    assert len(calls) == 3


def test_nothing_is_cached_while_autograd_records():
    module, calls = nn.Linear(3, 2), []
    double = counting(module, calls)
    assert double().requires_grad and double().grad_fn is not None
    assert len(calls) == 2 and "_derived_weight_cache" not in module.__dict__


def test_inference_mode_results_stay_in_inference_mode():
    """Validation under inference mode must not hand an inference tensor to a later no-grad or training step."""
    module, calls = nn.Linear(3, 2), []
    double = counting(module, calls)
    with torch.inference_mode():
        assert double().is_inference()
    with torch.no_grad():
        assert not double().is_inference()
    assert len(calls) == 2


def test_dense_positional_encoding_follows_its_gaussian_matrix():
    torch.manual_seed(0)
    model = zoo.create_model("sam_med3d_turbo", image_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2,
                             global_attn_indexes=(0,))
    encoder = model.prompt_encoder
    with torch.no_grad():
        first = encoder.get_dense_pe()
        assert encoder.get_dense_pe() is first
        torch.testing.assert_close(first, encoder._dense_pe(), rtol=0, atol=0)
        encoder.pe_layer.positional_encoding_gaussian_matrix.mul_(2.0)
        second = encoder.get_dense_pe()
    assert not torch.equal(first, second)
    torch.testing.assert_close(second, encoder._dense_pe(), rtol=0, atol=0)
