"""The SAM-style model shared by SAM-Med3D and SAM-Med2D: image encoder, prompt encoder, mask decoder."""

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

    def embed_prompts(
        self,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sparse and dense prompt embeddings."""
        return self.prompt_encoder(points=points, boxes=boxes, masks=masks)

    def decode_embeddings(
        self, image_embeddings: Tensor, sparse: Tensor, dense: Tensor, multimask_output: bool = False
    ) -> MaskPrediction:
        """The mask decoder on image and prompt embeddings."""
        return self.mask_decoder(
            image_embeddings=image_embeddings,
            image_pe=self.prompt_encoder.get_dense_pe(),
            sparse_prompt_embeddings=sparse,
            dense_prompt_embeddings=dense,
            multimask_output=multimask_output,
        )

    def decode(
        self,
        image_embeddings: Tensor,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
        multimask_output: bool = False,
    ) -> MaskPrediction:
        """Prompt encoder + mask decoder on precomputed image embeddings."""
        sparse, dense = self.embed_prompts(points, boxes, masks)
        return self.decode_embeddings(image_embeddings, sparse, dense, multimask_output)
