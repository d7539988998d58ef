"""TinyViT image encoder in MobileSAM's variant, as LiteMedSAM uses it (full-resolution stem, last stage unmerged).

Attribute names follow the authors' ``tiny_vit_sam.py`` so their state dict (BatchNorm statistics included)
loads unchanged. Differences from the ImageNet TinyViT, all kept because the released weights depend on them:

- the stem is two 1x1 ``Conv2d_BN`` layers without stride, so stage 0 (MBConv) runs at the input resolution;
- each ``PatchMerging`` halves the resolution except the one into the last stage, which keeps it (the authors
  decide this by the output width: 320, 448 or 576 channels; for the released widths that is the last merge);
- attention windows are zero-padded *before* the attention's LayerNorm, so padded tokens enter as keys and values
  with the LayerNorm bias as their content;
- a neck (1x1 conv, LayerNorm2d, 3x3 conv, LayerNorm2d) maps the last stage to the prompt width.

BatchNorm layers compute with their running statistics in eval mode and update them in train mode, as upstream.
"""

from collections.abc import Iterator, Sequence

import torch
from timm.layers import DropPath
from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.folded_conv import folded_conv, folding_applies
from zoo.models.components.layers import LayerNormNd, image_embedding_layout, tokens_as_map
from zoo.models.components.onednn_linear import OneDNNLinear, non_intel_cpu
from zoo.models.components.weight_cache import DropsDerivedWeights, derived_from_parameters, records_grad


class Conv2dBN(nn.Sequential):
    """Bias-free convolution ``c`` followed by BatchNorm ``bn`` (upstream ``Conv2d_BN``); in inference the two run
    as one convolution, with a following activation fused into it (``folded_conv``)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int = 1,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        bn_weight_init: float = 1.0,
    ) -> None:
        super().__init__()
        self.add_module("c", nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False))
        bn = nn.BatchNorm2d(out_chans)
        nn.init.constant_(bn.weight, bn_weight_init)
        nn.init.zeros_(bn.bias)
        self.add_module("bn", bn)

    def forward(self, x: Tensor, activation: nn.Module | None = None) -> Tensor:
        """``activation(bn(c(x)))`` (no activation if None)."""
        if folding_applies(self, x):
            return folded_conv(self.c, self.bn, x, activation)
        out = self.bn(self.c(x))
        return out if activation is None else activation(out)


def _drop_path(rate: float) -> nn.Module:
    return DropPath(rate) if rate > 0 else nn.Identity()


class PatchEmbed(nn.Module):
    """The stem: 1x1 ``Conv2d_BN`` to half the width, GELU, 1x1 ``Conv2d_BN`` to the width (no downsampling)."""

    def __init__(self, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.seq = nn.Sequential(Conv2dBN(in_chans, embed_dim // 2), nn.GELU(), Conv2dBN(embed_dim // 2, embed_dim))

    def forward(self, x: Tensor) -> Tensor:
        first, activation, second = self.seq
        return second(first(x, activation))


#: Row strips of an expanded map: maps above this many elements run in strips (LiteMedSAM's stage 0 and its first
#: merge at full resolution; not the tiny test models), of this many output rows.
STRIP_MIN_ELEMENTS = 2**22
STRIP_ROWS = 32


def runs_in_strips(module: nn.Module, x: Tensor, expanded_chans: int) -> bool:
    """Whether ``module`` computes its 1x1 expansion and depthwise convolution of ``x`` strip by strip
    (:func:`depthwise_strips`): inference with folded convolutions, a channels-last map of more than
    :data:`STRIP_ROWS` rows whose expansion has more than :data:`STRIP_MIN_ELEMENTS` elements."""
    return (
        folding_applies(module, x)
        and x.is_contiguous(memory_format=torch.channels_last)
        and x.shape[2] > STRIP_ROWS
        and x.numel() // x.shape[1] * expanded_chans > STRIP_MIN_ELEMENTS
    )


def depthwise_strips(
    expand: "Conv2dBN", expand_activation: nn.Module, depthwise: "Conv2dBN", activation: nn.Module, x: Tensor
) -> Iterator[tuple[int, int, Tensor]]:
    """``activation(depthwise(expand_activation(expand(x))))`` by strips of :data:`STRIP_ROWS` output rows: yields
    ``(top, bottom, rows)`` for output rows ``top:bottom``.

    Each strip expands only the input rows its depthwise kernel reads (zero rows stand for the padding at the
    edges): the strip's expanded map stays in cache, where the whole one (64 MB for MBConv at 256^2, 32 MB for the
    first merge) is written to memory and read back, and a map of 32 MB or more is fresh pages on every call
    (glibc maps it anew). Every output element is the same sum of the same inputs by the same kernels (equal to
    the whole-map result at batch 1; a strip of a larger batch is strided, which oneDNN may block differently, an
    ulp apart).
    """
    height = x.shape[2]
    (pad_rows, pad_cols), (stride, _) = depthwise.c.padding, depthwise.c.stride
    kernel = depthwise.c.kernel_size[0]
    out_height = (height + 2 * pad_rows - kernel) // stride + 1
    for top in range(0, out_height, STRIP_ROWS):
        bottom = min(out_height, top + STRIP_ROWS)
        first, last = top * stride - pad_rows, (bottom - 1) * stride - pad_rows + kernel  # input rows read
        hidden = folded_conv(expand.c, expand.bn, x[:, :, max(0, first) : min(height, last)], expand_activation)
        missing_above, missing_below = max(0, -first), max(0, last - height)
        if missing_above or missing_below:
            hidden = F.pad(hidden, (0, 0, missing_above, missing_below))
        yield top, bottom, folded_conv(depthwise.c, depthwise.bn, hidden, activation, padding=(0, pad_cols))


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, 3x3 depthwise, 1x1 project, residual, then GELU.

    At LiteMedSAM's full resolution the expanded map is 64 MB (256 channels at 256^2): in inference the block runs
    in row strips instead (:func:`depthwise_strips`), each strip projected and added to its rows of the input
    while it is in cache.
    """

    def __init__(self, chans: int, expand_ratio: float, drop_path: float = 0.0) -> None:
        super().__init__()
        hidden = int(chans * expand_ratio)
        self.conv1 = Conv2dBN(chans, hidden)
        self.act1 = nn.GELU()
        self.conv2 = Conv2dBN(hidden, hidden, kernel_size=3, padding=1, groups=hidden)
        self.act2 = nn.GELU()
        self.conv3 = Conv2dBN(hidden, chans, bn_weight_init=0.0)
        self.act3 = nn.GELU()
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        if runs_in_strips(self, x, self.conv1.c.out_channels):
            return self._forward_in_strips(x)
        y = self.conv2(self.conv1(x, self.act1), self.act2)
        return self.act3(x + self.drop_path(self.conv3(y)))

    def _forward_in_strips(self, x: Tensor) -> Tensor:
        """The block, strip by strip (:func:`depthwise_strips`)."""
        out = torch.empty_like(x, memory_format=torch.channels_last)
        for top, bottom, hidden in depthwise_strips(self.conv1, self.act1, self.conv2, self.act2, x):
            projected = folded_conv(self.conv3.c, self.conv3.bn, hidden)
            out[:, :, top:bottom] = self.act3(x[:, :, top:bottom] + projected)
        return out


class PatchMerging(nn.Module):
    """1x1 conv to ``out_dim``, 3x3 depthwise conv with ``stride``, 1x1 conv; returns tokens ``B x L x out_dim``.

    Takes a channels-first map or tokens of ``input_resolution``.
    """

    def __init__(self, input_resolution: tuple[int, int], dim: int, out_dim: int, stride: int) -> None:
        super().__init__()
        self.input_resolution = input_resolution
        self.act = nn.GELU()
        self.conv1 = Conv2dBN(dim, out_dim)
        self.conv2 = Conv2dBN(out_dim, out_dim, kernel_size=3, stride=stride, padding=1, groups=out_dim)
        self.conv3 = Conv2dBN(out_dim, out_dim)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 3:
            x = tokens_as_map(x, self.input_resolution)
        if runs_in_strips(self, x, self.conv1.c.out_channels):  # the first merge, at full resolution
            x = self._merge_in_strips(x)
        else:
            x = self.conv2(self.conv1(x, self.act), self.act)
        return self.conv3(x).flatten(2).transpose(1, 2)

    def _merge_in_strips(self, x: Tensor) -> Tensor:
        """``act(conv2(act(conv1(x))))`` strip by strip (:func:`depthwise_strips`), joined into one channels-last
        map."""
        return torch.cat([strip for _, _, strip in depthwise_strips(self.conv1, self.act, self.conv2, self.act, x)], 2)


def attention_bias_index(window_size: int) -> Tensor:
    """``N x N`` index into the per-head bias table for ``N = window_size ** 2`` tokens of a square window.

    Upstream numbers the offsets ``(|dy|, |dx|)`` in the order they are first met while pairing every token with
    every other; the first token (0, 0) meets them all in row-major order, so offset ``(a, b)`` is ``a * w + b``.
    """
    rows, cols = torch.meshgrid(torch.arange(window_size), torch.arange(window_size), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    return (rows[:, None] - rows[None, :]).abs() * window_size + (cols[:, None] - cols[None, :]).abs()


CHUNK_SCORES = 2**20  # attention scores per chunk of windows in explicit_bf16_attention (4 MiB in float32)


class Attention(nn.Module):
    """Multi-head self-attention within one window: LayerNorm, qkv, attention with a learned bias per offset, proj.

    The qkv projection's output is laid out per head as ``[q_h, k_h, v_h]``, as in the checkpoint.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.key_dim = dim // num_heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = OneDNNLinear(dim, 3 * dim)
        self.proj = OneDNNLinear(dim, dim)
        self.attention_biases = nn.Parameter(torch.zeros(num_heads, window_size * window_size))
        self.register_buffer("attention_bias_idxs", attention_bias_index(window_size), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        """``windows x N x C`` tokens to ``windows x N x C``."""
        windows, tokens, _ = x.shape
        qkv = self.qkv(self.norm(x)).view(windows, tokens, self.num_heads, 3 * self.key_dim).transpose(1, 2)
        q, k, v = qkv.split(self.key_dim, dim=-1)
        # heads x N x N, gathered once per state of the table in inference (upstream keeps it as its buffer ``ab``)
        bias = derived_from_parameters(
            self, "attention_bias", [self.attention_biases], lambda: self.attention_biases[:, self.attention_bias_idxs]
        )
        if explicit_bf16_attention_applies(q, bias):
            out = explicit_bf16_attention(q, k, v, bias)
        else:
            bias = bias.to(q.dtype)  # the fused kernel takes a mask of the queries' dtype
            if not reference_computation_enabled():
                bias = bias[None]  # a 4-D mask takes the CPU's fused attention kernel; a 3-D one the unfused math
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)  # default scale key_dim ** -0.5, as upstream
        return self.proj(out.transpose(1, 2).reshape(windows, tokens, -1))


def explicit_bf16_attention_applies(q: Tensor, bias: Tensor) -> bool:
    """Whether :class:`Attention` runs :func:`explicit_bf16_attention`: bfloat16 CPU inference (autocast; the bias
    table in float32), not traced by ``torch.compile``, not inside ``reference_computation()``, on a CPU not made
    by Intel (where it was measured faster than the fused kernel; Intel's bfloat16 kernels were not measured)."""
    return (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and bias.dtype == torch.float32
        and not records_grad(q, bias)
        and not torch.compiler.is_compiling()
        and not reference_computation_enabled()
        and non_intel_cpu()
    )


def explicit_bf16_attention(q: Tensor, k: Tensor, v: Tensor, bias: Tensor) -> Tensor:
    """``softmax(q k^T / sqrt(d) + bias) v`` for ``windows x heads x N x d`` bfloat16 queries, keys and values and a
    float32 ``heads x N x N`` bias, as batched bfloat16 products (oneDNN's), bias and softmax in float32.

    As the authors' explicit attention computes under autocast: the scores are rounded to bfloat16 once, after
    their product (the fused kernel keeps them in float32), the float32 bias is added to them in float32, and the
    softmax weights are rounded once, before the product with the values. On TinyViT's 49- and 196-token windows
    the fused kernel spent most of its time outside its products. Windows go through in chunks of about
    :data:`CHUNK_SCORES` scores: the whole stage's scores would be tens of MB per temporary, fresh pages on every
    call under glibc's default allocator settings. The result is a ``windows x heads x N x d`` view of a
    ``windows x N x heads x d`` tensor, each chunk's heads written back to back while they are in cache (the
    projection after it reads the tokens' heads side by side).
    """
    windows, heads, tokens, dim = q.shape
    out = q.new_empty(windows, tokens, heads, dim)
    per_chunk = max(1, CHUNK_SCORES // (heads * tokens * tokens))
    for start in range(0, windows, per_chunk):
        chunk = slice(start, min(start + per_chunk, windows))
        rows = (chunk.stop - chunk.start) * heads
        scaled = (q[chunk] * dim**-0.5).reshape(rows, tokens, dim)
        keys, values = k[chunk].reshape(rows, tokens, dim), v[chunk].reshape(rows, tokens, dim)
        scores = torch.bmm(scaled, keys.transpose(1, 2)).view(-1, heads, tokens, tokens)
        weights = torch.softmax(torch.add(scores, bias), dim=-1).to(q.dtype)
        attended = torch.bmm(weights.view(rows, tokens, tokens), values).view(-1, heads, tokens, dim)
        out[chunk].copy_(attended.transpose(1, 2))
    return out.transpose(1, 2)


class Mlp(nn.Module):
    """Pre-norm MLP: LayerNorm, fc1, GELU, dropout, fc2, dropout."""

    def __init__(self, dim: int, hidden: int, drop: float = 0.0) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc1 = OneDNNLinear(dim, hidden)
        self.fc2 = OneDNNLinear(hidden, dim)
        self.act = nn.GELU()
        self.drop = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop(self.fc2(self.drop(self.fc1(self.norm(x), self.act))))


class TinyViTBlock(nn.Module):
    """Windowed attention (zero-padded windows), a depthwise ``local_conv``, then the MLP; on ``B x L x C`` tokens."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        drop: float = 0.0,
        drop_path: float = 0.0,
    ) -> None:
        super().__init__()
        if window_size <= 0:
            raise ValueError(f"window_size must be positive, got {window_size}")
        self.input_resolution = input_resolution
        self.window_size = window_size
        self.attn = Attention(dim, num_heads, window_size)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop)
        self.local_conv = Conv2dBN(dim, dim, local_conv_size, padding=local_conv_size // 2, groups=dim)
        self.drop_path = _drop_path(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        height, width = self.input_resolution
        batch, length, chans = x.shape
        if length != height * width:
            raise ValueError(f"expected {height}x{width} = {height * width} tokens, got {length}")
        x = x + self.drop_path(self._windowed_attention(x.view(batch, height, width, chans)).reshape_as(x))
        x = self.local_conv(tokens_as_map(x, (height, width)))
        x = x.flatten(2).transpose(1, 2)
        return x + self.drop_path(self.mlp(x))

    def _windowed_attention(self, x: Tensor) -> Tensor:
        """Attention within ``window_size`` windows of a ``B x H x W x C`` map, zero-padded at the bottom/right."""
        batch, height, width, chans = x.shape
        w = self.window_size
        if height == w and width == w:
            return self.attn(x.reshape(batch, w * w, chans))
        pad_b, pad_r = -height % w, -width % w
        if pad_b or pad_r:
            x = F.pad(x, (0, 0, 0, pad_r, 0, pad_b))
        rows, cols = (height + pad_b) // w, (width + pad_r) // w
        windows = x.view(batch, rows, w, cols, w, chans).transpose(2, 3).reshape(-1, w * w, chans)
        out = self.attn(windows).view(batch, rows, cols, w, w, chans).transpose(2, 3)
        return out.reshape(batch, rows * w, cols * w, chans)[:, :height, :width]


class ConvLayer(nn.Module):
    """Stage 0: MBConv blocks on a channels-first map, then the patch merging into stage 1."""

    def __init__(
        self, dim: int, depth: int, expand_ratio: float, drop_path: Sequence[float], downsample: nn.Module | None
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(MBConv(dim, expand_ratio, drop_path[i]) for i in range(depth))
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


class BasicLayer(nn.Module):
    """Stages 1..: TinyViT blocks on tokens, then (except the last stage) the patch merging."""

    def __init__(
        self,
        dim: int,
        input_resolution: tuple[int, int],
        depth: int,
        num_heads: int,
        window_size: int,
        mlp_ratio: float,
        local_conv_size: int,
        drop: float,
        drop_path: Sequence[float],
        downsample: nn.Module | None,
    ) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            TinyViTBlock(
                dim, input_resolution, num_heads, window_size, mlp_ratio, local_conv_size, drop, drop_path[i]
            )
            for i in range(depth)
        )
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        for block in self.blocks:
            x = block(x)
        return x if self.downsample is None else self.downsample(x)


def stage_resolutions(img_size: int, num_stages: int) -> list[int]:
    """Side length of each stage's map: halved by every merge except the last, which keeps the resolution."""
    return [img_size // 2 ** min(i, num_stages - 2) for i in range(num_stages)]


def _init_linear_and_norm(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


class TinyViT(DropsDerivedWeights):
    """The LiteMedSAM image encoder: ``B x in_chans x S x S`` images to ``B x out_chans x G x G`` embeddings.

    ``G = S / 2 ** (stages - 2)``: 64 for the released 256 input and four stages.
    """

    def __init__(
        self,
        img_size: int,
        in_chans: int,
        embed_dims: Sequence[int],
        depths: Sequence[int],
        num_heads: Sequence[int],
        window_sizes: Sequence[int],
        mlp_ratio: float,
        mbconv_expand_ratio: float,
        local_conv_size: int,
        out_chans: int,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
    ) -> None:
        super().__init__()
        num_stages = len(depths)
        if num_stages < 2 or not len(embed_dims) == len(num_heads) == len(window_sizes) == num_stages:
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage (at least 2)")
        sizes = stage_resolutions(img_size, num_stages)
        if img_size % 2 ** (num_stages - 2):
            raise ValueError(f"img_size {img_size} must be divisible by {2 ** (num_stages - 2)}")
        self.img_size = img_size
        self.grid_size = sizes[-1]
        self.patch_embed = PatchEmbed(in_chans, embed_dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.layers = nn.ModuleList()
        for i in range(num_stages):
            stage_rates = rates[sum(depths[:i]) : sum(depths[: i + 1])]
            downsample = None
            if i < num_stages - 1:
                stride = 1 if i == num_stages - 2 else 2
                downsample = PatchMerging((sizes[i], sizes[i]), embed_dims[i], embed_dims[i + 1], stride)
            if i == 0:
                layer = ConvLayer(embed_dims[0], depths[0], mbconv_expand_ratio, stage_rates, downsample)
            else:
                layer = BasicLayer(
                    embed_dims[i],
                    (sizes[i], sizes[i]),
                    depths[i],
                    num_heads[i],
                    window_sizes[i],
                    mlp_ratio,
                    local_conv_size,
                    drop_rate,
                    stage_rates,
                    downsample,
                )
            self.layers.append(layer)
        self.apply(_init_linear_and_norm)  # before the neck, whose convolutions keep PyTorch's default (as upstream)
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dims[-1], out_chans, kernel_size=1, bias=False),
            LayerNormNd(out_chans),
            nn.Conv2d(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNormNd(out_chans),
        )

    def forward(self, x: Tensor) -> Tensor:
        if not reference_computation_enabled():
            # Channels-last maps throughout: oneDNN's depthwise and 1x1 kernels are much faster on them, and the
            # token <-> map reshapes between stages are then views (upstream: channels-first).
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.patch_embed(x)
        for layer in self.layers:
            x = layer(x)
        x = tokens_as_map(x, (self.grid_size, self.grid_size))
        return image_embedding_layout(self.neck(x))
