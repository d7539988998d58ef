"""TinyViT's convolution + BatchNorm runs folded (and fused with its activation) only in inference, and computes
convolution then BatchNorm either way."""

import pytest
import torch
from derivations import recorded_derivations
from torch import nn
from torch.nn import functional as F

from zoo.models.components import folded_conv
from zoo.models.components.compute_path import reference_computation
from zoo.models.components.tiny_vit import Conv2dBN, TinyViT


def conv_bn(kernel: int = 3, groups: int = 1, stride: int = 1, chans: int = 8, seed: int = 0) -> Conv2dBN:
    """A ``Conv2dBN`` with non-trivial BatchNorm affine parameters and running statistics, in eval mode."""
    torch.manual_seed(seed)
    module = Conv2dBN(chans, chans, kernel, stride, kernel // 2, groups=groups)
    with torch.no_grad():
        module.bn.weight.uniform_(0.5, 2.0)
        module.bn.bias.normal_()
        module.bn.running_mean.normal_()
        module.bn.running_var.uniform_(0.2, 3.0)
    return module.eval()


def unfolded(module: Conv2dBN, x: torch.Tensor, activation: nn.Module | None) -> torch.Tensor:
    conv = module.c
    out = F.batch_norm(
        F.conv2d(x.double(), conv.weight.double(), None, conv.stride, conv.padding, conv.dilation, conv.groups),
        module.bn.running_mean.double(),
        module.bn.running_var.double(),
        module.bn.weight.double(),
        module.bn.bias.double(),
        eps=module.bn.eps,
    )
    return out if activation is None else activation(out)


LAYERS = {"1x1": dict(kernel=1), "3x3": dict(kernel=3), "depthwise stride 2": dict(groups=8, stride=2)}
ACTIVATIONS = {"none": None, "gelu": nn.GELU(), "relu": nn.ReLU(), "tanh (not fusable)": nn.Tanh()}


@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", ["channels_first", "channels_last"])
@pytest.mark.parametrize("onednn", [True, False])
def test_folded_equals_convolution_then_batch_norm(layer, activation, layout, onednn, monkeypatch):
    if not onednn:
        monkeypatch.setattr(folded_conv, "onednn_conv_works", lambda: False)
    elif not folded_conv.onednn_conv_works():
        pytest.skip("this torch has no working oneDNN convolution op")
    module, act = conv_bn(**LAYERS[layer]), ACTIVATIONS[activation]
    x = torch.randn(2, 8, 11, 9)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        assert folded_conv.folding_applies(module, x)
        out = module(x, act)
    with torch.no_grad():
        exact = unfolded(module, x, act)
    assert out.dtype == torch.float32 and out.shape == exact.shape
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=2e-5 * exact.abs().max())


def test_takes_the_onednn_kernel_with_the_activation_fused(monkeypatch):
    if not folded_conv.onednn_conv_works():
        pytest.skip("this torch has no working oneDNN convolution op")
    kernel, post_ops = torch.ops.mkldnn._convolution_pointwise, []

    def spy(*args):
        post_ops.append(args[-3])
        return kernel(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", spy)
    module = conv_bn()
    with torch.inference_mode():
        module(torch.randn(1, 8, 6, 6), nn.GELU())
        module(torch.randn(1, 8, 6, 6))
    assert post_ops == ["gelu", "none"]


def test_training_gradients_and_the_reference_path_run_unfolded():
    """Train mode uses batch statistics and updates the running ones; a recorded graph needs BatchNorm's own
    backward; reference_computation() is upstream's computation. None of them folds."""
    module, x = conv_bn(), torch.randn(2, 8, 7, 7)
    with torch.no_grad():
        assert not folded_conv.folding_applies(module.train(), x)
    module.eval()
    assert not folded_conv.folding_applies(module, x), "parameters record gradients"
    with torch.no_grad(), reference_computation():
        assert not folded_conv.folding_applies(module, x)

    mean_before = module.bn.running_mean.clone()
    module.train()(x)
    assert not torch.equal(module.bn.running_mean, mean_before), "train mode updates the running statistics"

    module.eval()
    out = module(x, nn.GELU())
    out.sum().backward()
    assert module.c.weight.grad is not None and module.bn.weight.grad is not None
    torch.testing.assert_close(out, F.gelu(module.bn(module.c(x))), rtol=0, atol=0)


def test_changed_statistics_or_weights_are_folded_again():
    module, x = conv_bn(), torch.randn(1, 8, 6, 6)
    with torch.no_grad():
        first = module(x)
        module.bn.running_mean.add_(1.0)
        torch.testing.assert_close(module(x).double(), unfolded(module, x, None), rtol=0, atol=1e-4)
        module.c.weight.mul_(2.0)
        torch.testing.assert_close(module(x).double(), unfolded(module, x, None), rtol=0, atol=1e-4)
    assert not torch.allclose(first, module(x).detach())


def test_the_private_op_counts_only_where_it_computes_conv2d_and_its_post_ops():
    kernel = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if kernel is None or not torch.backends.mkldnn.is_available():
        pytest.skip("this torch has no oneDNN convolution op")
    assert folded_conv.computes_conv(kernel)
    assert not folded_conv.computes_conv(None), "op missing from this torch"

    def raising(*args):
        raise RuntimeError("changed signature")

    def ignores_bias(x, weight, bias, *rest):
        return kernel(x, weight, None, *rest)

    def ignores_post_op(x, weight, bias, padding, stride, dilation, groups, attr, scalars, algorithm):
        return kernel(x, weight, bias, padding, stride, dilation, groups, "none", [], "")

    def ignores_stride(x, weight, bias, padding, stride, *rest):
        return kernel(x, weight, bias, padding, [1, 1], *rest)

    for wrong in (raising, ignores_bias, ignores_post_op, ignores_stride):
        assert not folded_conv.computes_conv(wrong), wrong.__name__


@pytest.mark.parametrize("activation", ["gelu", "none"])
def test_under_bf16_autocast_the_folded_convolution_is_bfloat16_with_its_activation_fused(monkeypatch, activation):
    """autocast's convolution (bfloat16 operands, the folded weights rounded once and kept), the activation as the
    op's post-op: within bfloat16's rounding of the float32 result."""
    if not folded_conv.onednn_bf16_conv_works():
        pytest.skip("no native bfloat16 oneDNN convolution on this CPU")
    kernel, calls = torch.ops.mkldnn._convolution_pointwise, []
    spy = lambda *args: calls.append((args[0].dtype, args[-3])) or kernel(*args)  # input dtype, post-op
    monkeypatch.setattr(torch.ops.mkldnn, "_convolution_pointwise", spy)
    derived = recorded_derivations(monkeypatch, folded_conv)
    module, act = conv_bn(), ACTIVATIONS[activation]
    x = torch.randn(2, 8, 11, 9).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, again = module(x, act), module(x, act)
    assert calls == [(torch.bfloat16, activation)] * 2
    assert sorted(derived) == ["folded_batch_norm", "folded_batch_norm_bf16"], "folded and rounded once, kept"
    assert out.dtype == torch.bfloat16 and torch.equal(out, again)
    with torch.no_grad():
        exact = unfolded(module, x, act)
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=2**-6 * exact.abs().max())


def test_the_bfloat16_check_fails_an_op_that_drops_the_post_op():
    kernel = getattr(torch.ops.mkldnn, "_convolution_pointwise", None)
    if not folded_conv.onednn_bf16_conv_works():
        pytest.skip("no native bfloat16 oneDNN convolution on this CPU")

    def ignores_post_op(x, weight, bias, padding, stride, dilation, groups, attr, scalars, algorithm):
        return kernel(x, weight, bias, padding, stride, dilation, groups, "none", [], "")

    assert folded_conv.computes_conv(kernel, torch.bfloat16)
    assert not folded_conv.computes_conv(ignores_post_op, torch.bfloat16)


def tiny_vit() -> TinyViT:
    torch.manual_seed(0)
    model = TinyViT(
        img_size=64, in_chans=3, embed_dims=[16, 32, 48, 64], depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 4],
        window_sizes=[7, 7, 14, 7], mlp_ratio=4.0, mbconv_expand_ratio=4.0, local_conv_size=3, out_chans=32,
    )  # fmt: skip
    with torch.no_grad():  # BatchNorm statistics as a trained network has them, not the identity
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.normal_(std=0.1)
                module.running_mean.normal_(std=0.1)
                module.running_var.uniform_(0.5, 2.0)
            if hasattr(module, "attention_biases"):
                module.attention_biases.normal_()
    return model.eval()


def test_the_tiny_vit_fast_path_equals_the_reference_and_drops_its_folded_weights_on_load():
    model, image = tiny_vit(), torch.randn(1, 3, 64, 64)
    with torch.inference_mode():
        fast = model(image)
        with reference_computation():
            reference = model(image)
    torch.testing.assert_close(fast, reference, rtol=0, atol=1e-4)

    other = tiny_vit()
    with torch.no_grad():
        for module in other.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.add_(0.3)
        model(image)  # folded weights kept outside inference mode
        model.load_state_dict(other.state_dict())
        reloaded = model(image)
        with reference_computation():
            expected = other(image)
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=1e-4)


def _random_batchnorm(module: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    for submodule in module.modules():
        if isinstance(submodule, nn.BatchNorm2d):
            with torch.no_grad():
                submodule.weight.uniform_(0.5, 1.5)
                submodule.running_mean.normal_()
                submodule.running_var.uniform_(0.5, 2.0)
    return module.eval()


def _whole_strips_and_reference(module, method, x, rows, monkeypatch):
    """``module(x)`` on the whole map, in strips of ``rows`` rows (``method`` called once) and on the reference path."""
    from zoo.models.components import tiny_vit

    calls = []
    real = getattr(type(module), method)
    monkeypatch.setattr(type(module), method, lambda self, x: calls.append(1) or real(self, x))
    with torch.inference_mode():
        monkeypatch.setattr(tiny_vit, "STRIP_MIN_ELEMENTS", 2**40)
        whole = module(x)
        monkeypatch.setattr(tiny_vit, "STRIP_MIN_ELEMENTS", 0)
        monkeypatch.setattr(tiny_vit, "STRIP_ROWS", rows)
        strips = module(x)
        with reference_computation():
            reference = module(x)
    assert calls == [1]
    return whole, strips, reference


@pytest.mark.parametrize("rows", [3, 4, 7])
def test_mbconv_in_strips_equals_the_whole_map(rows, monkeypatch):
    """Strips of ``rows`` rows (the last one shorter, the first and last padded with zero rows) give the whole-map
    computation (the same sums; a strip of a batch is not contiguous, where oneDNN may block it differently: an
    ulp apart), and the upstream computation within rounding."""
    from zoo.models.components.tiny_vit import MBConv

    block = _random_batchnorm(MBConv(8, 4.0))
    x = torch.randn(2, 8, 17, 9).contiguous(memory_format=torch.channels_last)
    whole, strips, reference = _whole_strips_and_reference(block, "_forward_in_strips", x, rows, monkeypatch)
    torch.testing.assert_close(strips, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(strips, reference, rtol=0, atol=1e-5)


@pytest.mark.parametrize("rows", [2, 3, 5])
@pytest.mark.parametrize("height", [16, 17])
def test_a_stride_two_patch_merging_in_strips_equals_the_whole_map(rows, height, monkeypatch):
    """The first merge's expansion and stride-2 depthwise convolution by strips of output rows (each reading
    its own input rows, zero rows for the padding): the whole map's sums, for even and odd heights."""
    from zoo.models.components.tiny_vit import PatchMerging

    merge = _random_batchnorm(PatchMerging((height, 10), 6, 12, stride=2))
    x = torch.randn(1, 6, height, 10).contiguous(memory_format=torch.channels_last)
    whole, strips, reference = _whole_strips_and_reference(merge, "_merge_in_strips", x, rows, monkeypatch)
    assert strips.shape == whole.shape == (1, ((height + 1) // 2) * 5, 12)
    with torch.inference_mode():
        assert merge._merge_in_strips(x).is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(strips, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(strips, reference, rtol=0, atol=1e-5)
