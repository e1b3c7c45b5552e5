"""Pixel time-series backbones (seed 001): MLP, 1-D CNN and transformer over ``(B, T, C)``.

All take ``x (B, T, C)``, ``doy (B, T)`` day of year and ``valid (B, T)`` bool, and return ``(B, out)``: an
embedding of ``out_channels`` or, with ``num_classes > 0``, class logits from a linear head on it.
"""

from __future__ import annotations

import torch
from torch import nn

from geoarray.models._registry import register_model
from geoarray.models.base import GeoModel, sinusoidal_encoding


class PixelModel(GeoModel):
    input_kind = "pixels"

    def __init__(self, embed_dim: int, num_classes: int) -> None:
        super().__init__()
        self.feature_dim = embed_dim
        self.out_channels = num_classes or embed_dim
        self.head = nn.Linear(embed_dim, num_classes) if num_classes else nn.Identity()

    def embed(self, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(
        self, x: torch.Tensor, doy: torch.Tensor | None = None, valid: torch.Tensor | None = None
    ) -> torch.Tensor:
        b, t, _ = x.shape
        if doy is None:
            doy = torch.zeros(b, t, device=x.device)
        if valid is None:
            valid = torch.ones(b, t, dtype=torch.bool, device=x.device)
        x = x * valid[..., None]
        return self.head(self.embed(x, doy, valid))


def _masked_mean(h: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    w = valid.to(h.dtype)[..., None]
    return (h * w).sum(1) / w.sum(1).clamp_min(1.0)


class PixelMLP(PixelModel):
    def __init__(
        self,
        in_channels: int,
        num_timesteps: int,
        out_channels: int,
        hidden: int,
        depth: int,
        num_classes: int,
    ) -> None:
        super().__init__(out_channels, num_classes)
        if depth < 1:
            raise ValueError(f"depth={depth}; expected an integer >= 1 (linear layers)")
        self.t = num_timesteps
        layers: list[nn.Module] = []
        c = num_timesteps * (in_channels + 1)  # +1: the validity flag of each date
        for _ in range(depth - 1):
            layers += [nn.Linear(c, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
            c = hidden
        layers.append(nn.Linear(c, out_channels))
        self.net = nn.Sequential(*layers)

    def embed(self, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.t:
            raise ValueError(f"pixel_mlp was built for {self.t} dates, got {x.shape[1]}")
        return self.net(torch.cat([x, valid[..., None].to(x.dtype)], -1).flatten(1))


class PixelCNN(PixelModel):
    def __init__(
        self, in_channels: int, out_channels: int, width: int, depth: int, kernel_size: int, num_classes: int
    ) -> None:
        super().__init__(out_channels, num_classes)
        if depth < 1:
            raise ValueError(f"depth={depth}; expected an integer >= 1 (convolution layers)")
        layers: list[nn.Module] = []
        c = in_channels + 1
        for _ in range(depth):
            layers += [
                nn.Conv1d(c, width, kernel_size, padding=kernel_size // 2),
                nn.BatchNorm1d(width),
                nn.ReLU(),
            ]
            c = width
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(width, out_channels)

    def embed(self, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.net(torch.cat([x, valid[..., None].to(x.dtype)], -1).transpose(1, 2)).transpose(1, 2)
        return self.proj(_masked_mean(h, valid))


class PixelTransformer(PixelModel):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        d_model: int,
        nhead: int,
        num_layers: int,
        dim_feedforward: int,
        dropout: float,
        num_classes: int,
    ) -> None:
        super().__init__(out_channels, num_classes)
        self.d_model = d_model
        self.inp = nn.Linear(in_channels, d_model)
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.proj = nn.Linear(d_model, out_channels)

    def embed(self, x: torch.Tensor, doy: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        h = self.inp(x) + sinusoidal_encoding(doy, self.d_model)
        # a series with no valid date would make attention all -inf; let it attend and mask it out later
        pad = ~valid & valid.any(1, keepdim=True)
        h = self.encoder(h, src_key_padding_mask=pad)
        return self.proj(_masked_mean(h, valid))


@register_model
def pixel_mlp(
    in_channels: int = 10,
    num_timesteps: int = 12,
    out_channels: int = 64,
    hidden: int = 256,
    depth: int = 3,
    num_classes: int = 0,
) -> PixelMLP:
    """MLP over the flattened series (a fixed number of dates)."""
    return PixelMLP(in_channels, num_timesteps, out_channels, hidden, depth, num_classes)


@register_model
def pixel_cnn(
    in_channels: int = 10,
    out_channels: int = 64,
    width: int = 64,
    depth: int = 3,
    kernel_size: int = 3,
    num_classes: int = 0,
) -> PixelCNN:
    """1-D CNN over time with a masked mean pool: any number of dates."""
    return PixelCNN(in_channels, out_channels, width, depth, kernel_size, num_classes)


@register_model
def pixel_transformer(
    in_channels: int = 10,
    out_channels: int = 64,
    d_model: int = 64,
    nhead: int = 4,
    num_layers: int = 2,
    dim_feedforward: int = 128,
    dropout: float = 0.1,
    num_classes: int = 0,
) -> PixelTransformer:
    """Transformer over dates with a day-of-year encoding, masked for invalid dates."""
    if d_model % nhead:  # torch's own check is an assert that names neither hparam
        raise ValueError(
            f"d_model={d_model} is not a multiple of nhead={nhead}; expected e.g. d_model=64, nhead=4"
        )
    return PixelTransformer(
        in_channels, out_channels, d_model, nhead, num_layers, dim_feedforward, dropout, num_classes
    )
