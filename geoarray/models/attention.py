"""Attention UNet (seed 000): a per-frame UNet whose first encoder levels mix frames by temporal attention."""

from __future__ import annotations

import math

import torch
from torch import nn

from geoarray.models._registry import register_model
from geoarray.models.base import GeoModel, pad_to_stride, sinusoidal_encoding
from geoarray.models.unet import Decoder, conv_block


class TemporalAttention(nn.Module):
    """Per-pixel self-attention across frames; queries, keys and values are 1x1 convolutions."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.scale = 1.0 / math.sqrt(channels)

    def forward(self, x: torch.Tensor, b: int, t: int) -> torch.Tensor:
        _, c, h, w = x.shape
        q, k, v = (f(x).reshape(b, t, c, h * w) for f in (self.q, self.k, self.v))
        scores = torch.einsum("btcp,bscp->bpts", q, k) * self.scale  # (b, pixels, t, t)
        out = torch.einsum("bpts,bscp->btcp", scores.softmax(-1), v)
        return x + out.reshape(b * t, c, h, w)


class AttentionUNet(GeoModel):
    """Input ``(B, T, C, H, W)`` plus ``dates`` ``(B, T)`` in days; output logits ``(B, T, K, H, W)``."""

    input_kind = "sequence"

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        depth: int,
        width: int,
        num_attention_layers: int,
        positional_encoding: str,
        date_encoding: str,
        encoding_dim: int,
        dropout: float,
    ) -> None:
        super().__init__()
        if depth < 1:
            raise ValueError(f"depth={depth}; expected an integer >= 1 (levels of the UNet)")
        if not 0 <= num_attention_layers <= min(4, depth):
            raise ValueError(f"num_attention_layers={num_attention_layers}; expected 0..{min(4, depth)}")
        if positional_encoding not in ("none", "add", "concat"):
            raise ValueError(
                f"positional_encoding={positional_encoding!r}; expected 'none', 'add' or 'concat'"
            )
        if date_encoding not in ("doy", "days"):
            raise ValueError(f"date_encoding={date_encoding!r}; expected 'doy' or 'days'")
        self.stride = 2 ** (depth - 1)
        self.out_channels = num_classes
        self.pe, self.pe_dim, self.date_encoding = positional_encoding, encoding_dim, date_encoding
        widths = [width * 2**i for i in range(depth)]
        c = in_channels + (encoding_dim if positional_encoding == "concat" else 0)
        self.encoder = nn.ModuleList()
        for i, w in enumerate(widths):
            self.encoder.append(conv_block(c, w, dropout if i > 0 else 0.0))
            c = w
        self.attn = nn.ModuleList(TemporalAttention(w) for w in widths[:num_attention_layers])
        self.pe_proj = nn.Linear(encoding_dim, widths[0]) if positional_encoding == "add" else None
        self.pool = nn.MaxPool2d(2)
        self.decoder = Decoder([widths[-1]], widths[-2::-1], num_classes)

    def _encode_dates(self, dates: torch.Tensor) -> torch.Tensor:
        period = 365.25 if self.date_encoding == "doy" else 365.25 * 64
        days = torch.remainder(dates, 365.25) if self.date_encoding == "doy" else dates
        return sinusoidal_encoding(days, self.pe_dim, period=period)

    def forward(self, x: torch.Tensor, dates: torch.Tensor | None = None) -> torch.Tensor:
        b, t = x.shape[:2]
        x, h, w = pad_to_stride(x, self.stride)
        hp, wp = x.shape[-2:]
        x = x.reshape(b * t, -1, hp, wp)
        enc = None
        if self.pe != "none":
            if dates is None:
                raise ValueError("this model encodes dates: pass dates=(B, T) days")
            enc = self._encode_dates(dates.to(x.device)).reshape(b * t, self.pe_dim)
            if self.pe == "concat":
                x = torch.cat([x, enc[:, :, None, None].expand(-1, -1, hp, wp)], dim=1)
        skips = []
        for i, block in enumerate(self.encoder):
            if i:
                x = self.pool(x)
            x = block(x)
            if i == 0 and self.pe_proj is not None and enc is not None:
                x = x + self.pe_proj(enc)[:, :, None, None]
            if i < len(self.attn):
                x = self.attn[i](x, b, t)
            skips.append(x)
        out = self.decoder(skips.pop(), skips[::-1])[..., :h, :w]
        return out.reshape(b, t, *out.shape[1:])


@register_model
def attention_unet(
    in_channels: int = 3,
    num_classes: int = 2,
    depth: int = 5,
    width: int = 32,
    num_attention_layers: int = 2,
    positional_encoding: str = "add",
    date_encoding: str = "doy",
    encoding_dim: int = 16,
    dropout: float = 0.2,
) -> AttentionUNet:
    """UNet with temporal attention after the first ``num_attention_layers`` encoder levels (seed 000)."""
    return AttentionUNet(
        in_channels,
        num_classes,
        depth,
        width,
        num_attention_layers,
        positional_encoding,
        date_encoding,
        encoding_dim,
        dropout,
    )
