"""UNet (seed 004): a configurable encoder/decoder with BatchNorm and dropout in the encoder."""

from __future__ import annotations

import torch
from torch import nn

from geoarray.models._registry import register_model
from geoarray.models.base import GeoModel, pad_to_stride


def conv_block(cin: int, cout: int, dropout: float = 0.0) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    ]
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """UNet decoder: transposed-conv up-sampling (exact and local, so blockwise predict is seamless)."""

    def __init__(self, channels: list[int], skips: list[int], out_channels: int) -> None:
        super().__init__()
        if out_channels < 1:
            raise ValueError(f"num_classes={out_channels}; expected >= 1 (one output map per class)")
        self.ups = nn.ModuleList()
        self.blocks = nn.ModuleList()
        c = channels[0]
        for skip in skips:
            self.ups.append(nn.ConvTranspose2d(c, skip, 2, stride=2))
            self.blocks.append(conv_block(2 * skip, skip))
            c = skip
        self.head = nn.Conv2d(c, out_channels, 1)

    def forward(self, x: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        for up, block, skip in zip(self.ups, self.blocks, skips, strict=True):
            x = block(torch.cat([up(x), skip], dim=1))
        return self.head(x)


class UNet(GeoModel):
    """A ``depth``-level UNet; ``depth - 1`` poolings, so the stride is ``2 ** (depth - 1)``. Outputs logits."""

    input_kind = "image"

    def __init__(self, in_channels: int, num_classes: int, depth: int, width: int, dropout: float) -> None:
        super().__init__()
        if not 2 <= depth <= 7:
            raise ValueError(f"depth={depth}; expected 2..7")
        widths = [width * 2**i for i in range(depth)]
        self.stride = 2 ** (depth - 1)
        self.out_channels = num_classes
        self.encoder = nn.ModuleList()
        c = in_channels
        for i, w in enumerate(widths):
            self.encoder.append(conv_block(c, w, dropout if i > 0 else 0.0))
            c = w
        self.pool = nn.MaxPool2d(2)
        self.decoder = Decoder([widths[-1]], widths[-2::-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_stride(x, self.stride)
        skips = []
        for i, block in enumerate(self.encoder):
            if i:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        out = self.decoder(skips.pop(), skips[::-1])
        return out[..., :h, :w]


@register_model
def unet(
    in_channels: int = 3, num_classes: int = 2, depth: int = 5, width: int = 32, dropout: float = 0.2
) -> UNet:
    """5-level UNet as in seed 004 (224x224 chips, 20 bands in, 10 classes out works)."""
    return UNet(in_channels, num_classes, depth, width, dropout)


class Linear(GeoModel):
    """A per-pixel linear map (1x1 convolution): a linear probe on features, and a zero-halo baseline."""

    input_kind = "image"

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes={num_classes}; expected >= 1 (one output map per class)")
        self.out_channels = num_classes
        self.proj = nn.Conv2d(in_channels, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


@register_model
def linear(in_channels: int = 3, num_classes: int = 2) -> Linear:
    """Per-pixel linear model (1x1 conv); receptive field 0."""
    return Linear(in_channels, num_classes)
