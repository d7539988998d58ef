"""LiteMedSAM (bowang-lab/MedSAM, branch LiteMedSAM): the CVPR 2024 "MedSAM on Laptop" challenge baseline.

MedSAM's ViT-B image encoder distilled into a TinyViT (MobileSAM's variant) at 256x256 input, then fine-tuned
with SAM's prompt encoder and mask decoder. The image embedding is 64x64x256 and the low-res masks 256x256.
"""

from dataclasses import dataclass, replace

from zoo.models.components.mask_decoder import MaskDecoder
from zoo.models.components.prompt_encoder import PromptEncoder
from zoo.models.components.tiny_vit import TinyViT, stage_resolutions
from zoo.models.sam import (
    MaskDecoderFields,
    SegmentAnythingModel,
    build_mask_decoder,
    build_prompt_encoder_2d,
)
from zoo.models.registry import register_family, register_model

SPATIAL_DIMS = 2


@dataclass
class LiteMedSAMConfig(MaskDecoderFields):
    """LiteMedSAM hyper-parameters; the defaults are the released ``lite_medsam.pth``."""

    family: str = "litemedsam"
    image_size: int = 256
    in_chans: int = 3
    embed_dims: tuple[int, ...] = (64, 128, 160, 320)
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (2, 4, 5, 10)
    window_sizes: tuple[int, ...] = (7, 7, 14, 7)
    mlp_ratio: float = 4.0
    mbconv_expand_ratio: float = 4.0
    local_conv_size: int = 3
    drop_rate: float = 0.0
    drop_path_rate: float = 0.0

    def __post_init__(self) -> None:
        for name in ("embed_dims", "depths", "num_heads", "window_sizes"):
            setattr(self, name, tuple(getattr(self, name)))
        stages = len(self.depths)
        if stages < 2 or not len(self.embed_dims) == len(self.num_heads) == len(self.window_sizes) == stages:
            raise ValueError("embed_dims, depths, num_heads and window_sizes need one entry per stage (at least 2)")
        if self.image_size % (4 * 2 ** (stages - 2)):
            raise ValueError(f"image_size {self.image_size} must be divisible by {4 * 2 ** (stages - 2)}")
        if self.grid_size * 4 != self.image_size:
            raise ValueError(
                f"the prompt encoder needs an embedding grid of image_size / 4; {stages} stages give {self.grid_size}"
            )

    @property
    def grid_size(self) -> int:
        """Side of the image embedding (64 for the released model)."""
        return stage_resolutions(self.image_size, len(self.depths))[-1]


def build_litemedsam_parts(c: LiteMedSAMConfig) -> tuple[TinyViT, PromptEncoder, MaskDecoder]:
    """The TinyViT image encoder and SAM's 2D prompt encoder and mask decoder that ``c`` describes."""
    image_encoder = TinyViT(
        img_size=c.image_size,
        in_chans=c.in_chans,
        embed_dims=c.embed_dims,
        depths=c.depths,
        num_heads=c.num_heads,
        window_sizes=c.window_sizes,
        mlp_ratio=c.mlp_ratio,
        mbconv_expand_ratio=c.mbconv_expand_ratio,
        local_conv_size=c.local_conv_size,
        out_chans=c.prompt_embed_dim,
        drop_rate=c.drop_rate,
        drop_path_rate=c.drop_path_rate,
    )
    return image_encoder, build_prompt_encoder_2d(c, c.grid_size), build_mask_decoder(c, SPATIAL_DIMS)


@register_family("litemedsam")
class LiteMedSAM(
    SegmentAnythingModel,
    paper_url="https://arxiv.org/abs/2304.12306",
    repo_url="https://github.com/bowang-lab/MedSAM/tree/LiteMedSAM",
    license="apache-2.0",
    tags=["2d", "litemedsam", "medsam", "tiny-vit"],
):
    """LiteMedSAM: boxes (its training prompt), points and mask prompts on 256x256 images scaled to [0, 1].

    Inputs are ``B x 3 x 256 x 256`` (longest side resized to 256, min-max normalised, zero-padded bottom/right:
    the processor's job). Boxes are ``B x 4`` or ``B x 1 x 4`` (x0, y0, x1, y1) and points ``B x N x 2`` (x, y), in
    model-input pixels; mask prompts are ``B x 1 x 256 x 256``. BatchNorm layers in the encoder use their
    running statistics only in eval mode (``model.eval()``).
    """

    family = "litemedsam"

    def __init__(self, config: LiteMedSAMConfig) -> None:
        super().__init__(config)
        self.image_encoder, self.prompt_encoder, self.mask_decoder = build_litemedsam_parts(config)


@register_model("litemedsam")
def litemedsam(**overrides) -> LiteMedSAM:
    """The released LiteMedSAM (``lite_medsam.pth``): TinyViT-5M-style encoder at 256x256."""
    return LiteMedSAM(replace(LiteMedSAMConfig(), **overrides))
