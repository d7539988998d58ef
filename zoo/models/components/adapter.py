"""SAM-Med2D's per-block adapter: a channel gate followed by a stride-2 conv / transposed-conv spatial branch."""

from torch import Tensor, nn

from zoo.models.components.channels_last_conv import conv_channels_last, conv_transpose_channels_last
from zoo.models.components.compute_path import reference_computation_enabled
from zoo.models.components.weight_cache import DropsDerivedWeights


class ChannelSpatialAdapter(DropsDerivedWeights):
    """Adapter run in parallel with each ViT block's MLP on the same ``norm2`` output (``B x H x W x C``).

    out = LayerNorm(x + spatial(x * gate(x))): the skip uses the ungated input. The spatial branch halves then
    doubles the grid, so the token grid must have even sides. Submodule names follow upstream's checkpoint keys
    (``channel.0``, ``channel.2``, ``spatial.0``, ``spatial.2``, ``norm``). On the CPU the transposed
    convolution's rearranged weight is kept for inference (``weight_cache``).
    """

    def __init__(self, dim: int, mlp_ratio: float = 0.25) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.channel = nn.Sequential(
            nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.Sigmoid()
        )
        self.spatial = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, stride=2, padding=1, bias=False),
            nn.ReLU(),
            nn.ConvTranspose2d(dim, dim, kernel_size=4, stride=2, padding=1, bias=False),
            nn.ReLU(),
        )
        self.norm = nn.LayerNorm(dim)  # default eps 1e-5, unlike the encoder's 1e-6 (upstream)

    def forward(self, x: Tensor) -> Tensor:
        height, width = x.shape[1:3]
        if height % 2 or width % 2:
            raise ValueError(f"the adapter needs an even token grid, got {height}x{width}")
        if x.device.type == "cpu" and not reference_computation_enabled():  # GPUs keep their convolution kernels
            gate = self.channel(x.mean(dim=(1, 2)))[:, None, None, :]
            return self.norm(x + self.spatial_channels_last(x * gate))
        # Upstream's channels-first computation. A contiguous NCHW copy: on a channels-last view the CPU
        # convolutions reorder their weights on every call.
        x = x.permute(0, 3, 1, 2).contiguous()
        gate = self.channel(x.mean(dim=(2, 3)))[:, :, None, None]
        x = x + self.spatial(x * gate)
        return self.norm(x.permute(0, 2, 3, 1))

    def spatial_channels_last(self, x: Tensor) -> Tensor:
        """The spatial branch on ``B x H x W x C`` tokens as matrix products (``channels_last_conv``), same sums."""
        down, act1, up, act2 = self.spatial
        return act2(conv_transpose_channels_last(up, conv_channels_last(down, x, activation=act1)))
