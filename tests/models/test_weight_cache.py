"""Derived tensors are kept per parameter state, never while training, apart inside inference mode, and never
copied, pickled or kept past a load, a move or a mode switch of their owner."""

import copy
import pickle

import pytest
import torch
from torch import nn

import zoo
from zoo.models.components import weight_cache
from zoo.models.components.compute_path import reference_computation
from zoo.models.components.weight_cache import (
    DerivedWeights,
    DropsDerivedWeights,
    TensorStates,
    derived_from_parameters,
    drop_derived_weights,
    kept_index,
)


def counting(module: nn.Module, calls: list[int]):
    def derive() -> torch.Tensor:
        calls.append(1)
        return module.weight * 2

    return lambda: derived_from_parameters(module, "double", [module.weight], derive)


def kept(module: nn.Module) -> int:
    store = module.__dict__.get("_derived_weights")
    return 0 if store is None else len(store.entries)


def test_derived_once_per_parameter_state():
    module, calls = nn.Linear(3, 2), []
    double = counting(module, calls)
    with torch.no_grad():
        first = double()
        assert double() is first and len(calls) == 1
        module.weight.add_(1.0)  # in-place update: new version
        torch.testing.assert_close(double(), module.weight * 2)
        module.weight = nn.Parameter(torch.zeros(2, 3))  # another parameter object
        assert double().abs().sum() == 0
        module.weight.data = torch.ones(2, 3)  # same object and version, other storage
        torch.testing.assert_close(double(), torch.full((2, 3), 2.0))
    assert len(calls) == 4


def test_nothing_is_kept_while_autograd_records_or_in_the_reference_computation():
    module, calls = nn.Linear(3, 2), []
    double = counting(module, calls)
    assert double().requires_grad and double().grad_fn is not None
    with torch.no_grad(), reference_computation():
        double()
    assert len(calls) == 3 and kept(module) == 0


def test_inference_mode_results_stay_in_inference_mode():
    """Validation under inference mode must not hand an inference tensor to a later no-grad or training step."""
    module, calls = nn.Linear(3, 2), []
    double = counting(module, calls)
    with torch.inference_mode():
        assert double().is_inference()
    with torch.no_grad():
        assert not double().is_inference()
    assert len(calls) == 2


def test_without_working_version_counters_nothing_is_kept(monkeypatch):
    """The fallback where the private ``Tensor._version`` cannot be relied on: derive on every call."""
    monkeypatch.setattr(weight_cache, "version_counters_work", lambda: False)
    module, calls = nn.Linear(3, 2), []
    double = counting(module, calls)
    with torch.no_grad():
        first = double()
        module.weight.data.mul_(3.0)  # a write no version counter sees
        torch.testing.assert_close(double(), first * 3)
    assert len(calls) == 2 and kept(module) == 0


def test_version_counters_work_on_this_torch():
    assert weight_cache.version_counters_work()


def test_tensor_states_tell_identity_version_and_storage_apart():
    weight = nn.Parameter(torch.randn(4, 3))
    states = TensorStates([weight])
    assert states.match([weight])
    assert not states.match([nn.Parameter(weight.detach().clone())])  # equal values, other object
    assert not states.match([weight, weight])
    with torch.no_grad():
        weight.mul_(1.0)
    assert not states.match([weight])
    states = TensorStates([weight])
    weight.data = weight.data.double()
    assert not states.match([weight])


def test_a_store_is_empty_when_deep_copied_or_pickled():
    store = DerivedWeights()
    store.put("slot", None, torch.ones(3))
    assert len(copy.deepcopy(store).entries) == 0
    assert len(pickle.loads(pickle.dumps(store)).entries) == 0
    assert len(store.entries) == 1


def test_kept_indices_are_bounded_per_module():
    module = nn.Linear(2, 2)
    for size in range(3 * weight_cache.MAX_ENTRIES):
        index = kept_index(module, ("arange", size), lambda: torch.arange(size))
        assert torch.equal(index, torch.arange(size))
    assert kept(module) == weight_cache.MAX_ENTRIES


def test_kept_indices_are_built_outside_inference_mode():
    module = nn.Linear(2, 2)
    with torch.inference_mode():
        index = kept_index(module, "order", lambda: torch.arange(4))
    assert not index.is_inference()


class Owner(DropsDerivedWeights):
    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(3, 2))

    def forward(self) -> torch.Tensor:
        layer = self.inner[0]
        return derived_from_parameters(layer, "t", [layer.weight], lambda: layer.weight.t().contiguous())


@pytest.mark.parametrize(
    "change",
    [
        lambda owner: owner.train(),
        lambda owner: owner.double(),
        lambda owner: owner.to(torch.float32),
        lambda owner: owner.load_state_dict(owner.state_dict()),
        lambda owner: nn.Sequential(owner).load_state_dict(nn.Sequential(owner).state_dict()),
        drop_derived_weights,
    ],
    ids=["train", "double", "to", "load_state_dict", "parent load_state_dict", "drop"],
)
def test_an_owner_drops_what_its_submodules_keep(change):
    owner = Owner().eval()
    with torch.no_grad():
        owner()
    assert kept(owner.inner[0]) == 1
    change(owner)
    assert kept(owner.inner[0]) == 0


def test_eval_keeps_what_evaluation_derived():
    """Evaluation loops call eval() before every batch or volume: that must not throw the derived weights away."""
    owner = Owner().eval()
    with torch.no_grad():
        first = owner()
        owner.eval()
        nn.Sequential(owner).eval()
        assert owner() is first


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
