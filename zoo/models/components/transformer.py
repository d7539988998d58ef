"""SAM's two-way transformer: prompt tokens and image tokens attend to each other. Dimension-agnostic."""

from torch import Tensor, nn
from torch.nn import functional as F

from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.few_token_attention import image_queries_token_keys, token_queries_image_keys
from zoo.models.components.layers import MLPBlock
from zoo.models.components.onednn_linear import OneDNNLinear


class TokenAttention(nn.Module):
    """Multi-head attention with separate q/k/v projections, optionally to a narrower internal width.

    The projections are :class:`~zoo.models.components.onednn_linear.OneDNNLinear` layers (``nn.Linear``'s
    parameters and keys): the direct form's projections of every image token take oneDNN's kernel where it is the
    faster one.

    Cross-attention between a few tokens and many (prompt tokens and image tokens) runs in the factored form of
    :mod:`~zoo.models.components.few_token_attention` when that needs fewer operations, unless
    ``compute_path.reference_computation()`` is active.
    """

    def __init__(self, embedding_dim: int, num_heads: int, downsample_rate: int = 1) -> None:
        super().__init__()
        self.num_heads = num_heads
        internal_dim = embedding_dim // downsample_rate
        if internal_dim % num_heads:
            raise ValueError(f"internal width {internal_dim} is not divisible by {num_heads} heads")
        self.q_proj = OneDNNLinear(embedding_dim, internal_dim)
        self.k_proj = OneDNNLinear(embedding_dim, internal_dim)
        self.v_proj = OneDNNLinear(embedding_dim, internal_dim)
        self.out_proj = OneDNNLinear(internal_dim, embedding_dim)

    def _split_heads(self, x: Tensor) -> Tensor:
        batch, tokens, channels = x.shape
        return x.reshape(batch, tokens, self.num_heads, channels // self.num_heads).transpose(1, 2)

    def forward(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        if not reference_computation_enabled():
            if self._factoring_pays(few=k.shape[1], many=q.shape[1]):
                return image_queries_token_keys(self, q, k, v)
            if self._factoring_pays(few=q.shape[1], many=k.shape[1]):
                return token_queries_image_keys(self, q, k, v)
        return self._direct(q, k, v)

    def _factoring_pays(self, few: int, many: int) -> bool:
        """Whether the factored form is cheaper: ``few`` tokens per head span less than the internal width."""
        return few < many and self.num_heads * few < self.q_proj.out_features

    def _direct(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Upstream's computation: project queries, keys and values, attend, project out."""
        q, k, v = (self._split_heads(proj(x)) for proj, x in ((self.q_proj, q), (self.k_proj, k), (self.v_proj, v)))
        out = F.scaled_dot_product_attention(q, k, v)
        batch, _, tokens, _ = out.shape
        return self.out_proj(out.transpose(1, 2).reshape(batch, tokens, -1))


class TwoWayAttentionBlock(nn.Module):
    """Self-attention on tokens, token-to-image cross-attention, MLP, then image-to-token cross-attention."""

    def __init__(
        self,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
        skip_first_layer_pe: bool = False,
    ) -> None:
        super().__init__()
        self.self_attn = TokenAttention(embedding_dim, num_heads)
        self.norm1 = nn.LayerNorm(embedding_dim)
        self.cross_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm2 = nn.LayerNorm(embedding_dim)
        self.mlp = MLPBlock(embedding_dim, mlp_dim, activation)
        self.norm3 = nn.LayerNorm(embedding_dim)
        self.norm4 = nn.LayerNorm(embedding_dim)
        self.cross_attn_image_to_token = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.skip_first_layer_pe = skip_first_layer_pe

    def forward(self, queries: Tensor, keys: Tensor, query_pe: Tensor, key_pe: Tensor) -> tuple[Tensor, Tensor]:
        if self.skip_first_layer_pe:
            # First layer: no positional encoding and no residual around self-attention (as upstream).
            queries = self.self_attn(queries, queries, queries)
        else:
            q = queries + query_pe
            queries = queries + self.self_attn(q, q, queries)
        queries = self.norm1(queries)
        k = keys + key_pe  # the image keys do not change until norm4, so both cross-attentions share this sum
        queries = self.norm2(queries + self.cross_attn_token_to_image(queries + query_pe, k, keys))
        queries = self.norm3(queries + self.mlp(queries))
        keys = self.norm4(keys + self.cross_attn_image_to_token(k, queries + query_pe, queries))
        return queries, keys


class TwoWayTransformer(nn.Module):
    """Stack of :class:`TwoWayAttentionBlock` plus a final token-to-image attention.

    Takes a channels-first image embedding of any spatial rank and returns (tokens, image tokens).
    """

    def __init__(
        self,
        depth: int,
        embedding_dim: int,
        num_heads: int,
        mlp_dim: int,
        activation: type[nn.Module] = nn.ReLU,
        attention_downsample_rate: int = 2,
    ) -> None:
        super().__init__()
        self.layers = nn.ModuleList(
            TwoWayAttentionBlock(
                embedding_dim, num_heads, mlp_dim, activation, attention_downsample_rate, skip_first_layer_pe=i == 0
            )
            for i in range(depth)
        )
        self.final_attn_token_to_image = TokenAttention(embedding_dim, num_heads, attention_downsample_rate)
        self.norm_final_attn = nn.LayerNorm(embedding_dim)

    def forward(self, image_embedding: Tensor, image_pe: Tensor, point_embedding: Tensor) -> tuple[Tensor, Tensor]:
        # Token-major copies: every later product and sum over the image tokens then reads contiguous memory.
        keys = image_embedding.flatten(2).transpose(1, 2).contiguous()
        key_pe = image_pe.flatten(2).transpose(1, 2).contiguous()
        queries = point_embedding
        for layer in self.layers:
            queries, keys = layer(queries, keys, point_embedding, key_pe)
        q, k = queries + point_embedding, keys + key_pe
        queries = self.norm_final_attn(queries + self.final_attn_token_to_image(q, k, keys))
        return queries, keys
