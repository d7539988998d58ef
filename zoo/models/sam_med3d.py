"""SAM-Med3D (Wang et al., 2023): SAM ported to 3D volumes, the ``vit_b_ori`` architecture of sam_med3d_turbo."""

from dataclasses import dataclass, field

from zoo.models.components.prompt_encoder import PromptEncoder
from zoo.models.components.vit_encoder import ImageEncoderViT, global_blocks_for
from zoo.models.sam import MaskDecoderFields, SegmentAnythingModel, build_mask_decoder
from zoo.models.registry import register_family, register_model

SPATIAL_DIMS = 3


@dataclass
class SamMed3DConfig(MaskDecoderFields):
    """SAM-Med3D hyper-parameters; the defaults are the released sam_med3d / sam_med3d_turbo model.

    ``global_attn_indexes`` left unset (``None``) follows ``depth``: the last block of each quarter, as in the
    released model (2, 5, 8, 11 of 12; see :func:`~zoo.models.components.vit_encoder.released_global_attn_indexes`),
    so ``create_model("sam_med3d_turbo", depth=4)`` gets (0, 1, 2, 3). Given explicitly, every index must lie in
    ``0..depth-1``.
    """

    family: str = "sam_med3d"
    image_size: int = 128
    in_chans: int = 1
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # Window 14 on the 8^3 token grid: each "windowed" block attends over one zero-padded 14^3 window.
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] | None = None  # None: by depth (class docstring)
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    # Width of the image embedding, the prompt embeddings and the decoder (the 2D families: 256).
    prompt_embed_dim: int = 384
    # Preprocessing the released weights expect (used by the data and inference layers, not by the network).
    target_spacing_mm: tuple[float, ...] = field(default=(1.5, 1.5, 1.5))

    def __post_init__(self) -> None:
        self.global_attn_indexes = global_blocks_for(self.depth, self.global_attn_indexes)
        self.target_spacing_mm = tuple(self.target_spacing_mm)
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.prompt_embed_dim % 3:
            raise ValueError("SAM-Med3D's [sin, cos, sin] encoding needs prompt_embed_dim divisible by 3")

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size


@register_family("sam_med3d")
class SamMed3D(
    SegmentAnythingModel,
    paper_url="https://arxiv.org/abs/2310.15161",
    repo_url="https://github.com/uni-medical/SAM-Med3D",
    license="apache-2.0",
    tags=["3d", "ct", "mri", "sam-med3d"],
):
    """SAM-Med3D: 3D ViT encoder, 3D prompt encoder (points, mask) and 3D mask decoder with IoU head.

    Input: ``B x 1 x 128^3`` z-normalised crops. Points are ``B x N x 3`` voxel indices in tensor-index order
    (dim2, dim3, dim4) of the crop. Mask prompts are ``B x 1 x 32^3`` low-res logits. Box prompts are not
    supported (upstream's box path indexes embeddings the released model does not have), and raise.
    """

    family = "sam_med3d"

    def __init__(self, config: SamMed3DConfig) -> None:
        super().__init__(config)
        c = config
        grid = (c.grid_size,) * SPATIAL_DIMS
        self.image_encoder = ImageEncoderViT(
            spatial_dims=SPATIAL_DIMS,
            img_size=c.image_size,
            patch_size=c.patch_size,
            in_chans=c.in_chans,
            embed_dim=c.embed_dim,
            depth=c.depth,
            num_heads=c.num_heads,
            mlp_ratio=c.mlp_ratio,
            out_chans=c.prompt_embed_dim,
            qkv_bias=c.qkv_bias,
            use_abs_pos=c.use_abs_pos,
            use_rel_pos=c.use_rel_pos,
            window_size=c.window_size,
            global_attn_indexes=c.global_attn_indexes,
            sam_med3d_broadcast=True,  # the released weights were trained with upstream's rel-pos broadcasting
        )
        self.prompt_encoder = PromptEncoder(
            spatial_dims=SPATIAL_DIMS,
            embed_dim=c.prompt_embed_dim,
            image_embedding_size=grid,
            input_image_size=(c.image_size,) * SPATIAL_DIMS,
            mask_in_chans=c.mask_in_chans,
            num_point_embeddings=2,  # negative, positive: the released model has no box corners
            fourier_layout=("sin", "cos", "sin"),  # trained with the sine block repeated
            point_axis_order=(0, 1, 2),
            dense_axis_order=(1, 0, 2),  # upstream swaps the first two grid axes in the dense PE
        )
        self.mask_decoder = build_mask_decoder(c, SPATIAL_DIMS)


@register_model("sam_med3d_turbo")
def sam_med3d_turbo(**overrides) -> SamMed3D:
    """The released SAM-Med3D-turbo architecture (``vit_b_ori``); ``overrides`` replace config fields."""
    return SamMed3D(SamMed3DConfig(**overrides))


@register_model("sam_med3d")
def sam_med3d(**overrides) -> SamMed3D:
    """The original SAM-Med3D release (sam_med3d.pth): same architecture as turbo, earlier weights."""
    return SamMed3D(SamMed3DConfig(**overrides))
