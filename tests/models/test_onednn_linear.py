"""``linear`` takes oneDNN's path only for eager float32 CPU inference, and computes ``F.linear`` either way."""

import pytest
import torch
from derivations import recorded_derivations
from torch import nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation
from zoo.models.components import onednn_linear
from zoo.models.components.onednn_linear import OneDNNLinear, linear, onednn_applies

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@pytest.fixture(autouse=True)
def any_size_takes_onednn(monkeypatch):
    """The tests' small products stand in for the encoders' large ones."""
    monkeypatch.setattr(onednn_linear, "min_multiply_adds", lambda: 0)
    monkeypatch.setattr(onednn_linear, "MIN_MULTIPLY_ADDS", 0)  # the bfloat16 products' threshold


def operands(rows: int = 7, inputs: int = 48, outputs: int = 80):
    generator = torch.Generator().manual_seed(0)
    return (
        torch.randn(2, rows, inputs, generator=generator),
        torch.randn(outputs, inputs, generator=generator),
        torch.randn(outputs, generator=generator),
    )


@pytest.mark.parametrize("with_bias", [True, False])
def test_equals_f_linear(with_bias):
    x, weight, bias = operands()
    bias = bias if with_bias else None
    with torch.no_grad():
        assert onednn_applies(x, weight, bias)
        out = linear(x, weight, bias)
    exact = F.linear(x.double(), weight.double(), None if bias is None else bias.double())
    assert out.shape == (2, 7, 80) and out.dtype == torch.float32
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-5 * exact.abs().max())


def test_takes_the_onednn_kernel_for_inference(monkeypatch):
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, *args):
            calls.append(1)
            return kernel(*args)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    x, weight, bias = operands()
    with torch.inference_mode():
        linear(x, weight, bias)
    assert calls == [1]


def test_falls_back_everywhere_else():
    x, weight, bias = operands()
    trainable = nn.Parameter(weight.clone())
    assert not onednn_applies(x, trainable, bias), "autograd records the product"
    assert not onednn_applies(x.double(), weight.double(), bias.double()), "float64"
    assert not onednn_applies(x, torch.randn(80, 96)[:, ::2], bias), "neither rows nor columns contiguous"
    with torch.no_grad():
        assert onednn_applies(x, trainable, bias)
        with reference_computation():
            assert not onednn_applies(x, weight, bias)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert not onednn_applies(x, weight, bias)
            assert linear(x, weight, bias).dtype == torch.bfloat16  # autocast still applies


def test_module_keeps_nn_linear_parameters_and_gradients():
    torch.manual_seed(0)
    module = OneDNNLinear(48, 80)
    plain = nn.Linear(48, 80)
    plain.load_state_dict(module.state_dict())
    assert isinstance(module, nn.Linear) and module.state_dict().keys() == plain.state_dict().keys()
    x = operands()[0]
    module(x).square().sum().backward()
    plain(x).square().sum().backward()
    torch.testing.assert_close(module.weight.grad, plain.weight.grad)
    with torch.no_grad():
        torch.testing.assert_close(module(x), plain(x), rtol=0, atol=1e-5)


ACTIVATIONS = {
    "gelu": (nn.GELU(), lambda x: F.gelu(x)),
    "gelu_tanh": (nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh")),
    "relu": (nn.ReLU(), F.relu),
    "silu (not fused)": (nn.SiLU(), F.silu),
}


@pytest.mark.parametrize("name", list(ACTIVATIONS))
def test_activation_applies_after_the_product(name):
    activation, function = ACTIVATIONS[name]
    torch.manual_seed(0)
    module = OneDNNLinear(48, 80)
    x = torch.randn(2, 30, 48) * 3
    exact = function(F.linear(x.double(), module.weight.double(), module.bias.double()))
    with torch.inference_mode():
        out = module(x, activation=activation)
        plain = linear(x, module.weight, module.bias, activation)
    for result in (out, plain):
        assert result.dtype == torch.float32
        torch.testing.assert_close(result.double(), exact, rtol=0, atol=1e-5 * exact.abs().max().item())
    with torch.autocast("cpu", dtype=torch.bfloat16), torch.inference_mode():
        assert module(x, activation=activation).dtype == torch.bfloat16  # the fallback still follows autocast


def test_fusable_activations_run_as_onednn_post_ops(monkeypatch):
    attributes = []
    kernel = torch.ops.mkldnn._linear_pointwise

    class Spy:
        def __call__(self, x, weight, bias, attr, scalars, algorithm):
            attributes.append((attr, algorithm))
            return kernel(x, weight, bias, attr, scalars, algorithm)

    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", Spy())
    x, weight, bias = operands(rows=64)
    with torch.inference_mode():
        linear(x, weight, bias, nn.GELU())
        linear(x, weight, bias, nn.GELU(approximate="tanh"))
        linear(x, weight, bias, nn.ReLU())
        linear(x, weight, bias, nn.SiLU())
        linear(x, weight, bias)
    assert attributes == [("gelu", "none"), ("gelu", "tanh"), ("relu", ""), ("none", ""), ("none", "")]


def test_small_products_keep_f_linear(monkeypatch):
    x, weight, bias = operands()  # 2 x 7 x 48 @ 48 -> 80: 53760 multiply-adds
    with torch.inference_mode():
        assert onednn_applies(x, weight, bias)
        monkeypatch.setattr(onednn_linear, "min_multiply_adds", lambda: 2 * 7 * 48 * 80 + 1)
        assert not onednn_applies(x, weight, bias)
        torch.testing.assert_close(linear(x, weight, bias, nn.GELU()), F.gelu(F.linear(x, weight, bias)))


def test_mlp_block_fuses_its_activation_and_still_runs_with_a_replaced_layer():
    from zoo.models.components.layers import MLPBlock

    torch.manual_seed(0)
    block = MLPBlock(48, 96, nn.GELU)
    x = torch.randn(2, 30, 48)
    with torch.inference_mode():
        expected = F.linear(F.gelu(F.linear(x, block.lin1.weight, block.lin1.bias)), block.lin2.weight, block.lin2.bias)
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-5)
        plain = nn.Linear(48, 96)
        plain.load_state_dict(block.lin1.state_dict())
        block.lin1 = nn.Sequential(plain)  # a wrapper whose forward takes only x
        torch.testing.assert_close(block(x), expected, rtol=0, atol=1e-5)


def test_the_private_op_counts_only_where_it_computes_f_linear_and_its_post_ops():
    kernel = torch.ops.mkldnn._linear_pointwise
    assert onednn_linear.computes_linear(kernel)
    assert not onednn_linear.computes_linear(None), "op missing from this torch"

    def raising(*args):
        raise RuntimeError("changed signature")

    def ignores_bias(x, weight, bias, attr, scalars, algorithm):
        return kernel(x, weight, None, attr, scalars, algorithm)

    def ignores_post_op(x, weight, bias, attr, scalars, algorithm):
        return kernel(x, weight, bias, "none", [], "")

    def exact_gelu_for_tanh(x, weight, bias, attr, scalars, algorithm):
        return kernel(x, weight, bias, attr, scalars, "none" if attr == "gelu" else algorithm)

    for wrong in (raising, ignores_bias, ignores_post_op, exact_gelu_for_tanh):
        assert not onednn_linear.computes_linear(wrong), wrong.__name__


def test_without_a_working_op_every_product_is_f_linear(monkeypatch):
    """The fallback, forced: no call reaches the private op and the results are F.linear's."""
    monkeypatch.setattr(onednn_linear, "onednn_linear_works", lambda: False)
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1))
    x, weight, bias = operands(rows=64)
    with torch.inference_mode():
        assert not onednn_applies(x, weight, bias)
        for activation, function in ACTIVATIONS.values():
            torch.testing.assert_close(linear(x, weight, bias, activation), function(F.linear(x, weight, bias)))
        block_out = OneDNNLinear(48, 80)(x, nn.GELU())
    assert calls == [] and block_out.shape == (2, 64, 80)


def test_the_op_is_checked_once_per_process(monkeypatch):
    onednn_linear.onednn_linear_works.cache_clear()
    checks = []
    real = onednn_linear.computes_linear
    monkeypatch.setattr(onednn_linear, "computes_linear", lambda op: checks.append(op) or real(op))
    x, weight, bias = operands()
    with torch.inference_mode():
        for _ in range(3):
            linear(x, weight, bias)
    assert len(checks) == 1
    onednn_linear.onednn_linear_works.cache_clear()


def test_under_bf16_autocast_the_kept_bfloat16_weight_gives_autocasts_product(monkeypatch):
    """The product of the bfloat16-rounded operands, in bfloat16, as autocast computes it, but from a bfloat16
    weight converted once and kept until the parameter changes."""
    if not onednn_linear.onednn_bf16_linear_works():
        pytest.skip("no native bfloat16 oneDNN kernels on this CPU")
    layer = OneDNNLinear(48, 80)
    x = torch.randn(2, 64, 48)
    conversions = recorded_derivations(monkeypatch, onednn_linear, record=lambda owner, slot: 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert onednn_linear.bf16_applies(x, layer.weight, layer.bias)
        out = layer(x, nn.GELU())
        again = layer(x, nn.GELU())
        with monkeypatch.context() as plain:
            plain.setattr(onednn_linear, "bf16_applies", lambda *args: False)
            autocast_out = F.gelu(layer(x))
    assert out.dtype == autocast_out.dtype == torch.bfloat16
    assert conversions == [1], "the weight is converted once and kept"
    torch.testing.assert_close(out, again, rtol=0, atol=0)
    rounded = F.gelu(F.linear(*(t.to(torch.bfloat16).double() for t in (x, layer.weight, layer.bias))))
    tolerance = 2**-7 * rounded.abs().max().item()  # bfloat16's 8-bit significand, on the output's scale
    torch.testing.assert_close(out.double(), rounded, rtol=0, atol=tolerance)
    torch.testing.assert_close(out.double(), autocast_out.double(), rtol=0, atol=tolerance)

    with torch.no_grad():
        layer.weight.mul_(-1.0)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            flipped = layer(x)
    assert conversions == [1, 1], "a changed weight is converted again"
    expected = F.linear(*(t.to(torch.bfloat16).double() for t in (x, layer.weight, layer.bias)))
    torch.testing.assert_close(flipped.double(), expected, rtol=0, atol=2**-7 * expected.abs().max().item())


def test_the_bfloat16_path_stays_off_for_training_fp32_and_the_reference():
    layer, x = OneDNNLinear(48, 80), torch.randn(2, 64, 48)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not onednn_linear.bf16_applies(x, layer.weight, layer.bias), "the weight records gradients"
        with torch.no_grad(), reference_computation():
            assert not onednn_linear.bf16_applies(x, layer.weight, layer.bias)
    with torch.no_grad():
        assert not onednn_linear.bf16_applies(x, layer.weight, layer.bias), "no autocast"


def test_under_bf16_autocast_a_small_product_keeps_its_weight_and_gives_autocasts_result(monkeypatch):
    """Below the oneDNN threshold the product is ``F.linear`` as autocast runs it, bit for bit, but with the
    bfloat16 weight kept instead of converted on every call (a decoder's many small products)."""
    monkeypatch.setattr(onednn_linear, "MIN_MULTIPLY_ADDS", 2**62)
    layer = OneDNNLinear(48, 80)
    x = torch.randn(2, 7, 48)
    conversions = recorded_derivations(monkeypatch, onednn_linear, record=lambda owner, slot: 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, again = layer(x, nn.ReLU()), layer(x, nn.ReLU())
        expected = F.relu(F.linear(x, layer.weight, layer.bias))
    assert conversions == [1]
    assert out.dtype == expected.dtype == torch.bfloat16
    assert torch.equal(out, expected) and torch.equal(again, expected)


def test_a_patch_embedding_keeps_its_kernel_in_bfloat16_until_the_kernel_changes(monkeypatch):
    """The ViT patch embedding multiplies patch rows by its kernel as a matrix (a reshaped view of the parameter,
    made anew on every call): its bfloat16 copy is kept on the convolution and follows the parameter."""
    from zoo.models.components.vit_encoder import PatchEmbed

    embed = PatchEmbed(spatial_dims=3, patch_size=4, in_chans=1, embed_dim=24)
    x = torch.randn(1, 1, 8, 8, 8)
    conversions = recorded_derivations(monkeypatch, onednn_linear, record=lambda owner, slot: owner)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        first, again = embed(x), embed(x)
        assert conversions == [embed.proj], "converted once, kept on the convolution"
        embed.proj.weight.mul_(-1.0)
        flipped = embed(x)
        expected = embed.proj(x).movedim(1, -1)  # autocast's convolution on the changed kernel
    assert conversions == [embed.proj, embed.proj], "converted again after the kernel changed"
    assert first.dtype == torch.bfloat16 and torch.equal(first, again)
    tolerance = 2**-6 * expected.abs().max().item()
    torch.testing.assert_close(flipped.float(), expected.float(), rtol=0, atol=tolerance)


@pytest.mark.parametrize(
    ("vendor", "mkl", "capability", "threshold", "lags"),
    [
        ("GenuineIntel", True, "AVX512", onednn_linear.MIN_MULTIPLY_ADDS, False),
        ("GenuineIntel", True, "AVX2", onednn_linear.MIN_MULTIPLY_ADDS, False),
        ("AuthenticAMD", True, "AVX512", onednn_linear.MIN_MULTIPLY_ADDS_NON_INTEL_MKL, True),
        ("AuthenticAMD", True, "AVX2", onednn_linear.MIN_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2, False),  # MKL full width
        ("AuthenticAMD", False, "AVX512", onednn_linear.MIN_MULTIPLY_ADDS, False),  # another BLAS: not MKL's speed
        ("", True, "AVX512", onednn_linear.MIN_MULTIPLY_ADDS, False),  # unknown vendor: as measured on Intel
    ],
)
def test_threshold_follows_who_serves_f_linear(monkeypatch, vendor, mkl, capability, threshold, lags):
    """MKL runs at most AVX2 kernels on CPUs of other vendors: with AVX-512 there, oneDNN takes every product but
    the smallest; without it, none."""
    monkeypatch.undo()  # the autouse fixture's threshold
    monkeypatch.setattr(onednn_linear, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: capability)
    onednn_linear.non_intel_cpu.cache_clear()
    onednn_linear.cpu_has_avx512.cache_clear()
    try:
        assert onednn_linear.min_multiply_adds() == threshold
        assert onednn_linear.mkl_lags_onednn() == lags
        if threshold == onednn_linear.MIN_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2:
            x, weight, bias = operands(rows=1)
            encoder_sized = x[:1, :1].expand(1, 2**24, 48)  # 2^24 tokens, no memory: not even this takes oneDNN
            with torch.inference_mode():
                assert not onednn_applies(encoder_sized, weight, bias)
            return
        x, weight, bias = operands(rows=threshold // (48 * 80) + 1)  # 2 x rows x 48 @ 48 -> 80: at the threshold
        with torch.inference_mode():
            assert onednn_applies(x, weight, bias) == onednn_linear.onednn_linear_works()
            assert not onednn_applies(x[:, : max(1, threshold // (2 * 48 * 80) - 1)], weight, bias)
    finally:
        onednn_linear.non_intel_cpu.cache_clear()
        onednn_linear.cpu_has_avx512.cache_clear()


def test_the_vendor_is_read_once_per_process(monkeypatch):
    """Kernel choices ask on every product and attention call: /proc/cpuinfo is read once."""
    reads = []
    monkeypatch.setattr(onednn_linear, "cpu_vendor", lambda: reads.append(1) or "AuthenticAMD")
    onednn_linear.non_intel_cpu.cache_clear()
    try:
        assert all(onednn_linear.non_intel_cpu() for _ in range(3)) and reads == [1]
    finally:
        onednn_linear.non_intel_cpu.cache_clear()


def test_cpu_vendor_reads_proc_cpuinfo_or_the_platform(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\n")
    real_path = onednn_linear.Path
    monkeypatch.setattr(onednn_linear, "Path", lambda name: cpuinfo if name == "/proc/cpuinfo" else real_path(name))
    assert onednn_linear.cpu_vendor() == "AuthenticAMD"
    monkeypatch.setattr(onednn_linear, "Path", lambda name: tmp_path / "missing")
    windows = "AMD64 Family 25 Model 17 Stepping 1, AuthenticAMD"
    monkeypatch.setattr(onednn_linear.platform, "processor", lambda: windows)
    assert onednn_linear.cpu_vendor() == "AuthenticAMD"
    monkeypatch.setattr(onednn_linear.platform, "processor", lambda: "")
    assert onednn_linear.cpu_vendor() == ""


@pytest.mark.parametrize("bias_shape", [None, (80,), (1, 7, 1)])
@pytest.mark.parametrize("transposed", [False, True])
def test_batched_product_equals_baddbmm_and_takes_onednn_for_a_batch_of_one(monkeypatch, bias_shape, transposed):
    generator = torch.Generator().manual_seed(0)
    a = torch.randn(1, 48, 7, generator=generator).transpose(1, 2) if transposed else torch.randn(1, 7, 48)
    b = torch.randn(1, 48, 80, generator=generator)
    b = b if transposed else torch.randn(1, 80, 48, generator=generator).transpose(1, 2)  # either layout of rows
    bias = None if bias_shape is None else torch.randn(*bias_shape, generator=generator)
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or kernel(*args))
    with torch.inference_mode():
        out = onednn_linear.batched_product(a, b, bias)
        exact = torch.bmm(a.double(), b.double()) + (0 if bias is None else bias.double())
        assert calls == [1]
        assert out.shape == (1, 7, 80)
        torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-5 * exact.abs().max())
        a2, b2 = a.expand(2, -1, -1), b.expand(2, -1, -1)
        two = onednn_linear.batched_product(a2, b2, bias)  # larger batches: baddbmm's own
        assert calls == [1] and torch.equal(two, torch.bmm(a2, b2) if bias is None else torch.baddbmm(bias, a2, b2))


@pytest.fixture
def mkl_lags_onednn(monkeypatch):
    """Training products take oneDNN only where MKL lags it (another vendor's CPU with AVX-512): stand in for one."""
    monkeypatch.setattr(onednn_linear, "mkl_lags_onednn", lambda: True)


def recorded_kernel_calls(monkeypatch) -> list[int]:
    calls = []
    kernel = torch.ops.mkldnn._linear_pointwise
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(1) or kernel(*args))
    return calls


def test_training_products_and_gradients_are_onednns_where_mkl_lags_it(monkeypatch, mkl_lags_onednn):
    x, weight, bias = (nn.Parameter(t) for t in operands(rows=30))
    calls = recorded_kernel_calls(monkeypatch)
    assert onednn_linear.onednn_trains(x, weight, bias) and not onednn_applies(x, weight, bias)
    out = linear(x, weight, bias, nn.GELU())
    assert type(out.grad_fn.next_functions[0][0]).__name__ == "OneDNNLinearFunctionBackward"
    grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1))
    out.backward(grad)
    assert len(calls) == 3, "forward, input gradient, weight gradient"
    exact = [t.detach().double().requires_grad_() for t in (x, weight, bias)]
    F.gelu(F.linear(*exact)).backward(grad.double())
    for ours, reference in zip((x, weight, bias), exact):
        scale = reference.grad.abs().max()
        torch.testing.assert_close(ours.grad.double(), reference.grad, rtol=0, atol=1e-5 * scale)


def test_a_frozen_layer_keeps_no_reference_to_its_input(monkeypatch, mkl_lags_onednn):
    x = nn.Parameter(operands(rows=30)[0])
    weight, bias = operands(rows=30)[1:]  # frozen: only the input's gradient
    out = linear(x, weight, bias)
    saved_input, saved_weight = out.grad_fn.saved_tensors
    assert saved_input is None and saved_weight is weight
    calls = recorded_kernel_calls(monkeypatch)
    out.backward(torch.ones_like(out))
    assert len(calls) == 1
    torch.testing.assert_close(x.grad, torch.ones_like(out) @ weight, rtol=0, atol=1e-5)


def test_training_keeps_autograds_linear_where_mkl_does_not_lag_onednn(monkeypatch):
    monkeypatch.setattr(onednn_linear, "mkl_lags_onednn", lambda: False)
    x, weight, bias = (nn.Parameter(t) for t in operands(rows=30))
    calls = recorded_kernel_calls(monkeypatch)
    assert not onednn_linear.onednn_trains(x, weight, bias)
    linear(x, weight, bias).sum().backward()
    assert calls == [] and x.grad is not None


def test_a_small_float32_weight_is_kept_in_onednns_layout_and_follows_the_parameter(monkeypatch):
    """The same product bit for bit as oneDNN's on the plain weight, with the reorder done once per state of the
    parameter instead of inside every call."""
    if not onednn_linear.onednn_packing_works():
        pytest.skip("oneDNN's weight reorder is not usable in this torch")
    layer = OneDNNLinear(48, 80).eval()
    x = torch.randn(2, 7, 48)
    derived = recorded_derivations(monkeypatch, onednn_linear)
    kernel = torch.ops.mkldnn._linear_pointwise
    with torch.no_grad():
        out, again = layer(x, nn.GELU()), layer(x, nn.GELU())
        plain = kernel(x, layer.weight, layer.bias, "gelu", [], "none")
        assert derived == ["onednn_packed_torch.float32[80, 48]"], "reordered once, kept"
        assert torch.equal(out, plain) and torch.equal(again, plain)
        layer.weight.mul_(-1.0)
        flipped = layer(x)
    assert len(derived) == 2, "reordered again after the weight changed"
    assert torch.equal(flipped, kernel(x, layer.weight, layer.bias, "none", [], ""))
    exact = F.linear(x.double(), layer.weight.detach().double(), layer.bias.detach().double())
    torch.testing.assert_close(flipped.double(), exact, rtol=0, atol=1e-5 * exact.abs().max())


# (MKL on another vendor's CPU, AVX-512): which products take the kept layout, for 3 rows and for 5 rows.
PACKED_BY_CPU = {
    "mkl_amd_avx512": ((True, True), {3: ["large"], 5: ["large"]}),  # MKL lags oneDNN: any rows, large weights
    "mkl_amd_avx2": ((True, False), {3: ["large"], 5: []}),  # few rows only, large weights
    "intel_or_no_mkl": ((False, True), {3: [], 5: []}),  # only products above min_multiply_adds
}


@pytest.mark.parametrize("cpu", sorted(PACKED_BY_CPU))
def test_few_row_products_with_a_large_kept_weight_take_onednn_where_they_beat_mkl(monkeypatch, cpu):
    """Below every plain size threshold, a product whose float32 weight is large enough runs on the kept layout
    where MKL serves another vendor's CPU (a decoder's few prompt tokens through its wide MLP): at any number of
    rows where MKL lags oneDNN (AVX-512), up to MAX_PACKED_ROWS_NON_INTEL_MKL_AVX2 rows where it does not (AVX2),
    there from MIN_PACKED_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2 multiply-adds. A smaller product, or an Intel CPU,
    keeps F.linear."""
    if not onednn_linear.onednn_packing_works():
        pytest.skip("oneDNN's weight reorder is not usable in this torch")
    (mkl_on_other_vendor, avx512), expected = PACKED_BY_CPU[cpu]
    monkeypatch.setattr(onednn_linear, "min_multiply_adds", lambda: 2**62)
    monkeypatch.setattr(onednn_linear, "mkl_on_non_intel_cpu", lambda: mkl_on_other_vendor)
    monkeypatch.setattr(onednn_linear, "cpu_has_avx512", lambda: avx512)
    monkeypatch.setattr(onednn_linear, "MIN_PACKED_WEIGHT_ELEMENTS_NON_INTEL_MKL", 80 * 48)
    monkeypatch.setattr(onednn_linear, "MIN_PACKED_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2", 3 * 80 * 48)
    monkeypatch.setattr(onednn_linear, "MAX_PACKED_ROWS_NON_INTEL_MKL_AVX2", 4)
    for rows, packed in expected.items():
        layers = {"large": OneDNNLinear(48, 80).eval(), "small": OneDNNLinear(48, 79).eval()}
        x = torch.randn(1, rows, 48)
        derived = recorded_derivations(monkeypatch, onednn_linear)
        with torch.no_grad():
            outs = {name: layer(x, nn.GELU()) for name, layer in layers.items()}
        assert derived == ["onednn_packed_torch.float32[80, 48]" for _ in packed], (rows, derived)
        for name, layer in layers.items():
            exact = F.gelu(F.linear(x.double(), layer.weight.detach().double(), layer.bias.detach().double()))
            torch.testing.assert_close(outs[name].double(), exact, rtol=0, atol=1e-5 * exact.abs().max())
        layer = layers["large"].train()
        layer(x).sum().backward()  # training never keeps it
        assert len(derived) == len(packed) and layer.weight.grad is not None


def test_large_float32_weights_and_training_keep_the_plain_weight(monkeypatch):
    """A large float32 weight is not copied (the copy would double an encoder's weights), and nothing is kept
    while autograd records the product."""
    layer = OneDNNLinear(48, 80)
    x = torch.randn(2, 7, 48)
    derived = recorded_derivations(monkeypatch, onednn_linear)
    monkeypatch.setattr(onednn_linear, "MAX_PACKED_FLOAT32_BYTES", 80 * 48 * 4 - 1)
    with torch.no_grad():
        out = layer(x)
    layer(x).sum().backward()  # training: F.linear (or oneDNN's autograd function), no kept copy
    assert derived == [] and layer.weight.grad is not None
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-5)


def test_under_bf16_autocast_a_onednn_product_keeps_its_bfloat16_weight_in_onednns_layout(monkeypatch):
    """In place of the plain bfloat16 copy (no extra memory), and the same product bit for bit."""
    if not onednn_linear.onednn_bf16_packing_works():
        pytest.skip("no native bfloat16 oneDNN kernels, or no usable weight reorder, on this CPU")
    layer = OneDNNLinear(48, 80).eval()
    x = torch.randn(2, 64, 48)
    derived = recorded_derivations(monkeypatch, onednn_linear)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, again = layer(x, nn.GELU()), layer(x, nn.GELU())
        plain = torch.ops.mkldnn._linear_pointwise(
            x.to(torch.bfloat16), layer.weight.to(torch.bfloat16), layer.bias.to(torch.bfloat16), "gelu", [], "none"
        )
    assert derived == ["onednn_packed_torch.bfloat16[80, 48]"]
    assert out.dtype == torch.bfloat16 and torch.equal(out, plain) and torch.equal(again, plain)


def test_without_a_working_reorder_the_plain_weight_is_used(monkeypatch):
    monkeypatch.setattr(onednn_linear, "onednn_packing_works", lambda: False)
    monkeypatch.setattr(onednn_linear, "onednn_bf16_packing_works", lambda: False)
    layer = OneDNNLinear(48, 80).eval()
    x = torch.randn(2, 7, 48)
    derived = recorded_derivations(monkeypatch, onednn_linear)
    with torch.no_grad():
        out = layer(x)
    assert derived == []
    torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=0, atol=1e-5)


def test_the_reorder_is_trusted_only_where_the_product_with_it_computes_f_linear(monkeypatch):
    reorder = torch.ops.mkldnn._reorder_linear_weight
    assert onednn_linear.computes_linear(onednn_linear._packing_op()) == onednn_linear.onednn_packing_works()
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", lambda w, size: reorder(w * 1.5, size))
    assert not onednn_linear.computes_linear(onednn_linear._packing_op())
    monkeypatch.setattr(torch.ops.mkldnn, "_reorder_linear_weight", None)  # a torch without the op
    assert onednn_linear._packing_op() is None and not onednn_linear.computes_linear(None)
