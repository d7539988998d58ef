"""The padding-free windowed attention equals upstream's zero-padded windows (the reference path) exactly.

Each tiny comparison runs the fast path twice: in float64, where the closed form must agree with the float64
reference to rounding (1e-10), and in float32, where it must stay within 1e-5 of that float64 reference.
"""

import pytest
import torch
from torch import nn

import zoo
from zoo.models.components.attention import RelPosAttention, window_partition, window_unpartition
from zoo.models.components.compute_path import reference_computation, reference_computation_enabled
from zoo.models.components import fast_window_attention
from zoo.models.components.fast_window_attention import broadcast_sum_mask, padded_window_attention, window_groups
from zoo.models.components.vit_encoder import ViTBlock

TOL = {torch.float32: 1e-5, torch.float64: 1e-10}
FULL_SIZE_TOL = 1e-4


def randomise(module: nn.Module, seed: int, scale: float = 0.3) -> nn.Module:
    """Non-zero weights everywhere, including relative-position tables and biases (zero-initialised upstream)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * scale)
    return module


def tokens(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def reference_windows(attn: RelPosAttention, x: torch.Tensor, window_size: int) -> torch.Tensor:
    grid = tuple(x.shape[1:-1])
    windows, padded = window_partition(x, window_size)
    return window_unpartition(attn(windows), window_size, padded, grid)


def fast_windows(attn: RelPosAttention, x: torch.Tensor, window_size: int) -> torch.Tensor:
    return padded_window_attention(attn, x, (window_size,) * (x.ndim - 2))


def make_attention(spatial_dims, window_size, sam_med3d_broadcast=False, qkv_bias=True, use_rel_pos=True, seed=0):
    attn = RelPosAttention(
        spatial_dims, dim=16, num_heads=2, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos,
        input_size=(window_size,) * spatial_dims, sam_med3d_broadcast=sam_med3d_broadcast,
    )
    return randomise(attn, seed).eval()


def assert_fast_matches_reference(attn: RelPosAttention, x: torch.Tensor, window_size: int) -> None:
    """float64: fast == reference to rounding. float32: fast within 1e-5 of the float64 reference (the float32
    reference itself drifts further on big windows, where it sums thousands of padded keys)."""
    with torch.no_grad():
        fast32 = fast_windows(attn.float(), x.float(), window_size)
        attn.double()
        truth = reference_windows(attn, x.double(), window_size)
        fast64 = fast_windows(attn, x.double(), window_size)
    torch.testing.assert_close(fast64, truth, rtol=0, atol=TOL[torch.float64])
    torch.testing.assert_close(fast32.double(), truth, rtol=0, atol=TOL[torch.float32])


# (grid, window): window larger than the grid, ragged last windows, exact tiling, non-square grids;
# ((16, 16), 14) is SAM-Med2D's layout: four windows of a 28x28 padded grid, each padded differently.
CASES_2D = [((4, 4), 6), ((8, 8), 3), ((16, 16), 14), ((5, 7), 4), ((6, 6), 3)]
CASES_3D = [((4, 4, 4), 6), ((5, 5, 5), 3), ((6, 6, 6), 4), ((3, 4, 5), 2), ((4, 4, 4), 2)]
# ((8, 8, 8), 14) is the released SAM-Med3D layout: one 14^3 window, 2232 of its 2744 tokens padding.
CUBIC_3D = [((4, 4, 4), 6), ((5, 5, 5), 3), ((6, 6, 6), 4), ((7, 7, 7), 4), ((8, 8, 8), 14)]


@pytest.mark.parametrize(("grid", "window_size"), CASES_2D)
def test_fast_2d_windows_match_zero_padded_windows(grid, window_size):
    assert_fast_matches_reference(make_attention(2, window_size), tokens(2, *grid, 16), window_size)


@pytest.mark.parametrize(("grid", "window_size"), CASES_3D)
def test_fast_3d_windows_match_zero_padded_windows(grid, window_size):
    assert_fast_matches_reference(make_attention(3, window_size), tokens(2, *grid, 16), window_size)


@pytest.mark.parametrize(("grid", "window_size"), CUBIC_3D)
def test_fast_windows_reproduce_sam_med3d_broadcasting(grid, window_size):
    attn = make_attention(3, window_size, sam_med3d_broadcast=True)
    assert_fast_matches_reference(attn, tokens(2, *grid, 16), window_size)


@pytest.mark.parametrize(
    ("grid", "sam_med3d_broadcast"), [((5, 7), False), ((4, 5, 3), False), ((4, 4, 4), True)]
)
def test_fast_global_attention_matches_plain_attention(grid, sam_med3d_broadcast):
    attn = RelPosAttention(len(grid), 16, 2, input_size=grid, sam_med3d_broadcast=sam_med3d_broadcast)
    randomise(attn, seed=3).eval()
    x = tokens(2, *grid, 16)
    with torch.no_grad():
        torch.testing.assert_close(padded_window_attention(attn, x, grid), attn(x), rtol=0, atol=TOL[torch.float32])


@pytest.mark.parametrize(("qkv_bias", "use_rel_pos"), [(False, True), (True, False), (False, False)])
def test_fast_windows_without_qkv_bias_or_relative_positions(qkv_bias, use_rel_pos):
    attn = make_attention(2, 3, qkv_bias=qkv_bias, use_rel_pos=use_rel_pos)
    assert_fast_matches_reference(attn, tokens(1, 8, 7, 16), 3)


def test_fast_windows_stay_exact_when_relative_positions_dominate_the_logits():
    """Biases up to ~80 (std 8): the closed form is exact (float64) and the log-space sums stay accurate in float32."""
    attn = make_attention(3, 6, sam_med3d_broadcast=True)
    with torch.no_grad():
        for table in attn.rel_pos_tables():
            table.mul_(8)
    x = tokens(1, 4, 4, 4, 16)
    with torch.no_grad():
        fast32 = fast_windows(attn, x, 6)
        attn.double()
        truth = reference_windows(attn, x.double(), 6)
        fast64 = fast_windows(attn, x.double(), 6)
    torch.testing.assert_close(fast64, truth, rtol=0, atol=1e-10)
    assert torch.isfinite(fast32).all()
    torch.testing.assert_close(fast32.double(), truth, rtol=0, atol=1e-4)


@pytest.mark.parametrize("sam_med3d_broadcast", [False, True])
def test_fast_windows_have_the_reference_gradients(sam_med3d_broadcast):
    attn = make_attention(3, 3, sam_med3d_broadcast=sam_med3d_broadcast).double()
    x = tokens(1, 5, 5, 5, 16).double()
    grads = []
    for run in (fast_windows, reference_windows):
        attn.zero_grad()
        inputs = x.clone().requires_grad_()
        run(attn, inputs, 3).square().sum().backward()
        grads.append([inputs.grad] + [p.grad.clone() for p in attn.parameters()])
    for fast, reference in zip(*grads):
        torch.testing.assert_close(fast, reference, rtol=1e-9, atol=1e-9)


def test_window_groups_cover_every_token_once():
    grid, window_size = (16, 9, 5), 4
    covered = torch.zeros(grid, dtype=torch.int64)
    for group in window_groups(grid, (window_size,) * 3):
        covered[group.slices] += 1
        box = [s.stop - s.start for s in group.slices]
        assert all(size % extent == 0 for size, extent in zip(box, group.extent))
    assert (covered == 1).all()


def test_reference_computation_is_scoped_to_its_block():
    assert not reference_computation_enabled()
    with reference_computation():
        assert reference_computation_enabled()
    assert not reference_computation_enabled()


@pytest.mark.parametrize("window_size", [3, 0])
def test_vit_block_uses_the_fast_path_unless_reference_is_requested(monkeypatch, window_size):
    block = ViTBlock(2, 16, 2, 2.0, True, True, window_size=window_size, grid_size=(4, 4)).eval()
    randomise(block, seed=4)
    calls = []

    def spy(*args):
        calls.append(args)
        return padded_window_attention(*args)

    monkeypatch.setattr("zoo.models.components.vit_encoder.padded_window_attention", spy)
    x = tokens(1, 4, 4, 16)
    with torch.no_grad():
        fast = block(x)
        assert len(calls) == 1
        with reference_computation():
            reference = block(x)
    assert len(calls) == 1
    torch.testing.assert_close(fast, reference, rtol=0, atol=TOL[torch.float32])


def test_fast_windows_run_under_cpu_bf16_autocast():
    attn = make_attention(3, 6, sam_med3d_broadcast=True)
    x = tokens(1, 4, 4, 4, 16)
    with torch.no_grad():
        exact = reference_windows(attn, x, 6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = fast_windows(attn, x, 6)
    assert low.dtype == torch.bfloat16
    # bf16 keeps 8 mantissa bits; the error is relative to the output scale.
    assert (low.float() - exact).abs().max() <= 0.05 * exact.abs().max()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("padded", [False, True])
def test_the_mask_written_in_place_is_the_broadcast_sum(dtype, padded):
    """Without gradients the bias is written into the mask; the same values as the sum autograd builds (and, in
    bfloat16, as torch's own bfloat16 sum), the padded boxes' column after it."""
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(6, 3, 4, 2, 1, 1, 2, generator=generator).to(dtype)  # SAM-Med3D's query-side term
    second = torch.randn(6, 3, 4, 1, 3, 4, 2, generator=generator).to(dtype)  # and its key-side terms
    boxes = [torch.randn(6, 3, 4, 2, generator=generator).to(dtype) for _ in range(2)] if padded else []
    with torch.no_grad():
        written = broadcast_sum_mask(first, second, boxes)
    built = broadcast_sum_mask(first.requires_grad_(), second, boxes)
    assert built.requires_grad and not written.requires_grad
    assert written.shape == (6, 24, 24 + padded) and written.is_contiguous() and written.dtype == dtype
    assert torch.equal(written, built.detach())
    assert torch.equal(written[..., :24], (first + second).detach().reshape(6, 24, 24))
    if padded:
        assert torch.equal(written[..., 24], torch.logsumexp(torch.stack(boxes), dim=0).reshape(6, 24))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("padded", [False, True])
def test_sam_med3d_terms_in_reduced_precision_are_summed_by_one_product_rounding_once(dtype, padded):
    """SAM-Med3D's three bias terms (per query a[kw], per (d, h) row b[kd, kw] and c[kh, kw]) are summed by one
    product with a 0/1 matrix; on a mask of real size (w extent 5 of a window of 8 when padded) every entry is
    their float32 sum rounded once, and the padded keys' column follows the real keys."""
    generator = torch.Generator().manual_seed(0)
    rd, rh, rw = (8, 8, 5) if padded else (8, 8, 8)
    a, b, c = ((torch.randn(12, rd, rh, k, rw, generator=generator) * 40).to(dtype) for k in (rw, rd, rh))
    boxes = [torch.randn(12, rd, rh, rw, generator=generator).to(dtype)] if padded else []
    assert fast_window_attention.product_sums_round_once(dtype), "the kernel's rounding changed"
    selection = fast_window_attention._sam_med3d_selection(rd, rh, rw, dtype, a.device)
    mask = fast_window_attention._sam_med3d_mask_by_product(a, b, c, boxes, selection)
    keys = rd * rh * rw
    assert mask.shape == (12, keys, keys + padded) and mask.dtype == dtype
    total = a.float()[:, :, :, :, None, None, :] + b.float()[:, :, :, None, :, None, :]
    total = total + c.float()[:, :, :, None, None, :, :]
    assert torch.equal(mask[..., :keys], total.to(dtype).reshape(12, keys, keys))
    if padded:
        assert torch.equal(mask[..., keys], boxes[0].reshape(12, keys))


@pytest.mark.parametrize("extent", [(14, 14), (2, 14), (14, 2)])
def test_separable_masks_in_bfloat16_are_one_product_equal_to_the_broadcast_sum(extent, monkeypatch):
    """SAM's 2D bias in bfloat16 (a real SAM-Med2D window of 14 and its partial ones) is written by one product
    with a 0/1 matrix; it equals the broadcast sum that autograd builds, padded keys' column included."""
    generator = torch.Generator().manual_seed(0)
    q = torch.randn(12, extent[0] * extent[1], 64, generator=generator).to(torch.bfloat16)
    tables = [torch.randn(27, 64, generator=generator) for _ in range(2)]
    owner, products = nn.Module(), []
    assert fast_window_attention.product_sums_round_once(torch.bfloat16), "the kernel's rounding changed"
    by_product = fast_window_attention._mask_by_product
    monkeypatch.setattr(fast_window_attention, "_mask_by_product", lambda *a: products.append(a) or by_product(*a))
    with torch.inference_mode():
        fast_window_attention.separable_mask(q, tables, extent, (14, 14), owner=owner)
    with torch.no_grad():  # the selection kept in inference mode serves outside it too
        written = fast_window_attention.separable_mask(q, tables, extent, (14, 14), owner=owner)
    assert len(products) == 2, "the product path was not taken"
    assert products[0][1] is products[1][1], "the selection matrix is kept on the attention module"
    built = fast_window_attention.separable_mask(q.requires_grad_(), tables, extent, (14, 14), owner=owner)
    assert built.requires_grad and written.dtype == torch.bfloat16
    assert torch.equal(written, built.detach())


def _full_size_encoder_agrees(model: nn.Module, image: torch.Tensor) -> None:
    """``model.encode_image`` fast vs reference, at default initialisation plus random relative-position tables and
    absolute positions (upstream zero-initialises them, which would hide errors in the bias terms)."""
    model.eval()
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.image_encoder.named_parameters():
            if "rel_pos" in name or name == "pos_embed":
                param.copy_(torch.randn(param.shape, generator=generator) * 0.5)
        fast = model.encode_image(image)
        with reference_computation():
            reference = model.encode_image(image)
    outputs = {"embeddings": (fast, reference)} if isinstance(fast, torch.Tensor) else {
        name: (getattr(fast, name), value) for name, value in vars(reference).items()
    }
    for name, (actual, expected) in outputs.items():
        assert expected.abs().amax() > 0.5, f"degenerate {name} would make the comparison meaningless"
        error = (actual - expected).abs().max().item()
        assert error <= FULL_SIZE_TOL, f"{name}: fast vs reference max abs error {error:.3g}"


@pytest.mark.full_size
@pytest.mark.slow
def test_full_size_sam_med3d_encoder_fast_path_matches_reference():
    torch.manual_seed(0)
    _full_size_encoder_agrees(zoo.create_model("sam_med3d_turbo"), tokens(1, 1, 128, 128, 128))


@pytest.mark.full_size
@pytest.mark.slow
def test_full_size_sam_med2d_encoder_fast_path_matches_reference():
    torch.manual_seed(0)
    _full_size_encoder_agrees(zoo.create_model("sam_med2d_b"), tokens(1, 3, 256, 256))


@pytest.mark.full_size
@pytest.mark.slow
def test_full_size_sam_unet_encoder_fast_path_matches_reference():
    torch.manual_seed(0)
    _full_size_encoder_agrees(zoo.create_model("sam_unet_r34"), tokens(1, 3, 256, 256))
