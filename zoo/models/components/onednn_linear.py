"""``F.linear`` through oneDNN's matrix product for large float32 products on the CPU.

Which products take it depends on who serves ``F.linear``:

* MKL on an Intel CPU: oneDNN was faster on the encoders' projections and MLPs, most of all the few-row, wide
  product of SAM-Med2D's adapter down convolution written as a linear map, but slower on small products, where
  its per-call overhead dominates. Only products of at least :data:`MIN_MULTIPLY_ADDS` take it: the encoders'
  qkv, MLP and adapter products, no decoder product.
* MKL on another vendor's CPU runs its AVX2 kernels at most. Where the CPU has AVX-512 that is half the vector
  width oneDNN uses (:func:`mkl_lags_onednn`) and MKL's products were the slower ones from about a million
  multiply-adds: every product of at least :data:`MIN_MULTIPLY_ADDS_NON_INTEL_MKL` takes oneDNN
  (:func:`min_multiply_adds`), the decoders' token MLPs and upscaling products included, and so do training's
  products (:class:`OneDNNLinearFunction`: the forward product and the input and weight gradients, where
  autograd's ``F.linear`` would run all three on MKL's narrower kernels).
* Where that CPU has no AVX-512, AVX2 is its widest and MKL's kernels were the faster ones, training's too: no
  product on a plain float32 weight takes oneDNN.

Same function, same weights; only the summation order differs, as between any two GEMM kernels. Given a plain
weight, oneDNN reorders it into its own layout inside every call; a module's small weights are kept in that layout
for inference instead (:func:`kept_packed`, :func:`kept_linear`), the same products bit for bit. On that layout a
decoder's few prompt tokens through its MLP beat MKL's products on every other vendor's CPU measured
(:func:`packed_product_applies`). ``benchmarks/linear_kernels.py`` times the three kernels per shape and number of
rows and ``benchmarks/encoder_speed.py`` the encoders and clicks, with the GEMM rate of the same run.

An activation that follows the product (the ViT MLP's GELU, the adapter convolution's ReLU) runs as oneDNN's
post-op on the product's output while it is still in cache: no second pass over it and no second buffer, whose
fresh pages can cost more than the activation itself.

Under CPU bfloat16 autocast, :class:`OneDNNLinear` (and :func:`kept_linear`, for products with weights derived
from another module's parameters, e.g. a convolution written as a product) keeps a bfloat16 copy of its weight
(``weight_cache``) and multiplies with it through the same oneDNN op, activation fused (products of at least
:data:`MIN_MULTIPLY_ADDS` on every CPU: bfloat16 ``F.linear`` is oneDNN's product already), instead of letting
autocast cast the float32 weight again on every call (for a ViT-B encoder, about 170 MB converted per image):
autocast's result (a bfloat16 product of the bfloat16-rounded operands), without the conversions.

oneDNN's product is a private torch op (``torch.ops.mkldnn._linear_pointwise``). It is used only where
:func:`onednn_linear_works` found it, once per process, computing ``F.linear`` and each post-op on a tiny input
(and, for the bfloat16 path, :func:`onednn_bf16_linear_works` the same in bfloat16); elsewhere every product is
``F.linear``.
"""

import functools
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.weight_cache import derived_from_parameters, keeps_derived, records_grad

MIN_MULTIPLY_ADDS = 2**28  # rows x inputs x outputs below which F.linear's kernel was faster (MKL, Intel CPU)
MIN_MULTIPLY_ADDS_NON_INTEL_MKL = 2**21  # the same where MKL lags oneDNN (oneDNN's ~12 us call)
MIN_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2 = 2**62  # MKL on another vendor's CPU without AVX-512: no product takes oneDNN
MAX_PACKED_FLOAT32_BYTES = 4 * 2**20  # float32 weights up to this size are kept in oneDNN's layout (see kept_linear)
MIN_PACKED_WEIGHT_ELEMENTS_NON_INTEL_MKL = 2**19  # from here a kept-layout product beats MKL's at any size
# Where MKL serves another vendor's CPU without AVX-512, kept-layout products beat MKL's from this many multiply-adds
# and up to this many rows (a decoder's prompt tokens through its MLP).
MIN_PACKED_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2 = 2**20
MAX_PACKED_ROWS_NON_INTEL_MKL_AVX2 = 64
INTEL = "GenuineIntel"


def cpuinfo_field(name: str) -> str:
    """The first ``name`` field of ``/proc/cpuinfo`` (``vendor_id``, ``model name``, ...), or ``""`` where there is
    none (no such file: not Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.partition(":")[0].strip() == name:
                return line.partition(":")[2].strip()
    except OSError:
        pass
    return ""


def cpu_vendor() -> str:
    """The CPU's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...), or ``""`` where it cannot be read."""
    vendor = cpuinfo_field("vendor_id")
    if vendor:
        return vendor
    processor = platform.processor()  # Windows: "... Family 25 Model 17 Stepping 1, AuthenticAMD"
    return processor.rpartition(",")[2].strip() if "," in processor else ""


@functools.cache
def non_intel_cpu() -> bool:
    """Whether the CPU is known not to be Intel's (its vendor read once; an unreadable vendor counts as Intel's,
    where the thresholds were first measured)."""
    return cpu_vendor() not in (INTEL, "")


def mkl_on_non_intel_cpu() -> bool:
    """Whether torch's BLAS is MKL and the CPU is known not to be Intel's."""
    return torch.backends.mkl.is_available() and non_intel_cpu()


@functools.cache
def cpu_has_avx512() -> bool:
    """Whether torch's CPU kernels found AVX-512 on this CPU (``torch.backends.cpu.get_cpu_capability()``)."""
    return torch.backends.cpu.get_cpu_capability().startswith("AVX512")


def mkl_lags_onednn() -> bool:
    """Whether MKL serves a non-Intel CPU that has AVX-512: MKL runs its AVX2 kernels there, half the vector width
    of oneDNN's, and measured at under half oneDNN's rate (AMD EPYC). The kernel choices that favour oneDNN beyond
    the large encoder products (smaller products, training, attention head by head) apply only here."""
    return mkl_on_non_intel_cpu() and cpu_has_avx512()


def mkl_on_non_intel_avx2_cpu() -> bool:
    """Whether MKL serves a non-Intel CPU without AVX-512: AVX2 is its widest, MKL's kernels are full width there and
    were the faster ones on plain weights; only few-row products on kept weights take oneDNN."""
    return mkl_on_non_intel_cpu() and not cpu_has_avx512()


def onednn_reports_native_bf16() -> bool:
    """Whether oneDNN's private query exists and answers ``True`` for native bfloat16 kernels on this CPU (an op
    that is missing, raises or answers anything else: no)."""
    query = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return query is not None and passes(lambda: query() is True)


def min_multiply_adds() -> int:
    """The size (rows x inputs x outputs) from which a float32 product takes oneDNN's kernel on this machine (see
    the module docstring); on other vendors' CPUs without AVX-512, where MKL's kernels were the faster ones, a size
    no product reaches."""
    if mkl_on_non_intel_cpu():
        return MIN_MULTIPLY_ADDS_NON_INTEL_MKL if cpu_has_avx512() else MIN_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2
    return MIN_MULTIPLY_ADDS


def packed_product_applies(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`kept_linear` multiplies ``x`` with ``weight`` kept in oneDNN's layout (:func:`kept_packed`):
    a weight of at most :data:`MAX_PACKED_FLOAT32_BYTES` and a product that takes oneDNN's inference path at a size
    that depends on the CPU. Without the reorder in every call, oneDNN's few-row products on a decoder's wide MLP
    weights were faster than MKL's on other vendors' CPUs (``benchmarks/linear_kernels.py``):

    * where MKL lags oneDNN (:func:`mkl_lags_onednn`), every product with a weight of at least
      :data:`MIN_PACKED_WEIGHT_ELEMENTS_NON_INTEL_MKL` elements (with smaller ones, 384 x 384 projections, no click
      was faster);
    * where MKL serves another vendor's CPU without AVX-512, products of at most
      :data:`MAX_PACKED_ROWS_NON_INTEL_MKL_AVX2` rows and at least :data:`MIN_PACKED_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2`
      multiply-adds (a decoder's prompt tokens through its MLP, and for several prompt sets at once through its
      projections); on more rows, or on small products, MKL's were as fast, with the weight read from memory as
      inside a click;
    * elsewhere the products that take oneDNN anyway (:func:`min_multiply_adds`).
    """
    if weight.numel() * weight.element_size() > MAX_PACKED_FLOAT32_BYTES:
        return False
    min_size = min_multiply_adds()
    if mkl_lags_onednn() and weight.numel() >= MIN_PACKED_WEIGHT_ELEMENTS_NON_INTEL_MKL:
        min_size = 1
    elif mkl_on_non_intel_avx2_cpu() and x.numel() <= MAX_PACKED_ROWS_NON_INTEL_MKL_AVX2 * weight.shape[-1]:
        min_size = min(min_size, MIN_PACKED_MULTIPLY_ADDS_NON_INTEL_MKL_AVX2)
    return onednn_applies(x, weight, bias, min_size)


def agrees(out: object, expected: Tensor, dtype: torch.dtype = torch.float32, tolerance: float = 1e-4) -> bool:
    """Whether a private op's ``out`` is a ``dtype`` tensor of ``expected``'s shape and values (``tolerance``
    relative, a tenth of it absolute): the check behind trusting oneDNN's private ops."""
    return (
        isinstance(out, Tensor)
        and out.dtype == dtype
        and out.shape == expected.shape
        and torch.allclose(out.to(expected.dtype), expected, rtol=tolerance, atol=tolerance / 10)
    )


def passes(check: Callable[[], bool]) -> bool:
    """``check()`` of a kernel relied on (a private op, or a public one's rounding), run with gradients, inference
    mode and autocast off; a kernel that raises (missing, a changed signature) is not usable."""
    try:
        with torch.inference_mode(False), torch.no_grad(), torch.autocast("cpu", enabled=False):
            return check()
    except Exception:  # noqa: BLE001 - whatever the op raises, it is not used
        return False


def computes_linear(op: Callable[..., Tensor] | None) -> bool:
    """Whether ``op`` behaves as ``torch.ops.mkldnn._linear_pointwise`` is relied on to: ``F.linear`` followed by
    the named post-op (none, exact and tanh GELU, ReLU), with and without a bias, on a tiny float32 input."""
    if op is None:
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((2, 3, 8), (5, 8), (5,)))
    post_ops = {
        ("none", ""): lambda y: y,
        ("gelu", "none"): F.gelu,
        ("gelu", "tanh"): lambda y: F.gelu(y, approximate="tanh"),
        ("relu", ""): F.relu,
    }
    # Also with a transposed weight and input, as :func:`batched_product` passes them.
    transposed = (x[0].t().contiguous().t(), weight.t().contiguous().t(), bias, "none", [], "")
    return passes(lambda: all(
        agrees(op(x, weight, b, attr, [], algorithm), activation(F.linear(x, weight, b)))
        for (attr, algorithm), activation in post_ops.items() for b in (bias, None)
    ) and agrees(op(*transposed), F.linear(x[0], weight, bias)))  # fmt: skip


def computes_bf16_linear(op: Callable[..., Tensor] | None) -> bool:
    """Whether ``op`` computes ``F.linear`` and its GELU post-op in bfloat16, as :func:`computes_linear` in float32,
    on a CPU whose oneDNN reports native bfloat16 kernels."""
    if op is None or not onednn_reports_native_bf16():
        return False
    generator = torch.Generator().manual_seed(0)
    x, weight, bias = (torch.randn(*shape, generator=generator) for shape in ((2, 3, 8), (5, 8), (5,)))
    x16, weight16, bias16 = (t.to(torch.bfloat16) for t in (x, weight, bias))
    return passes(lambda: all(
        agrees(op(x16, weight16, bias16, attr, [], algorithm),
               activation(F.linear(x16.float(), weight16.float(), bias16.float())), torch.bfloat16, tolerance=2e-2)
        for attr, algorithm, activation in (("none", "", lambda y: y), ("gelu", "none", F.gelu))
    ))  # fmt: skip


@functools.cache
def onednn_linear_works() -> bool:
    """Whether this torch has oneDNN and its private linear op computes as relied on (checked once)."""
    return torch.backends.mkldnn.is_available() and computes_linear(
        getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    )


@functools.cache
def onednn_bf16_linear_works() -> bool:
    """Whether the private linear op also computes ``F.linear`` and its GELU post-op in bfloat16, on a CPU with
    native bfloat16 kernels (checked once)."""
    return onednn_linear_works() and computes_bf16_linear(getattr(torch.ops.mkldnn, "_linear_pointwise", None))


def _packing_op() -> Callable[..., Tensor] | None:
    """The private linear op taking its weight through the private reorder into oneDNN's own layout, or None."""
    op = getattr(torch.ops.mkldnn, "_linear_pointwise", None)
    reorder = getattr(torch.ops.mkldnn, "_reorder_linear_weight", None)
    if op is None or reorder is None:
        return None
    return lambda x, weight, *rest: op(x, reorder(weight.contiguous(), None), *rest)


@functools.cache
def onednn_packing_works() -> bool:
    """Whether oneDNN's private weight reorder exists and the linear op computes ``F.linear`` and its post-ops
    with a weight in the layout it returns (checked once)."""
    return onednn_linear_works() and computes_linear(_packing_op())


@functools.cache
def onednn_bf16_packing_works() -> bool:
    """:func:`onednn_packing_works` for bfloat16 weights (checked once)."""
    return onednn_bf16_linear_works() and onednn_packing_works() and computes_bf16_linear(_packing_op())


def bf16_applies(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`kept_linear` (and :class:`OneDNNLinear`) multiplies with its kept bfloat16 weight: an eager
    product on the CPU under bfloat16 autocast, float32 weights, no gradient recorded, not inside
    ``reference_computation()``. Large products run through oneDNN's op (:func:`onednn_bf16_linear_works`), the
    others through ``F.linear``, as autocast would run them."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        x.device.type == "cpu"
        and torch.is_autocast_enabled("cpu")
        and torch.get_autocast_dtype("cpu") == torch.bfloat16
        and x.dtype in (torch.float32, torch.bfloat16)
        and all(t.dtype == torch.float32 for t in tensors[1:])
        and not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))
        and not torch.compiler.is_compiling()
        and not reference_computation_enabled()
    )


def _onednn_may_compute(x: Tensor, weight: Tensor, bias: Tensor | None, min_size: int | None = None) -> bool:
    """The conditions shared by oneDNN's inference and training products: a large eager float32 CPU product (at
    least ``min_size`` multiply-adds, by default :func:`min_multiply_adds`), a weight with contiguous rows or
    columns, no autocast, no ``torch.compile`` tracing, not the reference path."""
    tensors = (x, weight) if bias is None else (x, weight, bias)
    return (
        x.device.type == "cpu"
        and all(t.dtype == torch.float32 for t in tensors)
        and (weight.is_contiguous() or weight.t().is_contiguous())
        and x.numel() * weight.shape[0] >= (min_multiply_adds() if min_size is None else min_size)
        and not torch.is_autocast_enabled("cpu")
        and not torch.compiler.is_compiling()
        and not reference_computation_enabled()
        and onednn_linear_works()
    )


def onednn_applies(x: Tensor, weight: Tensor, bias: Tensor | None = None, min_size: int | None = None) -> bool:
    """Whether :func:`linear` takes oneDNN's inference path: a large eager float32 CPU inference product, a weight
    with contiguous rows or columns.

    Not for products under ``min_size`` multiply-adds (by default :func:`min_multiply_adds`), not under autocast
    (the product must follow autocast's dtype), not while recording gradients (see :func:`onednn_trains`), not
    while ``torch.compile`` traces (inductor chooses its own kernels), not inside ``reference_computation()`` and
    not where :func:`onednn_linear_works` is false.
    """
    return not records_grad(x, weight, bias) and _onednn_may_compute(x, weight, bias, min_size)


def onednn_trains(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether :func:`linear` records a product whose forward and backward products are oneDNN's
    (:class:`OneDNNLinearFunction`): as :func:`onednn_applies`, but while recording gradients, and only where MKL
    lags oneDNN (:func:`mkl_lags_onednn`); elsewhere autograd's own ``F.linear``."""
    return records_grad(x, weight, bias) and mkl_lags_onednn() and _onednn_may_compute(x, weight, bias)


class OneDNNLinearFunction(torch.autograd.Function):
    """``F.linear`` with its forward product and its input and weight gradients computed by oneDNN's product
    (transposed operands are read in place). Not differentiable twice."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: D102
        # x is needed only for the weight's gradient: a frozen layer keeps no reference to its input.
        ctx.save_for_backward(x if ctx.needs_input_grad[1] else None, weight)
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor | None]:  # noqa: D102
        x, weight = ctx.saved_tensors
        product = torch.ops.mkldnn._linear_pointwise
        grad_x = grad_weight = grad_bias = None
        if ctx.needs_input_grad[0]:
            grad_x = product(grad, weight.t(), None, "none", [], "")  # grad @ W
        rows = grad.reshape(-1, grad.shape[-1])
        if ctx.needs_input_grad[1]:  # grad^T @ x; a contiguous grad^T measured faster than the transposed view
            grad_weight = product(rows.t().contiguous(), x.reshape(-1, x.shape[-1]).t(), None, "none", [], "")
        if ctx.needs_input_grad[2]:
            grad_bias = rows.sum(0)
        return grad_x, grad_weight, grad_bias


def fusable_activation(activation: nn.Module | None) -> tuple[str, list, str] | None:
    """oneDNN's post-op (name, scalars, algorithm) computing ``activation``, or None where there is none."""
    if activation is None:
        return "none", [], ""
    if type(activation) is nn.GELU:
        return "gelu", [], activation.approximate  # "none" (erf) or "tanh", as torch names them
    if type(activation) is nn.ReLU:
        return "relu", [], ""
    return None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: nn.Module | None = None) -> Tensor:
    """``activation(F.linear(x, weight, bias))`` (no activation if None), through oneDNN where
    :func:`onednn_applies`, with the activation fused into the product where oneDNN has it, and recorded with
    oneDNN's products for the backward pass where :func:`onednn_trains`."""
    if onednn_applies(x, weight, bias):
        return _onednn_product(x, weight, bias, activation)
    if onednn_trains(x, weight, bias):
        out = OneDNNLinearFunction.apply(x, weight, bias)
    else:
        out = F.linear(x, weight, bias)
    return out if activation is None else activation(out)


def _onednn_product(x: Tensor, weight: Tensor, bias: Tensor | None, activation: nn.Module | None) -> Tensor:
    post_op = fusable_activation(activation)
    if post_op is None:
        return activation(torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], ""))
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, *post_op)


def batched_product(a: Tensor, b: Tensor, bias: Tensor | None = None) -> Tensor:
    """``torch.baddbmm(bias, a, b)`` (``torch.bmm(a, b)`` without a bias) for ``B x M x K`` and ``B x K x N``.

    A batch of one is oneDNN's product of ``a[0]`` and ``b[0]`` transposed where :func:`onednn_applies` (no copy
    of either: oneDNN reads transposed operands); a bias of ``N`` values goes into the product, another one (e.g.
    ``B x M x 1``) is added to its result.
    """
    if a.shape[0] == 1 and b.shape[0] == 1 and onednn_applies(a[0], b[0].t(), bias):
        column_bias = bias if bias is not None and bias.dim() == 1 and bias.shape[0] == b.shape[2] else None
        out = torch.ops.mkldnn._linear_pointwise(a[0], b[0].t(), column_bias, "none", [], "").unsqueeze(0)
        return out if bias is None or column_bias is not None else out.add_(bias)
    return torch.bmm(a, b) if bias is None else torch.baddbmm(bias, a, b)


def kept_bfloat16(owner: nn.Module, weight: Tensor, bias: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """bfloat16 copies of ``weight`` and ``bias`` (``owner``'s parameters or views of them), kept on ``owner``
    (``weight_cache``) per weight shape and converted again whenever one of its parameters changes."""

    def bfloat16_copies() -> tuple[Tensor, Tensor | None]:
        return weight.to(torch.bfloat16), None if bias is None else bias.to(torch.bfloat16)

    sources = list(owner.parameters(recurse=False))
    return derived_from_parameters(owner, f"bfloat16{list(weight.shape)}", sources, bfloat16_copies)


def kept_packed(
    owner: nn.Module, weight: Tensor, bias: Tensor | None, dtype: torch.dtype
) -> tuple[Tensor, Tensor | None]:
    """``weight`` in ``dtype`` and in oneDNN's own layout for its linear op (an opaque tensor that only that op
    reads), and ``bias`` in ``dtype``, kept on ``owner`` like :func:`kept_bfloat16`'s copies.

    Given a plain weight, oneDNN's product first reorders it into that layout, on every call: the kept layout
    saves that pass over the weight, most of a product's time for few rows (a decoder's 7 prompt tokens).
    """

    def packed() -> tuple[Tensor, Tensor | None]:
        reordered = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype).contiguous(), None)
        return reordered, None if bias is None else bias.to(dtype)

    sources = list(owner.parameters(recurse=False))
    return derived_from_parameters(owner, f"onednn_packed_{dtype}{list(weight.shape)}", sources, packed)


def _keeps_packed(owner: nn.Module, dtype: torch.dtype) -> bool:
    """Whether a weight of ``owner``'s is kept in oneDNN's layout (:func:`kept_packed`) for a ``dtype`` product that
    takes oneDNN's op: the reorder is checked to work and what is derived is kept (``weight_cache``), else each
    call would reorder it anyway."""
    works = onednn_bf16_packing_works() if dtype == torch.bfloat16 else onednn_packing_works()
    return works and keeps_derived(list(owner.parameters(recurse=False)))


def kept_linear(
    owner: nn.Module, x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: nn.Module | None = None
) -> Tensor:
    """:func:`linear`, for a weight and bias that are ``owner``'s own parameters or views of them (a convolution's
    kernel reshaped to a matrix).

    Where :func:`bf16_applies`, the product runs on bfloat16 copies of them kept on ``owner`` (``weight_cache``),
    converted again whenever one of ``owner``'s parameters changes.

    A product that takes oneDNN's op multiplies with the weight kept in oneDNN's own layout (:func:`kept_packed`):
    every bfloat16 one (in place of the plain bfloat16 copy, no extra memory) and float32 ones whose weight is at
    most :data:`MAX_PACKED_FLOAT32_BYTES`, smaller products included where :func:`packed_product_applies` says
    so. Same products, bit for bit. A float32 weight kept so is a second copy of it: the cap keeps that to the
    small ones (the decoders', the ViT's output projection), where the saved reorder is a large part of a product;
    the encoders' large weights would double (over 1 GB more for SAM-Med2D) for a few percent of an encoder's time
    (``benchmarks/encoder_speed.py``).
    """
    if not bf16_applies(x, weight, bias):
        if packed_product_applies(x, weight, bias) and _keeps_packed(owner, torch.float32):
            packed, _ = kept_packed(owner, weight, None, torch.float32)
            return _onednn_product(x, packed, bias, activation)
        return linear(x, weight, bias, activation)
    x16 = x.to(torch.bfloat16)
    # bfloat16 F.linear is oneDNN's product already: the threshold measured on Intel holds everywhere (on the AMD
    # machine the lower one measured 1-2% slower).
    if x.numel() * weight.shape[0] >= MIN_MULTIPLY_ADDS and onednn_bf16_linear_works():
        if _keeps_packed(owner, torch.bfloat16):
            weight16, bias16 = kept_packed(owner, weight, bias, torch.bfloat16)
        else:
            weight16, bias16 = kept_bfloat16(owner, weight, bias)
        return _onednn_product(x16, weight16, bias16, activation)
    weight16, bias16 = kept_bfloat16(owner, weight, bias)
    out = F.linear(x16, weight16, bias16)  # autocast's own product, without converting the weight again
    return out if activation is None else activation(out)


class OneDNNLinear(nn.Linear):
    """``nn.Linear`` (same parameters, keys and function) whose large float32 CPU inference products run through
    oneDNN (:func:`linear`), with a following activation fused where oneDNN has it; under CPU bfloat16 autocast
    with a kept bfloat16 copy of the weight (module docstring)."""

    def forward(self, x: Tensor, activation: nn.Module | None = None) -> Tensor:
        """``activation(x @ weight.T + bias)``; see :func:`linear` and :func:`kept_linear`."""
        return kept_linear(self, x, self.weight, self.bias, activation)
