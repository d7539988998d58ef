"""SAM-UNet's mask decoder: one learned output token, SAM's two-way transformer, multi-scale feature fusion.

Unlike SAM's decoder it has no IoU token, no multimask tokens and no IoU head: it predicts exactly one mask
per prompt set and no quality score. Submodule names follow upstream's checkpoint keys (``med_token``,
``hf_mlp``, ``embedding_maskfeature``, ``output_upscaling``, ``transformer``).
"""

import torch
from torch import Tensor, nn

from zoo.models.components.layers import MLP, LayerNormNd, tokens_as_map
from zoo.models.components.mask_decoder import broadcast_image_batch
from zoo.models.components.transformer import TwoWayTransformer
from zoo.models.outputs import MaskPrediction


def upscale_x4(channels_in: int, hidden: int, channels_out: int, final_activation: bool = False) -> nn.Sequential:
    """Two 2x2 stride-2 transposed convs (``in -> hidden -> out``) with LayerNorm2d and GELU between them.

    SAM's ``output_upscaling`` ends with another GELU (``final_activation``); SAM-UNet's bridges and its
    embedding encoder do not.
    """
    layers: list[nn.Module] = [
        nn.ConvTranspose2d(channels_in, hidden, kernel_size=2, stride=2),
        LayerNormNd(hidden),
        nn.GELU(),
        nn.ConvTranspose2d(hidden, channels_out, kernel_size=2, stride=2),
    ]
    if final_activation:
        layers.append(nn.GELU())
    return nn.Sequential(*layers)


class SingleTokenMaskDecoder(nn.Module):
    """Predicts one low-res mask per prompt set from image, prompt and multi-scale features.

    mask = hf_mlp(token_0) . (embedding_maskfeature(output_upscaling(image tokens)) + multi_scale_feature),
    where token_0 is the transformer output of ``med_token``. Low-res masks are 4x the embedding grid.
    """

    def __init__(self, transformer_dim: int, transformer: TwoWayTransformer) -> None:
        super().__init__()
        if transformer_dim % 8:
            raise ValueError(f"transformer_dim {transformer_dim} must be divisible by 8")
        feature_dim = transformer_dim // 8
        self.transformer = transformer
        self.output_upscaling = upscale_x4(transformer_dim, transformer_dim // 4, feature_dim, final_activation=True)
        self.med_token = nn.Embedding(1, transformer_dim)
        self.hf_mlp = MLP(transformer_dim, transformer_dim, feature_dim, 3)  # the hypernetwork
        self.embedding_maskfeature = nn.Sequential(
            nn.Conv2d(feature_dim, transformer_dim // 4, kernel_size=3, padding=1),
            LayerNormNd(transformer_dim // 4),
            nn.GELU(),
            nn.Conv2d(transformer_dim // 4, feature_dim, kernel_size=3, padding=1),
        )

    def forward(
        self,
        image_embeddings: Tensor,
        image_pe: Tensor,
        sparse_prompt_embeddings: Tensor,
        dense_prompt_embeddings: Tensor,
        multi_scale_feature: Tensor,
    ) -> MaskPrediction:
        """``low_res_logits`` is ``N x 1 x 4h x 4w`` for ``N`` prompt sets; ``iou_predictions`` is None.

        Image-side inputs have batch ``N`` (one image per prompt set) or 1 (one image, ``N`` prompt sets).
        """
        batch = sparse_prompt_embeddings.shape[0]
        tokens = torch.cat([self.med_token.weight.expand(batch, -1, -1), sparse_prompt_embeddings], dim=1)
        src = broadcast_image_batch(image_embeddings, batch, "image_embeddings") + dense_prompt_embeddings
        pos = broadcast_image_batch(image_pe, batch, "image_pe")
        hidden, image_tokens = self.transformer(src, pos, tokens)
        upscaled = self.upscale(image_tokens, tuple(image_embeddings.shape[2:]))
        multi_scale_feature = broadcast_image_batch(multi_scale_feature, batch, "multi_scale_feature")
        features = self.mask_features(upscaled, multi_scale_feature)
        return MaskPrediction(low_res_logits=self.predict_masks(self.hf_mlp(hidden[:, 0]), features))

    def upscale(self, image_tokens: Tensor, grid: tuple[int, int]) -> Tensor:
        """Transformer image tokens ``N x hw x C`` to the ``N x C/8 x 4h x 4w`` upscaled map."""
        return self.output_upscaling(tokens_as_map(image_tokens, grid))  # the layout upstream's view has

    def mask_features(self, upscaled: Tensor, multi_scale_feature: Tensor) -> Tensor:
        """The per-pixel features the hypernetwork output is dotted with."""
        return self.embedding_maskfeature(upscaled) + multi_scale_feature

    @staticmethod
    def predict_masks(hyper_in: Tensor, features: Tensor) -> Tensor:
        """``N x C`` hypernetwork weights . ``N x C x H x W`` features -> ``N x 1 x H x W`` logits."""
        batch, _, height, width = features.shape
        return (hyper_in.unsqueeze(1) @ features.flatten(2)).view(batch, 1, height, width)
