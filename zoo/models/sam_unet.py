"""SAM-UNet (arXiv 2408.09886 v1): SAM ViT-B at 256 input with a parallel ResNet branch and multi-scale fusion.

Architecture (Hhankyangg/sam-unet @ a0b84c5):

* a ResNet (34 or 50) runs on the same normalised, padded image as the ViT; before each of four ViT blocks
  (``conv_injection_blocks``, upstream's global blocks 2, 5, 8, 11) the next ResNet stage, resampled to the
  token grid by a :class:`ConvToTokens` (``adapters_in``), is added to the tokens;
* after the first three of those blocks the tokens are upscaled 4x by a "bridge" (``adapters_bridge``); the
  neck output, upscaled 4x by ``embedding_encoder``, plus the three bridge outputs is the *multi-scale feature*;
* SAM's prompt encoder and two-way transformer feed a decoder with ONE output token, whose mask features are
  refined and summed with the multi-scale feature (:class:`SingleTokenMaskDecoder`).

No IoU head: SAM-UNet predicts one mask per prompt set and no quality score, so ``MaskPrediction.iou_predictions``
is ``None`` and ``multimask_output=True`` is refused. Anything that ranks or filters masks by predicted IoU (SAM's
automatic mask generator, best-of-three selection) has nothing to rank with; score masks another way (e.g. by
the mean sigmoid probability inside the mask) if you need one.

Preprocessing (normalise, pad bottom/right to ``image_size``) and postprocessing (back to the original size)
live in its processor (``zoo.processors.SamUNetProcessor``); the network takes ready ``B x 3 x S x S`` inputs.
"""

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from zoo.models.base import PromptableSegmenter
from zoo.models.sam import PromptDecoderFields, build_prompt_encoder_2d, build_two_way_transformer
from zoo.models.components.conv_branch import (
    RESNET_VARIANTS,
    STAGE_STRIDES,
    ConvToTokens,
    build_resnet_stages,
    resampling_steps,
)
from zoo.models.components.fusion_decoder import SingleTokenMaskDecoder, upscale_x4
from zoo.models.components.vit_encoder import ImageEncoderViT, global_blocks_for, released_global_attn_indexes
from zoo.models.outputs import MaskPrediction
from zoo.models.registry import register_family, register_model

SPATIAL_DIMS = 2
NUM_CONV_STAGES = len(STAGE_STRIDES)


@dataclass
class SamUNetConfig(PromptDecoderFields):
    """SAM-UNet hyper-parameters; the defaults are upstream's ``res34_sam_unet``.

    ``global_attn_indexes`` and ``conv_injection_blocks`` left unset (``None``) follow ``depth``: the last block of
    each quarter, as upstream's 12 blocks have them (2, 5, 8, 11; see
    :func:`~zoo.models.components.vit_encoder.released_global_attn_indexes`), so ``create_model("sam_unet_r34",
    depth=4)`` gets (0, 1, 2, 3) for both. The four ResNet stages need four different blocks, so ``depth`` must be at
    least 4. Given explicitly, the global blocks must lie in ``0..depth-1`` and the injection blocks must be four
    strictly increasing blocks in that range.
    """

    family: str = "sam_unet"
    image_size: int = 256
    in_chans: int = 3
    patch_size: int = 16
    embed_dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    # Window 14 on the 16x16 grid: windowed blocks pad to 28x28 (4 windows), as upstream.
    window_size: int = 14
    global_attn_indexes: tuple[int, ...] | None = None  # None: by depth (class docstring)
    qkv_bias: bool = True
    use_abs_pos: bool = True
    use_rel_pos: bool = True
    # timm name of the conv branch ("resnet34" or "resnet50") and, if not the standard one, its blocks per stage.
    resnet: str = "resnet34"
    resnet_layers: tuple[int, ...] | None = None
    # conv_injection_blocks[i]: the ViT block whose INPUT receives ResNet stage i+1 (stride 4 * 2**i). Bridges
    # tap the outputs of the first three of these blocks. Upstream hard-codes (2, 5, 8, 11); None: by depth.
    conv_injection_blocks: tuple[int, ...] | None = None
    # ImageNet RGB statistics x255, applied by the processor (zoo.processors), not inside the network.
    pixel_mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    pixel_std: tuple[float, float, float] = (58.395, 57.12, 57.375)

    def __post_init__(self) -> None:
        self.global_attn_indexes = global_blocks_for(self.depth, self.global_attn_indexes)
        if self.conv_injection_blocks is None:
            if self.depth < NUM_CONV_STAGES:
                raise ValueError(
                    f"SAM-UNet needs depth >= {NUM_CONV_STAGES}: each of its {NUM_CONV_STAGES} ResNet stages enters "
                    f"its own ViT block (conv_injection_blocks), got depth {self.depth}"
                )
            self.conv_injection_blocks = released_global_attn_indexes(self.depth)
        self.conv_injection_blocks = tuple(self.conv_injection_blocks)
        self.resnet_layers = None if self.resnet_layers is None else tuple(self.resnet_layers)
        self.pixel_mean = tuple(self.pixel_mean)
        self.pixel_std = tuple(self.pixel_std)
        if self.family != "sam_unet":
            raise ValueError(f"SamUNetConfig is for family 'sam_unet', got {self.family!r}")
        if self.resnet not in RESNET_VARIANTS:
            raise ValueError(f"resnet must be one of {', '.join(sorted(RESNET_VARIANTS))}, got {self.resnet!r}")
        if self.resnet_layers is not None and (
            len(self.resnet_layers) != NUM_CONV_STAGES or min(self.resnet_layers) < 1
        ):
            raise ValueError(f"resnet_layers must give 4 positive block counts, got {self.resnet_layers}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")
        if self.image_size % STAGE_STRIDES[-1]:
            raise ValueError(f"image_size {self.image_size} must be a multiple of 32 (the ResNet's last stride)")
        for stride in STAGE_STRIDES:
            resampling_steps(self.image_size // stride, self.grid_size)
        self._check_injection_blocks()
        if self.prompt_embed_dim % 8:
            raise ValueError(f"prompt_embed_dim {self.prompt_embed_dim} must be divisible by 8")

    def _check_injection_blocks(self) -> None:
        blocks = self.conv_injection_blocks
        if len(blocks) != NUM_CONV_STAGES:
            raise ValueError(
                f"conv_injection_blocks must name one ViT block per ResNet stage ({NUM_CONV_STAGES}), got {blocks}"
            )
        if any(b < 0 or b >= self.depth for b in blocks):
            raise ValueError(
                f"conv_injection_blocks {blocks} must lie in 0..{self.depth - 1} (depth {self.depth}); leave "
                "conv_injection_blocks unset to place them by depth"
            )
        if any(later <= earlier for earlier, later in zip(blocks, blocks[1:])):
            raise ValueError(
                f"conv_injection_blocks {blocks} must be strictly increasing: ResNet stages enter the ViT in order"
            )

    @property
    def grid_size(self) -> int:
        return self.image_size // self.patch_size

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return RESNET_VARIANTS[self.resnet].stage_channels

    @property
    def num_bridges(self) -> int:
        return NUM_CONV_STAGES - 1


@dataclass
class SamUNetImageEncoding:
    """The prompt-independent image side: compute once per image, decode many prompt sets."""

    image_embeddings: Tensor  # B x prompt_embed_dim x grid x grid (ViT neck output)
    multi_scale_feature: Tensor  # B x prompt_embed_dim/8 x 4grid x 4grid


# Upstream checkpoint key prefixes -> ours. Upstream wraps the SAM parts (sam_img_encoder, ...) and its
# Reshaper keeps layers in `.reshaper`; its ResNet is torchvision's split into stage0 (conv1, bn1) .. stage4.
_UPSTREAM_KEY_RULES = (
    (re.compile(r"^image_encoder\.sam_img_encoder\."), "image_encoder."),
    (re.compile(r"^prompt_encoder\.sam_prompt_encoder\."), "prompt_encoder."),
    (re.compile(r"^mask_decoder\.sam_mask_decoder\."), "mask_decoder."),
    (re.compile(r"^adapters_in\.(\d+)\.reshaper\."), r"adapters_in.\1."),
    (re.compile(r"^resnet\.stage0\.0\."), "resnet.conv1."),
    (re.compile(r"^resnet\.stage0\.1\."), "resnet.bn1."),
    (re.compile(r"^resnet\.stage([1-4])\."), r"resnet.layer\1."),
)


def upstream_to_zoo_keys(state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """Rename an upstream SAM-UNet state dict to this model's keys; keys already in our naming pass through."""
    renamed: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement in _UPSTREAM_KEY_RULES:
            new_key, count = pattern.subn(replacement, new_key)
            if count:
                break
        if new_key in renamed:
            raise ValueError(f"two checkpoint keys map to {new_key!r} (one is {key!r}); the state dict mixes namings")
        renamed[new_key] = value
    return renamed


@register_family("sam_unet")
class SamUNet(
    PromptableSegmenter,
    paper_url="https://arxiv.org/abs/2408.09886v1",
    repo_url="https://github.com/Hhankyangg/sam-unet",
    tags=["2d", "sam-unet"],
):
    """SAM-UNet: boxes, points and mask prompts on normalised, padded ``B x 3 x S x S`` images.

    Points are ``B x N x 2`` (x, y) and boxes ``B x 4`` (x0, y0, x1, y1) in model-input pixels (the resized
    image before padding); labels 1 foreground, 0 background, -1 padding. Mask prompts are ``B x 1 x (S/4)^2``.
    The released recipe prompts with one box per mask. Returns one mask per prompt set and no IoU score.

    For training call :meth:`freeze_for_training` (the SAM ViT is frozen, everything else trains).
    State-dict keys are upstream's with the SAM wrappers removed and the ResNet under timm/torchvision names;
    :meth:`adapt_official_state_dict` converts the authors' files.
    """

    family = "sam_unet"

    def __init__(self, config: SamUNetConfig) -> None:
        super().__init__(config)
        c = config
        grid = c.grid_size
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
        )
        self.prompt_encoder = build_prompt_encoder_2d(c, grid)
        self.mask_decoder = SingleTokenMaskDecoder(c.prompt_embed_dim, build_two_way_transformer(c))
        self.resnet = build_resnet_stages(c.resnet, c.resnet_layers)
        self.adapters_in = nn.ModuleList(
            ConvToTokens(c.image_size // stride, channels, grid, c.embed_dim)
            for stride, channels in zip(STAGE_STRIDES, c.stage_channels)
        )
        # Bridge j taps the output of injection block (num_bridges - 1 - j): bridge 0 is the deepest, as in a U-Net.
        self.adapters_bridge = nn.ModuleList(
            upscale_x4(c.embed_dim, c.prompt_embed_dim, c.prompt_embed_dim // 8) for _ in range(c.num_bridges)
        )
        self.embedding_encoder = upscale_x4(c.prompt_embed_dim, c.prompt_embed_dim // 4, c.prompt_embed_dim // 8)

    # ----------------------------------------------------------------------------------------------- forward

    def encode_image(self, images: Tensor) -> SamUNetImageEncoding:
        """Run the ResNet and the ViT side by side; the expensive, prompt-independent part."""
        tokens = self.image_encoder.embed(images)  # checks the input size
        conv_features = self.resnet(images)
        stage_of_block = {block: stage for stage, block in enumerate(self.config.conv_injection_blocks)}
        bridge_features: list[Tensor | None] = [None] * self.config.num_bridges
        for index, block in enumerate(self.image_encoder.blocks):
            stage = stage_of_block.get(index)
            if stage is not None:
                tokens = tokens + self.adapters_in[stage](conv_features[stage]).permute(0, 2, 3, 1)
            tokens = self.image_encoder.run_block(block, tokens)
            if stage is not None and stage < self.config.num_bridges:
                bridge = self.config.num_bridges - 1 - stage
                bridge_features[bridge] = self.adapters_bridge[bridge](tokens.permute(0, 3, 1, 2))
        image_embeddings = self.image_encoder.project(tokens)
        multi_scale_feature = self.embedding_encoder(image_embeddings)
        for feature in bridge_features:  # summed in bridge order 0, 1, 2, as upstream
            multi_scale_feature = multi_scale_feature + feature
        return SamUNetImageEncoding(image_embeddings, multi_scale_feature)

    def image_side_parameters(self) -> list[nn.Parameter]:
        """The ViT, the ResNet branch, its token adapters, the bridges and the embedding encoder."""
        modules = (self.image_encoder, self.resnet, self.adapters_in, self.adapters_bridge, self.embedding_encoder)
        return [p for module in modules for p in module.parameters()]

    def decode_embeddings(
        self, encoding: SamUNetImageEncoding, sparse: Tensor, dense: Tensor, multimask_output: bool = False
    ) -> MaskPrediction:
        """The single-token mask decoder on a precomputed :class:`SamUNetImageEncoding` and prompt embeddings."""
        if multimask_output:
            raise ValueError("SAM-UNet predicts a single mask per prompt set; multimask_output=True is not supported")
        return self.mask_decoder(
            image_embeddings=encoding.image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multi_scale_feature=encoding.multi_scale_feature,
        )

    # ------------------------------------------------------------------------------------- weights, training

    def adapt_official_state_dict(self, state_dict: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Map an upstream SAM-UNet checkpoint (``SAM_UNET.state_dict()``) onto this model's key names."""
        return upstream_to_zoo_keys(state_dict)

    def freeze_for_training(self) -> "SamUNet":
        """Freeze the SAM ViT (patch embedding, positions, blocks, neck) and unfreeze everything else, as upstream.

        Trainable then: ResNet (BatchNorm included), ``adapters_in``, ``adapters_bridge``, ``embedding_encoder``,
        the prompt encoder and the whole mask decoder.
        """
        for name, parameter in self.named_parameters():
            parameter.requires_grad_(not name.startswith("image_encoder."))
        return self

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters an optimiser should update (``requires_grad``)."""
        return (parameter for parameter in self.parameters() if parameter.requires_grad)


@register_model("sam_unet_r34")
def sam_unet_r34(**overrides) -> SamUNet:
    """SAM-UNet with a ResNet-34 branch (upstream ``res34_sam_unet``, the variant its training script trains)."""
    return SamUNet(SamUNetConfig(**overrides))


@register_model("sam_unet_r50")
def sam_unet_r50(**overrides) -> SamUNet:
    """SAM-UNet with a ResNet-50 branch (upstream ``res50_sam_unet``)."""
    return SamUNet(SamUNetConfig(**{"resnet": "resnet50", **overrides}))
