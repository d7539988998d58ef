"""SAM-UNet's convolutional branch: a timm ResNet's four stages, each mapped onto the ViT token grid.

The ResNet is timm's (its module names match torchvision's, so torchvision and timm ImageNet weights load
as they are). Its stage ``i`` output (stride ``4 * 2**i``) goes through a :class:`ConvToTokens` that resamples
it to the ``grid x grid`` token map and projects it to the ViT width; SAM-UNet adds that to the ViT tokens.
"""

import math
from dataclasses import dataclass

import timm
from torch import nn

from zoo.models.components.layers import LayerNormNd

#: Strides of the four ResNet stages (layer1..layer4) relative to the input image.
STAGE_STRIDES = (4, 8, 16, 32)


@dataclass(frozen=True)
class ResNetVariant:
    """What SAM-UNet needs to know about a ResNet without building it."""

    block: str
    layers: tuple[int, int, int, int]
    stage_channels: tuple[int, int, int, int]


#: The ResNets upstream offers (torchvision ``resnet34`` / ``resnet50``), under their timm names.
RESNET_VARIANTS = {
    "resnet34": ResNetVariant("BasicBlock", (3, 4, 6, 3), (64, 128, 256, 512)),
    "resnet50": ResNetVariant("Bottleneck", (3, 4, 6, 3), (256, 512, 1024, 2048)),
}


def build_resnet_stages(name: str, layers: tuple[int, ...] | None = None) -> nn.Module:
    """timm ResNet ``name`` without pooling and classifier; ``forward`` returns the four stage outputs.

    ``layers`` overrides the number of blocks per stage (the tiny parity fixture uses ``(1, 1, 1, 1)``).
    Random initialisation as torchvision (no zero-initialised last BN per block); nothing is downloaded.
    State-dict keys: ``conv1``, ``bn1``, ``layer1`` .. ``layer4`` (torchvision's names).
    """
    if name not in RESNET_VARIANTS:
        raise ValueError(f"unknown ResNet {name!r}; SAM-UNet supports {', '.join(sorted(RESNET_VARIANTS))}")
    variant = RESNET_VARIANTS[name]
    model = timm.create_model(
        name,
        pretrained=False,
        features_only=True,
        out_indices=(1, 2, 3, 4),
        layers=tuple(layers) if layers is not None else variant.layers,
        zero_init_last=False,
    )
    channels = tuple(model.feature_info.channels())
    if channels != variant.stage_channels or tuple(model.feature_info.reduction()) != STAGE_STRIDES:
        raise RuntimeError(f"timm's {name} has stage channels {channels}; expected {variant.stage_channels}")
    return model


class ConvToTokens(nn.Sequential):
    """Maps a ``B x C x s x s`` conv feature to ``B x embed_dim x grid x grid`` (upstream's ``Reshaper``).

    Larger maps are halved ``log2(s / grid)`` times by [3x3 stride-2 conv doubling the channels, LayerNorm2d,
    GELU]; smaller maps are doubled ``log2(grid / s)`` times by [2x2 stride-2 transposed conv halving the
    channels, LayerNorm2d, GELU]; a 1x1 conv then projects to ``embed_dim``. Indices follow upstream's keys.
    """

    def __init__(self, size_in: int, channels_in: int, grid_size: int, embed_dim: int) -> None:
        layers: list[nn.Module] = []
        channels = channels_in
        for _ in range(resampling_steps(size_in, grid_size)):
            if size_in > grid_size:
                layers.append(nn.Conv2d(channels, channels * 2, kernel_size=3, stride=2, padding=1))
                channels *= 2
            else:
                layers.append(nn.ConvTranspose2d(channels, channels // 2, kernel_size=2, stride=2))
                channels //= 2
            layers += [LayerNormNd(channels), nn.GELU()]
        layers.append(nn.Conv2d(channels, embed_dim, kernel_size=1))
        super().__init__(*layers)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Kaiming-normal (fan_out, ReLU) convolutions with zero bias, as upstream initialises them."""
        for module in self:
            if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)


def resampling_steps(size_in: int, size_out: int) -> int:
    """How many halvings or doublings turn a side of ``size_in`` into ``size_out``; an error unless a power of 2."""
    larger, smaller = max(size_in, size_out), min(size_in, size_out)
    if smaller <= 0 or larger % smaller or not math.log2(larger // smaller).is_integer():
        raise ValueError(
            f"a {size_in}x{size_in} conv feature cannot be resampled to the {size_out}x{size_out} token grid: "
            "the sizes must differ by a power of two"
        )
    return int(math.log2(larger // smaller))
