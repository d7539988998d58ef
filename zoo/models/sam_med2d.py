"""SAM-Med2D (Cheng et al., 2023): SAM ViT-B at 256x256 with an adapter in every encoder block; and Meta's SAM ViT-B
(family ``sam``, ``sam_vit_b``): the same parts without adapters at 1024x1024, the initialisation source for SAM-Med2D
and SAM-UNet and the baseline of comparisons. Both are built by :func:`build_sam2d_parts`; they are two families
because their weights need different processors (SAM-Med2D's stretch vs SAM's longest-side resize and padding).
"""

from dataclasses import dataclass

from zoo.models.components.mask_decoder import MaskDecoder
from zoo.models.components.prompt_encoder import PromptEncoder
from zoo.models.components.vit_encoder import ImageEncoderViT, global_blocks_for
from zoo.models.sam import (
    MaskDecoderFields,
    SegmentAnythingModel,
    build_mask_decoder,
    build_prompt_encoder_2d,
)
from zoo.models.registry import register_family, register_model

SPATIAL_DIMS = 2


@dataclass
class SamMed2DConfig(MaskDecoderFields):
    """SAM-Med2D hyper-parameters; the defaults are the released sam-med2d_b model.

    ``global_attn_indexes`` left unset (``None``) follows ``depth``: the last block of each quarter, as in the
    released models (2, 5, 8, 11 of 12; see :func:`~zoo.models.components.vit_encoder.released_global_attn_indexes`),
    so ``create_model("sam_med2d_b", depth=4)`` gets (0, 1, 2, 3). Given explicitly, every index must lie in
    ``0..depth-1``.
    """

    family: str = "sam_med2d"
    image_size: int = 256
    in_chans: int = 3
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # Window 14 on a 16x16 grid: windowed blocks pad the grid to 28x28 (4 windows), as upstream.
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] | None = None  # None: by depth (class docstring)
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    adapter: bool = True
    adapter_mlp_ratio: float = 0.25
    # ImageNet RGB statistics x255, applied by the processor (zoo.processors), not inside the network.
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        self.global_attn_indexes = global_blocks_for(self.depth, self.global_attn_indexes)
        self.pixel_mean = tuple(self.pixel_mean)
        self.pixel_std = tuple(self.pixel_std)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.adapter and self.grid_size % 2:
            raise ValueError(f"the adapter needs an even token grid; image_size/patch_size = {self.grid_size}")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


def build_sam2d_parts(c: SamMed2DConfig, encoder_out_chans: int | None = None) -> tuple[ImageEncoderViT, PromptEncoder, MaskDecoder]:
    """The SAM ViT image encoder, 2D prompt encoder and mask decoder that ``c`` describes."""
    image_encoder = ImageEncoderViT(
        spatial_dims=SPATIAL_DIMS,
        img_size=c.image_size,
        patch_size=c.patch_size,
        in_chans=c.in_chans,
        embed_dim=c.embed_dim,
        depth=c.depth,
        num_heads=c.num_heads,
        mlp_ratio=c.mlp_ratio,
        out_chans=encoder_out_chans or c.prompt_embed_dim,
        qkv_bias=c.qkv_bias,
        use_abs_pos=c.use_abs_pos,
        use_rel_pos=c.use_rel_pos,
        window_size=c.window_size,
        global_attn_indexes=c.global_attn_indexes,
        adapter_mlp_ratio=c.adapter_mlp_ratio if c.adapter else None,
    )
    return image_encoder, build_prompt_encoder_2d(c, c.grid_size), build_mask_decoder(c, SPATIAL_DIMS)


@register_family("sam_med2d")
class SamMed2D(
    SegmentAnythingModel,
    paper_url="https://arxiv.org/abs/2308.16184",
    repo_url="https://github.com/OpenGVLab/SAM-Med2D",
    license="apache-2.0",
    tags=["2d", "sam-med2d"],
):
    """SAM-Med2D (and, with ``adapter=False``, SAM): points, boxes and mask prompts on normalised 3-channel images.

    Points are ``B x N x 2`` (x, y) and boxes ``B x 4`` (x0, y0, x1, y1), both in model-input pixels; mask
    prompts are ``B x 1 x (image_size / 4)^2``. SAM-Med2D feeds sigmoid probabilities of the previous low-res
    logits as the mask prompt (SAM fed logits); the network takes whatever the caller passes.
    """

    family = "sam_med2d"

    def __init__(self, config: SamMed2DConfig) -> None:
        super().__init__(config)
        self.image_encoder, self.prompt_encoder, self.mask_decoder = build_sam2d_parts(config)


@register_model("sam_med2d_b")
def sam_med2d_b(**overrides) -> SamMed2D:
    """The released sam-med2d_b: ViT-B with adapters at 256x256."""
    return SamMed2D(SamMed2DConfig(**overrides))


@dataclass
class SamConfig(SamMed2DConfig):
    """Meta's SAM ViT-B hyper-parameters (sam_vit_b_01ec64.pth): SAM-Med2D's fields without adapters at 1024."""

    family: str = "sam"
    image_size: int = 1024
    adapter: bool = False


@register_family("sam")
class Sam(
    SegmentAnythingModel,
    paper_url="https://arxiv.org/abs/2304.02643",
    repo_url="https://github.com/facebookresearch/segment-anything",
    license="apache-2.0",
    tags=["2d", "segment-anything"],
):
    """Meta's Segment Anything (ViT-B): points, boxes and mask prompts on normalised ``1024 x 1024`` images.

    Prompt conventions as :class:`SamMed2D`; SAM feeds the previous low-res logits (not probabilities) back as the
    mask prompt.
    """

    family = "sam"

    def __init__(self, config: SamConfig) -> None:
        super().__init__(config)
        self.image_encoder, self.prompt_encoder, self.mask_decoder = build_sam2d_parts(config)


@register_model("sam_vit_b")
def sam_vit_b(**overrides) -> Sam:
    """Meta's SAM ViT-B (sam_vit_b_01ec64.pth): no adapters, 1024x1024 input."""
    return Sam(SamConfig(**overrides))
