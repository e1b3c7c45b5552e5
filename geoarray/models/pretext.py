"""The multi-head pretext model of seed 000 (WATCH invariants): a UNet backbone with per-pixel features and
per-pixel task heads, trained by ``task="invariants"`` and applied by predict like any sequence model.

The model reads a series ``(B, T, C, H, W)`` and returns, per frame, its output *parts* stacked along the
channel axis (:meth:`PretextUNet.parts` gives the layout the checkpoint records):

- ``features`` (``feature_dim``): the backbone's per-pixel features;
- ``features_<head>`` (``head_dim`` each): each head's own per-pixel features;
- ``features_pca`` (``pca_dim``, optional): the backbone features projected on principal components fitted at
  the end of training (buffers, so they travel in the safetensors file as tensors);
- ``arrow_of_time`` (1, with the arrow-of-time head): the logit that the *previous* frame of the series was
  taken before this one, from the two frames' arrow-of-time features; NaN for the first frame.

Everything after the backbone is per pixel (1x1 convolutions), so the receptive field is the backbone's and
blockwise predict stays seamless. Dates are not read: the heads must not learn the order from them.
"""

from __future__ import annotations

import torch
from torch import nn

from geoarray.models._registry import register_model
from geoarray.models.base import GeoModel
from geoarray.models.unet import UNet

#: the pretext heads, in the order their features are laid out
HEADS = ("arrow_of_time", "temporal_association", "augmentation_association")


def parse_heads(heads: str) -> list[str]:
    names = [h.strip() for h in str(heads).split(",") if h.strip()]
    bad = [h for h in names if h not in HEADS]
    if bad or not names or len(set(names)) != len(names):
        raise ValueError(
            f"heads={heads!r}; expected distinct names among {list(HEADS)}, comma-separated (at least one)"
        )
    return [h for h in HEADS if h in names]


def _pixel_mlp(cin: int, hidden: int, cout: int) -> nn.Sequential:
    # GELU, not ReLU: a head whose units all die early (large first steps of the other heads) never recovers
    return nn.Sequential(nn.Conv2d(cin, hidden, 1), nn.GELU(), nn.Conv2d(hidden, cout, 1))


class PretextUNet(GeoModel):
    """UNet backbone + pretext heads; input ``(B, T, C, H, W)`` (+ unused ``dates``), output ``(B, T, K, H, W)``."""

    input_kind = "sequence"

    def __init__(
        self,
        in_channels: int,
        feature_dim: int,
        depth: int,
        width: int,
        dropout: float,
        heads: str,
        head_dim: int,
        pca_dim: int,
    ) -> None:
        super().__init__()
        self.heads = parse_heads(heads)
        if pca_dim > feature_dim:
            raise ValueError(f"pca_dim={pca_dim}; expected 0..feature_dim={feature_dim}")
        self.feature_dim, self.head_dim, self.pca_dim = feature_dim, head_dim, pca_dim
        self.backbone = UNet(in_channels, feature_dim, depth, width, dropout)
        self.stride = self.backbone.stride
        self.task_heads = nn.ModuleDict(
            {h: _pixel_mlp(feature_dim, feature_dim, head_dim) for h in self.heads}
        )
        self.order = _pixel_mlp(2 * head_dim, 2 * head_dim, 1) if "arrow_of_time" in self.heads else None
        if pca_dim:
            self.register_buffer("pca_mean", torch.zeros(feature_dim))
            self.register_buffer("pca_components", torch.eye(feature_dim)[:pca_dim].clone())
        self.out_channels = sum(c for _, c, _, _ in self.parts())

    def parts(self) -> list[tuple[str, int, str | None, str | None]]:
        """The output layout: ``(variable, channels, dim or None, activation or None)`` in channel order."""
        out: list[tuple[str, int, str | None, str | None]] = [("features", self.feature_dim, "feature", None)]
        out += [(f"features_{h}", self.head_dim, f"feature_{h}", None) for h in self.heads]
        if self.pca_dim:
            out.append(("features_pca", self.pca_dim, "feature_pca", None))
        if self.order is not None:
            out.append(("arrow_of_time", 1, None, "sigmoid"))
        return out

    # -- pieces the training task uses ---------------------------------------------------------------
    def frame_features(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x (N, C, H, W)`` -> ``{"features": (N, D, H, W), "<head>": (N, head_dim, H, W), ...}``."""
        f = self.backbone(x)
        out = {"features": f}
        for h, m in self.task_heads.items():
            out[h] = m(f)
        return out

    def order_logit(self, first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
        """Per-pixel logit ``(N, 1, H, W)`` that ``first`` was taken before ``second`` (arrow-of-time features).

        Antisymmetric by construction, ``g(a, b) - g(b, a)``: swapping the dates flips the probability
        (``p`` becomes ``1 - p``), and a pixel that looks the same on both dates gets exactly 0.5.
        """
        assert self.order is not None
        return self.order(torch.cat([first, second], 1)) - self.order(torch.cat([second, first], 1))

    def project(self, f: torch.Tensor) -> torch.Tensor:
        """Backbone features ``(N, D, H, W)`` -> their principal components ``(N, pca_dim, H, W)``."""
        mean, comps = self.get_buffer("pca_mean"), self.get_buffer("pca_components")
        return torch.einsum("kd,ndhw->nkhw", comps, f - mean[None, :, None, None])

    # -- what predict runs ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, dates: torch.Tensor | None = None) -> torch.Tensor:
        b, t = x.shape[:2]
        frames = self.frame_features(x.reshape(b * t, *x.shape[2:]))
        chans = [frames["features"], *(frames[h] for h in self.heads)]
        if self.pca_dim:
            chans.append(self.project(frames["features"]))
        if self.order is not None:
            aot = frames["arrow_of_time"].reshape(b, t, *frames["arrow_of_time"].shape[1:])
            first = torch.full_like(aot[:, :1, :1], float("nan"))  # no previous frame
            if t > 1:
                prev, cur = aot[:, :-1].flatten(0, 1), aot[:, 1:].flatten(0, 1)
                rest = self.order_logit(prev, cur).reshape(b, t - 1, 1, *aot.shape[-2:])
                first = torch.cat([first, rest], dim=1)
            chans.append(first.reshape(b * t, 1, *aot.shape[-2:]))
        out = torch.cat(chans, dim=1)
        return out.reshape(b, t, *out.shape[1:])


@register_model
def pretext_unet(
    in_channels: int = 3,
    feature_dim: int = 64,
    depth: int = 4,
    width: int = 16,
    dropout: float = 0.0,
    heads: str = "arrow_of_time,temporal_association,augmentation_association",
    head_dim: int = 8,
    pca_dim: int = 0,
) -> PretextUNet:
    """Seed 000's multi-head pretext model: a ``depth``-level UNet with ``feature_dim`` per-pixel features and
    ``head_dim`` features per head (``heads``: comma-separated, among arrow_of_time, temporal_association,
    augmentation_association); ``pca_dim`` > 0 adds PCA-compressed features. Built by ``task="invariants"``."""
    return PretextUNet(in_channels, feature_dim, depth, width, dropout, heads, head_dim, pca_dim)
