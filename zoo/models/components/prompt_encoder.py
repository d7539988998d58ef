"""SAM's prompt encoder for 2D and 3D: random-Fourier point/box embeddings and a conv mask-prompt embedding."""

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from zoo.models.components.layers import LayerNormNd, conv_nd
from zoo.models.components.weight_cache import DropsDerivedWeights, derived_from_parameters


class RandomFourierPositionEncoding(nn.Module):
    """Positional encoding of normalised coordinates by a fixed random Gaussian projection.

    ``layout`` says how the projected angles are turned into channels: SAM uses ``("sin", "cos")``; SAM-Med3D's
    trained weights use ``("sin", "cos", "sin")`` (the sine block repeated), so the channel count is
    ``len(layout) * num_pos_feats``. The Gaussian matrix is a persistent buffer (it is in the checkpoints).
    """

    def __init__(self, spatial_dims: int, num_pos_feats: int, layout: Sequence[str], scale: float = 1.0) -> None:
        super().__init__()
        self.layout = tuple(layout)
        self.register_buffer("positional_encoding_gaussian_matrix", scale * torch.randn(spatial_dims, num_pos_feats))

    def encode(self, coords: Tensor) -> Tensor:
        """``... x spatial_dims`` coordinates in [0, 1] to ``... x channels``."""
        matrix = self.positional_encoding_gaussian_matrix
        angles = 2 * math.pi * ((2 * coords.to(matrix.dtype) - 1) @ matrix)
        return torch.cat([angles.sin() if f == "sin" else angles.cos() for f in self.layout], dim=-1)


class PromptEncoder(DropsDerivedWeights):
    """Embeds points, boxes and low-res mask prompts for the mask decoder.

    Axis conventions are explicit because the released weights depend on them:
    - ``point_axis_order[c]`` is the image axis that coordinate component ``c`` runs along. 2D points are
      ``(x, y)``, so ``(1, 0)``; SAM-Med3D's points are in tensor-index order, so ``(0, 1, 2)``.
    - ``dense_axis_order`` is the same for the dense grid encoding. Upstream builds it with the first two grid
      axes swapped in both 2D and 3D, i.e. ``(1, 0)`` / ``(1, 0, 2)``: in 3D, dense PE [i, j, k] therefore equals
      the point PE of voxel (j, i, k). SAM-Med3D was trained with this swap, so it is kept.
    """

    def __init__(
        self,
        spatial_dims: int,
        embed_dim: int,
        image_embedding_size: Sequence[int],
        input_image_size: Sequence[int],
        mask_in_chans: int,
        num_point_embeddings: int,
        fourier_layout: Sequence[str],
        point_axis_order: Sequence[int],
        dense_axis_order: Sequence[int],
    ) -> None:
        super().__init__()
        if embed_dim % len(fourier_layout):
            raise ValueError(f"embed_dim {embed_dim} must be divisible by {len(fourier_layout)}")
        self.spatial_dims = spatial_dims
        self.embed_dim = embed_dim
        self.image_embedding_size = tuple(image_embedding_size)
        self.input_image_size = tuple(input_image_size)
        self.point_axis_order = tuple(point_axis_order)
        self.dense_axis_order = tuple(dense_axis_order)
        self.pe_layer = RandomFourierPositionEncoding(spatial_dims, embed_dim // len(fourier_layout), fourier_layout)
        # 0: negative point, 1: positive point, 2/3: box corners (2D only).
        self.point_embeddings = nn.ModuleList(nn.Embedding(1, embed_dim) for _ in range(num_point_embeddings))
        self.not_a_point_embed = nn.Embedding(1, embed_dim)
        self.mask_input_size = tuple(4 * s for s in self.image_embedding_size)
        conv = conv_nd(spatial_dims)
        self.mask_downscaling = nn.Sequential(
            conv(1, mask_in_chans // 4, kernel_size=2, stride=2),
            LayerNormNd(mask_in_chans // 4),
            nn.GELU(),
            conv(mask_in_chans // 4, mask_in_chans, kernel_size=2, stride=2),
            LayerNormNd(mask_in_chans),
            nn.GELU(),
            conv(mask_in_chans, embed_dim, kernel_size=1),
        )
        self.no_mask_embed = nn.Embedding(1, embed_dim)

    def get_dense_pe(self) -> Tensor:
        """Positional encoding of the embedding grid's cell centres: ``1 x C x *grid``.

        It depends only on the Gaussian matrix, so at inference it is computed once per state of that buffer and
        kept (``weight_cache``); a click then skips a sine and a cosine over the whole grid. Do not modify the
        returned tensor in place.
        """
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        return derived_from_parameters(self, "dense_pe", [matrix], self._dense_pe)

    def _dense_pe(self) -> Tensor:
        matrix = self.pe_layer.positional_encoding_gaussian_matrix
        axes = [
            (torch.arange(size, device=matrix.device, dtype=matrix.dtype) + 0.5) / size
            for size in self.image_embedding_size
        ]
        centres = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)  # *grid x spatial_dims
        pe = self.pe_layer.encode(centres[..., list(self.dense_axis_order)])
        return pe.movedim(-1, 0).unsqueeze(0)

    def _normalise(self, coords: Tensor) -> Tensor:
        """Pixel/voxel coordinates (already shifted to cell centres) to [0, 1] along each component's axis."""
        sizes = torch.tensor([self.input_image_size[a] for a in self.point_axis_order], device=coords.device)
        return coords.float() / sizes

    def _embed_points(self, coords: Tensor, labels: Tensor, pad: bool) -> Tensor:
        coords = coords + 0.5
        if pad:
            # Without a box, upstream always appends one padding point (label -1) per prompt set.
            coords = torch.cat([coords, coords.new_zeros(coords.shape[0], 1, coords.shape[2])], dim=1)
            labels = torch.cat([labels, -labels.new_ones(labels.shape[0], 1)], dim=1)
        embedding = self.pe_layer.encode(self._normalise(coords))
        labels = labels[..., None]
        embedding = torch.where(labels == -1, self.not_a_point_embed.weight, embedding)
        for value in (0, 1):
            embedding = embedding + (labels == value) * self.point_embeddings[value].weight
        return embedding

    def _embed_boxes(self, boxes: Tensor) -> Tensor:
        if len(self.point_embeddings) < 4:
            raise NotImplementedError(
                "this model has no box-corner embeddings (SAM-Med3D's released weights support points and masks "
                "only); pass points instead of boxes"
            )
        corners = (boxes + 0.5).reshape(-1, 2, self.spatial_dims)
        embedding = self.pe_layer.encode(self._normalise(corners))
        return torch.stack(
            [embedding[:, 0] + self.point_embeddings[2].weight[0], embedding[:, 1] + self.point_embeddings[3].weight[0]],
            dim=1,
        )

    def forward(
        self,
        points: tuple[Tensor, Tensor] | None = None,
        boxes: Tensor | None = None,
        masks: Tensor | None = None,
    ) -> tuple[Tensor, Tensor]:
        """Sparse ``B x T x C`` and dense ``B x C x *grid`` prompt embeddings."""
        batch = self._batch_size(points, boxes, masks)
        device = self.no_mask_embed.weight.device
        sparse = torch.empty(batch, 0, self.embed_dim, device=device)
        if points is not None:
            coords, labels = points
            sparse = torch.cat([sparse, self._embed_points(coords, labels, pad=boxes is None)], dim=1)
        if boxes is not None:
            sparse = torch.cat([sparse, self._embed_boxes(boxes)], dim=1)
        if masks is not None:
            if tuple(masks.shape[2:]) != self.mask_input_size:
                raise ValueError(f"mask prompt must be B x 1 x {self.mask_input_size}, got {tuple(masks.shape)}")
            dense = self.mask_downscaling(masks)
        else:
            grid_shape = (1, -1) + (1,) * self.spatial_dims
            dense = self.no_mask_embed.weight.reshape(grid_shape).expand(batch, -1, *self.image_embedding_size)
        return sparse, dense

    @staticmethod
    def _batch_size(points: tuple[Tensor, Tensor] | None, boxes: Tensor | None, masks: Tensor | None) -> int:
        if points is not None:
            return points[0].shape[0]
        if boxes is not None:
            return boxes.shape[0]
        if masks is not None:
            return masks.shape[0]
        return 1
