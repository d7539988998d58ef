"""SAM's mask decoder for 2D and 3D: IoU and mask tokens through a two-way transformer, hypernetwork masks."""

import torch
from torch import Tensor, nn

from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.fast_upscaling import channels_last_masks, supports_channels_last_upscaling
from zoo.models.components.layers import MLP, LayerNormNd, conv_transpose_nd
from zoo.models.components.transformer import TwoWayTransformer
from zoo.models.components.weight_cache import DropsDerivedWeights
from zoo.models.outputs import MaskPrediction


def broadcast_image_batch(image_tensor: Tensor, batch: int, what: str) -> Tensor:
    """Use one image-side tensor for ``batch`` prompt sets: equal batch as is, batch 1 broadcast, else an error."""
    if image_tensor.shape[0] == batch:
        return image_tensor
    if image_tensor.shape[0] == 1:
        return image_tensor.expand(batch, *image_tensor.shape[1:])
    raise ValueError(
        f"{what} has batch {image_tensor.shape[0]} but there are {batch} prompt sets; give one prompt set per image "
        "or a single image"
    )


class MaskDecoder(DropsDerivedWeights):
    """Predicts ``1 + num_multimask_outputs`` masks and their IoU from image and prompt embeddings.

    The fast upscaling keeps its rearranged weights and gather indices for inference (``weight_cache``).
    """

    def __init__(
        self,
        spatial_dims: int,
        transformer_dim: int,
        transformer: TwoWayTransformer,
        num_multimask_outputs: int = 3,
        iou_head_depth: int = 3,
        iou_head_hidden_dim: int = 256,
    ) -> None:
        super().__init__()
        self.transformer = transformer
        self.num_mask_tokens = num_multimask_outputs + 1
        self.iou_token = nn.Embedding(1, transformer_dim)
        self.mask_tokens = nn.Embedding(self.num_mask_tokens, transformer_dim)
        up = conv_transpose_nd(spatial_dims)
        self.output_upscaling = nn.Sequential(
            up(transformer_dim, transformer_dim // 4, kernel_size=2, stride=2),
            LayerNormNd(transformer_dim // 4),
            nn.GELU(),
            up(transformer_dim // 4, transformer_dim // 8, kernel_size=2, stride=2),
            nn.GELU(),
        )
        self.output_hypernetworks_mlps = nn.ModuleList(
            MLP(transformer_dim, transformer_dim, transformer_dim // 8, 3) for _ in range(self.num_mask_tokens)
        )
        self.iou_prediction_head = MLP(transformer_dim, iou_head_hidden_dim, self.num_mask_tokens, iou_head_depth)

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multimask_output: bool,
    ) -> MaskPrediction:
        """Mask token 0 alone (``multimask_output=False``) or tokens 1..3 (``True``), as upstream."""
        selected = slice(1, None) if multimask_output else slice(0, 1)
        masks, iou = self.predict_masks(
            image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings, selected
        )
        return MaskPrediction(low_res_logits=masks, iou_predictions=iou[:, selected])

    def predict_masks(
        self, image_embeddings: Tensor, image_pe: Tensor, sparse: Tensor, dense: Tensor, selected: slice = slice(None)
    ) -> tuple[Tensor, Tensor]:
        """Logits ``B x n x *low_res`` of the ``selected`` mask tokens and IoU predictions ``B x (1 + num_multimask)``.

        Upstream decodes every mask token and then drops the unselected ones. Each mask depends only on its own
        token's hypernetwork vector, so only the selected ones are computed: the same values, and a single-mask
        click does a quarter of the hypernetwork product and the final rearrangement.
        """
        batch = sparse.shape[0]
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        tokens = torch.cat([output_tokens.unsqueeze(0).expand(batch, -1, -1), sparse], dim=1)
        src = broadcast_image_batch(image_embeddings, batch, "image_embeddings") + dense
        pos = broadcast_image_batch(image_pe, batch, "image_pe")
        hidden, src = self.transformer(src, pos, tokens)
        iou_token_out = hidden[:, 0]
        mask_tokens_out = hidden[:, 1 : 1 + self.num_mask_tokens]
        hyper_in = torch.stack(
            [self.output_hypernetworks_mlps[i](mask_tokens_out[:, i]) for i in range(self.num_mask_tokens)[selected]],
            dim=1,
        )
        grid = image_embeddings.shape[2:]
        if not reference_computation_enabled() and supports_channels_last_upscaling(self.output_upscaling):
            masks = channels_last_masks(self.output_upscaling, src, grid, hyper_in)
        else:
            upscaled = self.output_upscaling(src.transpose(1, 2).reshape(batch, -1, *grid))
            masks = (hyper_in @ upscaled.flatten(2)).view(batch, -1, *upscaled.shape[2:])
        return masks, self.iou_prediction_head(iou_token_out)
