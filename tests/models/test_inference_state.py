"""State kept for inference (rearranged weights, gather indices) never changes a result and never travels.

Every fast-path result here is compared with the reference computation (``compute_path.reference_computation()``)
of a freshly built model holding the same weights, in float64: nothing derived earlier can reach it.
"""

from __future__ import annotations

import copy
import gc
import io
import pickle
import weakref
from collections.abc import Iterator

import pytest
import torch
from torch import Tensor, nn

import zoo
from zoo.models.components.compute_path import reference_computation

# SAM-Med2D at 64 x 64: one ViT block with its adapter (a cached transposed-convolution weight), the mask
# decoder's channels-last upscaling (cached sub-voxel weights and gather indices) and the dense positional encoding.
TINY = dict(image_size=64, patch_size=8, embed_dim=16, depth=1, num_heads=2, global_attn_indexes=(0,))
IMAGES = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(1))
POINTS = (torch.tensor([[[20.0, 31.0], [40.0, 12.0]]]), torch.tensor([[1, 0]]))
BOX = torch.tensor([[10.0, 8.0, 50.0, 44.0]])

# Where each fast path keeps what it derives from: (module path, tensor name).
SOURCES = {
    "adapter transposed conv": ("image_encoder.blocks.0.Adapter.spatial.2", "weight"),
    "decoder upscaling": ("mask_decoder.output_upscaling.0", "weight"),
    "dense positional encoding": ("prompt_encoder.pe_layer", "positional_encoding_gaussian_matrix"),
}


def tiny_model(seed: int = 0) -> nn.Module:
    """The tiny model with every parameter and buffer random (zero-initialised tables would hide mistakes)."""
    torch.manual_seed(seed)
    model = zoo.create_model("sam_med2d_b", **TINY).eval()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.copy_(torch.randn(tensor.shape, generator=generator) * 0.3)
    return model


def fast_logits(model: nn.Module, mode: str = "inference") -> Tensor:
    """Low-res logits on the default fast path, under inference mode (as the predictors run) or no_grad."""
    context = torch.inference_mode() if mode == "inference" else torch.no_grad()
    dtype, device = next(model.parameters()).dtype, next(model.parameters()).device
    with context:
        points = (POINTS[0].to(device, dtype), POINTS[1].to(device))
        out = model(IMAGES.to(device, dtype), points=points, boxes=BOX.to(device, dtype)).low_res_logits
    return out.clone()


def reference_logits(model: nn.Module) -> Tensor:
    """The reference computation in float64 on a fresh model with ``model``'s weights."""
    fresh = zoo.create_model("sam_med2d_b", **TINY).eval()
    fresh.load_state_dict({k: v.detach().cpu() for k, v in model.state_dict().items()})
    fresh.double()
    with torch.no_grad(), reference_computation():
        return fresh(IMAGES.double(), points=(POINTS[0].double(), POINTS[1]), boxes=BOX.double()).low_res_logits


def assert_reference(fast: Tensor, reference: Tensor) -> None:
    tolerance = (1e-5 if fast.dtype == torch.float32 else 1e-10) * reference.abs().max().item()
    torch.testing.assert_close(fast.double().cpu(), reference, rtol=0, atol=tolerance)


def hidden_tensors(model: nn.Module) -> list[Tensor]:
    """Tensors the modules hold outside their parameters, buffers and submodules (anything derived and kept)."""
    found: list[Tensor] = []

    def visit(value: object, depth: int = 0) -> None:
        if depth > 8 or isinstance(value, (str, bytes, int, float, bool, type(None), torch.dtype, torch.device)):
            return
        if isinstance(value, Tensor):
            found.append(value)
        elif isinstance(value, dict):
            for item in value.values():
                visit(item, depth + 1)
        elif isinstance(value, (list, tuple, set, frozenset)):
            for item in value:
                visit(item, depth + 1)
        elif not isinstance(value, (nn.Module, weakref.ref)) and not callable(value):
            for name in [*getattr(value, "__dict__", {}), *getattr(type(value), "__slots__", ())]:
                visit(getattr(value, name, None), depth + 1)

    for module in model.modules():
        for name, value in vars(module).items():
            if name not in ("_parameters", "_buffers", "_modules"):
                visit(value)
    return found


def derived_bytes(model: nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in hidden_tensors(model))


def lookup(model: nn.Module, source: str) -> tuple[nn.Module, str]:
    path, name = SOURCES[source]
    return model.get_submodule(path), name


def replace_reusing_memory(module: nn.Module, name: str, values: Tensor) -> None:
    """Replace ``module.<name>`` by a new tensor with ``values``, deleting the old one first so that the allocator
    may hand its memory to the new one."""
    is_parameter = name in module._parameters
    delattr(module, name)
    gc.collect()
    fresh = torch.empty(values.shape, dtype=values.dtype)
    if is_parameter:
        setattr(module, name, nn.Parameter(fresh))
    else:
        module.register_buffer(name, fresh)
    with torch.no_grad():
        getattr(module, name).copy_(values)  # the same version counter value as the old tensor's, typically


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors gain nothing from threads on a shared machine
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def model() -> nn.Module:
    return tiny_model()


def test_the_fast_path_keeps_derived_tensors_in_eval_inference(model):
    assert_reference(fast_logits(model), reference_logits(model))
    assert derived_bytes(model) > 0, "eval inference must keep its derived weights (the fast path's point)"


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_replaced_tensor_at_the_old_address_is_not_taken_for_the_old_one(model, source):
    """The old tensor is deleted before the new one is allocated, so that the allocator can give the new one the
    old address (and its version counter has the same value): a cache keyed on address and version would hand
    back what it derived from the old tensor. (Where the cache holds the old storage, the address stays taken.)"""
    module, name = lookup(model, source)
    generator = torch.Generator().manual_seed(2)
    for _ in range(6):  # the allocator reuses a freed address often, not always
        fast_logits(model)  # keeps what it derives from the current tensor
        values = torch.randn(getattr(module, name).shape, generator=generator) * 0.3
        replace_reusing_memory(module, name, values)
        assert_reference(fast_logits(model), reference_logits(model))


@pytest.mark.parametrize("source", list(SOURCES))
def test_a_replaced_tensor_at_a_new_address_is_used(model, source):
    module, name = lookup(model, source)
    fast_logits(model)
    new = torch.randn(getattr(module, name).shape, generator=torch.Generator().manual_seed(3)) * 0.3
    if name in module._parameters:
        setattr(module, name, nn.Parameter(new))
    else:
        setattr(module, name, new)
    assert_reference(fast_logits(model), reference_logits(model))


@pytest.mark.parametrize("assign", [False, True], ids=["copied", "assigned"])
def test_reloaded_weights_drop_what_was_derived_and_give_the_reference_result(model, assign):
    fast_logits(model)
    other = tiny_model(seed=5).state_dict()
    model.load_state_dict(other, assign=assign)
    assert hidden_tensors(model) == [], "load_state_dict must drop what was derived from the old weights"
    assert_reference(fast_logits(model), reference_logits(model))


def test_in_place_updates_of_the_weights_give_the_reference_result(model):
    fast_logits(model)
    with torch.no_grad():
        for tensor in [*model.parameters(), *model.buffers()]:
            tensor.mul_(-1.5)
    assert_reference(fast_logits(model), reference_logits(model))


def test_a_dtype_move_drops_what_was_derived_and_computes_in_the_new_dtype(model):
    fast_logits(model)
    model.double()
    assert hidden_tensors(model) == [], "nothing derived in float32 may outlive the move"
    result = fast_logits(model)
    assert result.dtype == torch.float64
    assert_reference(result, reference_logits(model))
    assert derived_bytes(model) > 0
    model.float()
    assert hidden_tensors(model) == []
    assert_reference(fast_logits(model), reference_logits(model))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_device_move_drops_what_was_derived_on_the_cpu(model):
    fast_logits(model)
    assert any(t.device.type == "cpu" for t in hidden_tensors(model))
    model.cuda()
    assert hidden_tensors(model) == [], "no CPU copy of derived weights may outlive .cuda()"
    result = fast_logits(model)
    assert result.device.type == "cuda"
    assert all(t.device.type == "cuda" for t in hidden_tensors(model))
    torch.testing.assert_close(result.double().cpu(), reference_logits(model), rtol=0, atol=1e-4)
    model.cpu()
    assert hidden_tensors(model) == []
    assert_reference(fast_logits(model), reference_logits(model))


def test_a_deep_copy_carries_nothing_derived_and_is_independent(model):
    expected = fast_logits(model)
    copied = copy.deepcopy(model)
    assert hidden_tensors(copied) == []
    assert_reference(fast_logits(copied), reference_logits(model))
    with torch.no_grad():
        copied.mask_decoder.output_upscaling[0].weight.mul_(-1.0)
    assert_reference(fast_logits(copied), reference_logits(copied))
    torch.testing.assert_close(fast_logits(model), expected, rtol=0, atol=0)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_a_saved_model_carries_nothing_derived(model, how):
    clean = io.BytesIO()
    torch.save(model, clean) if how == "torch.save" else pickle.dump(model, clean)
    fast_logits(model)
    kept = derived_bytes(model)
    assert kept > 0
    buffer = io.BytesIO()
    torch.save(model, buffer) if how == "torch.save" else pickle.dump(model, buffer)
    assert buffer.tell() - clean.tell() < kept // 10, "the file grew by what was derived"
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=False) if how == "torch.save" else pickle.load(buffer)
    assert hidden_tensors(loaded) == []
    assert_reference(fast_logits(loaded), reference_logits(model))


def reference_gradients(model: nn.Module) -> dict[str, Tensor]:
    """Gradients of :func:`loss` in float64 through the reference computation of a fresh model."""
    fresh = zoo.create_model("sam_med2d_b", **TINY).train()
    fresh.load_state_dict(model.state_dict())
    fresh.double()
    with reference_computation():
        loss(fresh, torch.float64).backward()
    return {name: p.grad for name, p in fresh.named_parameters() if p.grad is not None}


def loss(model: nn.Module, dtype: torch.dtype) -> Tensor:
    logits = model(IMAGES.to(dtype), points=(POINTS[0].to(dtype), POINTS[1]), boxes=BOX.to(dtype)).low_res_logits
    return (logits * torch.linspace(-1, 1, logits.numel(), dtype=dtype).view_as(logits)).sum()


@pytest.mark.parametrize("mode", ["inference", "no_grad"])
def test_a_training_step_after_evaluation_gives_the_reference_gradients(model, mode):
    fast_logits(model, mode)
    model.train()
    assert hidden_tensors(model) == [], "train() must drop what evaluation derived"
    loss(model, torch.float32).backward()
    expected = reference_gradients(model)
    largest = max(grad.abs().max().item() for grad in expected.values())
    for name, param in model.named_parameters():
        if name in expected:  # some gradients are zero up to rounding (k_proj.bias): a floor relative to the largest
            atol = 1e-4 * expected[name].abs().max().item() + 1e-6 * largest
            torch.testing.assert_close(param.grad.double(), expected[name], rtol=0, atol=atol, msg=name)
    with torch.no_grad():
        for param in model.parameters():
            if param.grad is not None:
                param.sub_(0.1 * param.grad)  # an optimizer step
    model.eval()
    assert_reference(fast_logits(model, mode), reference_logits(model))


def test_index_tensors_are_bounded_and_die_with_their_model():
    from zoo.models.components.fast_upscaling import channels_last_masks

    model = tiny_model()
    upscaling = model.mask_decoder.output_upscaling
    tokens = torch.randn(1, 64, 256)
    with torch.inference_mode():
        for batch in range(1, 41):  # 40 batch sizes: 40 different index tensors
            channels_last_masks(upscaling, tokens.expand(batch, -1, -1), (8, 8), torch.randn(batch, 1, 32))
    indices = [t for t in hidden_tensors(upscaling) if t.dtype == torch.int64]
    assert 0 < len(indices) <= 16
    kept = [weakref.ref(t) for t in indices]
    del model, upscaling, indices
    gc.collect()
    assert all(ref() is None for ref in kept), "index tensors outlived their model"
