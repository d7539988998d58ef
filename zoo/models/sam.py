"""The SAM-style model shared by SAM-Med3D, SAM-Med2D, SAM and LiteMedSAM: image encoder, prompt encoder, mask decoder."""

from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from zoo.models.base import PromptableSegmenter
from zoo.models.components.mask_decoder import MaskDecoder
from zoo.models.components.prompt_encoder import PromptEncoder
from zoo.models.components.transformer import TwoWayTransformer
from zoo.models.outputs import MaskPrediction


@dataclass
class PromptDecoderFields:
    """Config fields of SAM's prompt encoder and decoder transformer, shared by every family's config."""

    # Width of the image embedding, the prompt embeddings and the decoder transformer.
    prompt_embed_dim: int = 256
    mask_in_chans: int = 16
    # Upstream hard-codes the decoder transformer inside its mask decoders; they are fields here.
    decoder_depth: int = 2
    decoder_num_heads: int = 8
    decoder_mlp_dim: int = 2048
    attention_downsample_rate: int = 2


@dataclass
class MaskDecoderFields(PromptDecoderFields):
    """:class:`PromptDecoderFields` plus SAM's multimask tokens and IoU head (every family but SAM-UNet)."""

    num_multimask_outputs: int = 3
    iou_head_depth: int = 3
    iou_head_hidden_dim: int = 256


def build_two_way_transformer(c: Any) -> TwoWayTransformer:
    """SAM's decoder transformer from a config's ``prompt_embed_dim`` and ``decoder_*`` fields."""
    return TwoWayTransformer(
        depth=c.decoder_depth,
        embedding_dim=c.prompt_embed_dim,
        num_heads=c.decoder_num_heads,
        mlp_dim=c.decoder_mlp_dim,
        attention_downsample_rate=c.attention_downsample_rate,
    )


def build_mask_decoder(c: Any, spatial_dims: int) -> MaskDecoder:
    """SAM's mask decoder (multimask tokens and IoU head) from a config's decoder fields."""
    return MaskDecoder(
        spatial_dims=spatial_dims,
        transformer_dim=c.prompt_embed_dim,
        transformer=build_two_way_transformer(c),
        num_multimask_outputs=c.num_multimask_outputs,
        iou_head_depth=c.iou_head_depth,
        iou_head_hidden_dim=c.iou_head_hidden_dim,
    )


def build_prompt_encoder_2d(c: Any, grid_size: int) -> PromptEncoder:
    """SAM's 2D prompt encoder: ``(x, y)`` points, box corners, mask prompts at 4x the ``grid_size`` embedding."""
    return PromptEncoder(
        spatial_dims=2,
        embed_dim=c.prompt_embed_dim,
        image_embedding_size=(grid_size, grid_size),
        input_image_size=(c.image_size, c.image_size),
        mask_in_chans=c.mask_in_chans,
        num_point_embeddings=4,  # negative, positive, box top-left, box bottom-right
        fourier_layout=("sin", "cos"),
        point_axis_order=(1, 0),  # points are (x, y)
        dense_axis_order=(1, 0),
    )


class SegmentAnythingModel(PromptableSegmenter):
    """Image encoder + prompt encoder + mask decoder with upstream attribute (and so checkpoint key) names.

    Subclasses build the three parts from their config in ``__init__``. Inputs are already preprocessed
    (normalised, resized/cropped to ``config.image_size``); see ``zoo.inference`` for the workflows.
    """

    image_encoder: nn.Module
    prompt_encoder: PromptEncoder
    mask_decoder: MaskDecoder

    def __init__(self, config: Any) -> None:
        super().__init__(config)

    def encode_image(self, images: Tensor) -> Tensor:
        """Image embeddings ``B x C x *grid`` (the expensive part; cache it across clicks)."""
        return self.image_encoder(images)

    def decode_embeddings(
        self, encoding: Tensor, sparse: Tensor, dense: Tensor, multimask_output: bool = False
    ) -> MaskPrediction:
        """The mask decoder on image embeddings and prompt embeddings."""
        return self.mask_decoder(
            image_embeddings=encoding,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )
