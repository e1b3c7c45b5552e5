"""ResNet-18/50 built locally (nothing is downloaded): chip classifiers (seed 002) and the Res-UNet (seed 004)."""

from __future__ import annotations

import torch
from torch import nn

from geoarray.models._registry import register_model
from geoarray.models.base import GeoModel, pad_to_stride
from geoarray.models.unet import Decoder


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            *([nn.Dropout2d(dropout)] if dropout else []),
            nn.Conv2d(planes, cout, 3, 1, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        cout = planes * self.expansion
        self.body = nn.Sequential(
            nn.Conv2d(cin, planes, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            nn.Conv2d(planes, planes, 3, stride, 1, bias=False),
            nn.BatchNorm2d(planes),
            nn.ReLU(inplace=True),
            *([nn.Dropout2d(dropout)] if dropout else []),
            nn.Conv2d(planes, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.short = _shortcut(cin, cout, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.short(x))


def _shortcut(cin: int, cout: int, stride: int) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))


_LAYOUTS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], list[int]]] = {
    "resnet18": (BasicBlock, [2, 2, 2, 2]),
    "resnet50": (Bottleneck, [3, 4, 6, 3]),
}


def _layers(arch: str, cin: int, width: int, dropout: float) -> tuple[nn.ModuleList, list[int]]:
    if arch not in _LAYOUTS:
        raise ValueError(f"encoder={arch!r}; expected one of {sorted(_LAYOUTS)}")
    block, counts = _LAYOUTS[arch]
    layers = nn.ModuleList()
    outs = []
    c = cin
    for i, n in enumerate(counts):
        planes = width * 2**i
        drop = dropout if i >= 2 else 0.0  # layers 3 and 4
        blocks = []
        for j in range(n):
            blocks.append(block(c, planes, stride=2 if (j == 0 and i > 0) else 1, dropout=drop))
            c = planes * block.expansion
        layers.append(nn.Sequential(*blocks))
        outs.append(c)
    return layers, outs


class ResNetClassifier(GeoModel):
    """ResNet with the usual 7x7/2 stem and max-pool, for N input bands; outputs class logits per chip."""

    input_kind = "chip"

    def __init__(self, arch: str, in_channels: int, num_classes: int, width: int, dropout: float) -> None:
        super().__init__()
        self.stride = 32
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(3, 2, 1),
        )
        self.layers, outs = _layers(arch, width, width, dropout)
        self.feature_dim = outs[-1]
        self.out_channels = num_classes or self.feature_dim  # 0 classes: the pooled embedding is the output
        self.head = nn.Linear(outs[-1], num_classes) if num_classes else nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for layer in self.layers:
            x = layer(x)
        return torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


@register_model
def resnet18(
    in_channels: int = 3, num_classes: int = 10, width: int = 64, dropout: float = 0.0
) -> ResNetClassifier:
    """ResNet-18 chip classifier (``num_classes=0`` gives the pooled embedding, e.g. for VICReg)."""
    return ResNetClassifier("resnet18", in_channels, num_classes, width, dropout)


@register_model
def resnet50(
    in_channels: int = 3, num_classes: int = 10, width: int = 64, dropout: float = 0.0
) -> ResNetClassifier:
    """ResNet-50 chip classifier (``num_classes=0`` gives the pooled embedding)."""
    return ResNetClassifier("resnet50", in_channels, num_classes, width, dropout)


class ResUNet(GeoModel):
    """UNet on a ResNet encoder (seed 004's Res50UNet).

    The 7x7 strided stem is replaced by a residual double conv at full resolution with a 1x1 shortcut from
    the input bands; the max-pool stays; dropout sits in the layer-3/4 blocks. Stride 16. Outputs logits.
    """

    input_kind = "image"

    def __init__(self, arch: str, in_channels: int, num_classes: int, width: int, dropout: float) -> None:
        super().__init__()
        self.stride = 16
        self.out_channels = num_classes
        self.stem_body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
        )
        self.stem_short = nn.Sequential(nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width))
        self.pool = nn.MaxPool2d(2)
        self.layers, outs = _layers(arch, width, width, dropout)
        self.decoder = Decoder([outs[-1]], [outs[2], outs[1], outs[0], width], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, h, w = pad_to_stride(x, self.stride)
        f0 = torch.relu(self.stem_body(x) + self.stem_short(x))
        feats = []
        y = self.pool(f0)
        for layer in self.layers:
            y = layer(y)
            feats.append(y)
        out = self.decoder(feats[-1], [feats[2], feats[1], feats[0], f0])
        return out[..., :h, :w]


@register_model
def res_unet(
    in_channels: int = 3,
    num_classes: int = 2,
    encoder: str = "resnet50",
    width: int = 64,
    dropout: float = 0.2,
) -> ResUNet:
    """ResNet-18/50 encoder UNet (``encoder="resnet18"`` or ``"resnet50"``)."""
    return ResUNet(encoder, in_channels, num_classes, width, dropout)
