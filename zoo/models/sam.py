"""The SAM-style model shared by SAM-Med3D, SAM-Med2D, SAM and LiteMedSAM: image encoder, prompt encoder, mask decoder."""

from typing import Any

from torch import Tensor, nn

from zoo.models.base import PromptableSegmenter
from zoo.models.components.mask_decoder import MaskDecoder
from zoo.models.components.prompt_encoder import PromptEncoder
from zoo.models.outputs import MaskPrediction


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
