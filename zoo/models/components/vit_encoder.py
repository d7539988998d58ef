"""The SAM / ViTDet image encoder for 2D and 3D inputs: patch embedding, windowed and global blocks, conv neck."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from zoo.models.components.adapter import ChannelSpatialAdapter
from zoo.models.components.attention import RelPosAttention, window_partition, window_unpartition
from zoo.models.components.channels_last_conv import conv_with_kept_bf16_weight
from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.fast_window_attention import padded_window_attention
from zoo.models.components.layers import LayerNormNd, MLPBlock, conv_nd, image_embedding_layout
from zoo.models.components.onednn_linear import kept_linear
from zoo.models.components.weight_cache import DropsDerivedWeights


class PatchEmbed(nn.Module):
    """Non-overlapping patch projection; returns channels-last tokens ``B x *grid x C``.

    Upstream convolves with a ``patch_size`` kernel at stride ``patch_size``. The patches do not overlap, so the
    fast path cuts the image into patch rows (``B x grid x (C_in * patch^d)``, one copy of the input) and
    multiplies them by the kernel as stored (``C x (C_in * patch^d)``): the same sums as one matrix product, which
    runs at the machine's GEMM rate where the convolution kernels did not (SAM-Med3D's 1-channel 16^3 kernel in
    bf16 most of all), and gives channels-last tokens directly.
    """

    def __init__(self, spatial_dims: int, patch_size: int, in_chans: int, embed_dim: int) -> None:
        super().__init__()
        self.proj = conv_nd(spatial_dims)(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: Tensor) -> Tensor:
        if reference_computation_enabled():
            return self.proj(x).movedim(1, -1)
        batch, chans, *spatial = x.shape
        patch = self.proj.kernel_size[0]
        grid = [size // patch for size in spatial]
        if any(size % patch for size in spatial):
            raise ValueError(f"input {tuple(spatial)} is not a whole number of {patch}-voxel patches")
        dims = len(spatial)
        # B x C x (g_1 x p) x ... -> B x g_1 x ... x g_d x C x p x ... x p
        split = x.reshape(batch, chans, *[n for g in grid for n in (g, patch)])
        order = [0, *(2 + 2 * i for i in range(dims)), 1, *(3 + 2 * i for i in range(dims))]
        rows = split.permute(order).reshape(batch, *grid, -1)
        return kept_linear(self.proj, rows, self.proj.weight.reshape(self.proj.out_channels, -1), self.proj.bias)


class ViTBlock(nn.Module):
    """Pre-norm transformer block with windowed (``window_size > 0``) or global attention.

    Attention runs on the exact padding-free path of ``fast_window_attention``; inside
    ``compute_path.reference_computation()`` it materialises the zero-padded windows as upstream does.

    With an adapter (SAM-Med2D) the block computes ``x + mlp(norm2(x)) + Adapter(norm2(x))``.
    """

    def __init__(
        self,
        spatial_dims: int,
        dim: int,
        num_heads: int,
        mlp_ratio: float,
        qkv_bias: bool,
        use_rel_pos: bool,
        window_size: int,
        grid_size: tuple[int, ...],
        adapter_mlp_ratio: float | None = None,
        sam_med3d_broadcast: bool = False,
    ) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        attn_size = (window_size,) * spatial_dims if window_size > 0 else grid_size
        self.attn = RelPosAttention(
            spatial_dims, dim, num_heads, qkv_bias, use_rel_pos, attn_size, sam_med3d_broadcast
        )
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = MLPBlock(dim, int(dim * mlp_ratio), nn.GELU)
        if adapter_mlp_ratio is not None:
            # Capitalised to match the upstream checkpoint key `blocks.i.Adapter.*`.
            self.Adapter = ChannelSpatialAdapter(dim, adapter_mlp_ratio)

    def forward(self, x: Tensor) -> Tensor:
        shortcut = x
        x = self.norm1(x)
        if reference_computation_enabled():
            x = self._reference_attention(x)
        else:
            grid = tuple(x.shape[1:-1])
            window = (self.window_size,) * len(grid) if self.window_size > 0 else grid
            x = padded_window_attention(self.attn, x, window)
        x = shortcut + x
        normed = self.norm2(x)
        if hasattr(self, "Adapter"):
            return x + self.mlp(normed) + self.Adapter(normed)
        return x + self.mlp(normed)

    def _reference_attention(self, x: Tensor) -> Tensor:
        """Upstream's computation: attention over zero-padded windows (or the whole grid), padding cropped."""
        if self.window_size == 0:
            return self.attn(x)
        grid = tuple(x.shape[1:-1])
        windows, padded = window_partition(x, self.window_size)
        return window_unpartition(self.attn(windows), self.window_size, padded, grid)


def released_global_attn_indexes(depth: int) -> tuple[int, ...]:
    """The global-attention blocks of SAM's released ViTs, placed for ``depth``: the last block of each quarter.

    ``ceil(k * depth / 4) - 1`` for k = 1..4 gives blocks 2, 5, 8, 11 of 12 (ViT-B, as SAM-Med2D, SAM-Med3D and
    SAM-UNet ship), 5, 11, 17, 23 of 24 (ViT-L) and 7, 15, 23, 31 of 32 (ViT-H). Below 4 blocks some quarters are
    empty and their ends coincide: depth 1 -> (0,), 2 -> (0, 1), 3 -> (0, 1, 2).
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    return tuple(sorted({(k * depth + 3) // 4 - 1 for k in range(1, 5)}))


def global_blocks_for(depth: int, given: Sequence[int] | None, name: str = "global_attn_indexes") -> tuple[int, ...]:
    """``given`` as a tuple, checked against ``depth``; ``None`` gives :func:`released_global_attn_indexes`."""
    if given is None:
        return released_global_attn_indexes(depth)
    blocks = tuple(given)
    bad = [i for i in blocks if not 0 <= i < depth]
    if bad:
        raise ValueError(
            f"{name} {bad} are outside 0..{depth - 1} (depth {depth}); leave {name} unset to place the blocks by depth"
        )
    return blocks


class ImageEncoderViT(DropsDerivedWeights):
    """ViT image encoder with absolute and decomposed relative positions and a two-conv neck.

    Input ``B x in_chans x *(img_size,)``; output ``B x out_chans x *(img_size // patch_size,)``.

    ``checkpoint_blocks`` (off by default; not part of the architecture or the checkpoint): while gradients are
    recorded, each block keeps only its input and recomputes its activations in the backward pass, trading
    about one more forward pass of the blocks for their activation memory (SAM-Med3D's 11 interactive passes
    share one encoder pass, whose activations dominate a 128^3 training step's memory).
    """

    def __init__(
        self,
        spatial_dims: int,
        img_size: int,
        patch_size: int,
        in_chans: int,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float,
        out_chans: int,
        qkv_bias: bool = True,
        use_abs_pos: bool = True,
        use_rel_pos: bool = True,
        window_size: int = 0,
        global_attn_indexes: Sequence[int] = (),
        adapter_mlp_ratio: float | None = None,
        sam_med3d_broadcast: bool = False,
    ) -> None:
        """``sam_med3d_broadcast``: add relative positions the way SAM-Med3D does (see ``attention.py``)."""
        super().__init__()
        if img_size % patch_size:
            raise ValueError(f"img_size {img_size} is not a multiple of patch_size {patch_size}")
        self.img_size = img_size
        self.grid_size = (img_size // patch_size,) * spatial_dims
        self.checkpoint_blocks = False
        self.patch_embed = PatchEmbed(spatial_dims, patch_size, in_chans, embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, *self.grid_size, embed_dim)) if use_abs_pos else None
        self.blocks = nn.ModuleList(
            ViTBlock(
                spatial_dims,
                embed_dim,
                num_heads,
                mlp_ratio,
                qkv_bias,
                use_rel_pos,
                0 if i in global_attn_indexes else window_size,
                self.grid_size,
                adapter_mlp_ratio,
                sam_med3d_broadcast,
            )
            for i in range(depth)
        )
        conv = conv_nd(spatial_dims)
        self.neck = nn.Sequential(
            conv(embed_dim, out_chans, kernel_size=1, bias=False),
            LayerNormNd(out_chans),
            conv(out_chans, out_chans, kernel_size=3, padding=1, bias=False),
            LayerNormNd(out_chans),
        )

    def embed(self, x: Tensor) -> Tensor:
        """Patch tokens plus absolute positions, channels-last."""
        expected = (self.img_size,) * len(self.grid_size)
        if tuple(x.shape[2:]) != expected:
            raise ValueError(f"image encoder expects spatial size {expected}, got {tuple(x.shape[2:])}")
        x = self.patch_embed(x)
        return x if self.pos_embed is None else x + self.pos_embed

    def project(self, tokens: Tensor) -> Tensor:
        """The neck: channels-last tokens to the image embedding ``B x C x *grid`` (:func:`image_embedding_layout`).

        Given a channels-last map (the tokens' view, or a LayerNorm's output off the reference path), the 3D
        convolutions convert their weights to channels-last on every call (SAM-Med3D's 3x3x3 kernel is 16 MB),
        which costs more than copying the map channels-first: off the reference path their 3D inputs are copied.
        (In 2D, both ways took the same time on the CPUs measured.) Under CPU bfloat16 autocast the convolutions
        keep bfloat16 copies of their weights (``conv_with_kept_bf16_weight``).
        """
        x = tokens.movedim(-1, 1)
        fast = not reference_computation_enabled()
        for layer in self.neck:
            if fast and type(layer) in (nn.Conv2d, nn.Conv3d):  # not a subclass with its own forward (a wrapper)
                x = conv_with_kept_bf16_weight(layer, x.contiguous() if x.ndim == 5 else x)
            else:
                x = layer(x)
        return image_embedding_layout(x)

    def forward(self, x: Tensor) -> Tensor:
        x = self.embed(x)
        for block in self.blocks:
            x = self.run_block(block, x)
        return self.project(x)

    def run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        """``block(x)``; recomputed in the backward pass where ``checkpoint_blocks`` is on and gradients are
        recorded."""
        if self.checkpoint_blocks and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)
