"""The base class of geoarray models, and the receptive-field measurement."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

import torch
from torch import nn

InputKind = Literal["image", "sequence", "pixels", "chip"]


class GeoModel(nn.Module):
    """A model that knows how it consumes a cube.

    Attributes
    ----------
    input_kind
        ``"image"``: ``(B, C, H, W)`` per date; ``"sequence"``: ``(B, T, C, H, W)`` plus dates, output per
        frame; ``"pixels"``: ``(B, T, C)`` plus dates and validity, one output per pixel series;
        ``"chip"``: ``(B, C, H, W)`` to one vector per chip.
    stride
        Input sizes must be multiples of it (the total down-sampling factor).
    out_channels
        Channels (classes or features) of the output.
    """

    input_kind: ClassVar[InputKind] = "image"
    name: str = ""
    hparams: dict[str, Any]
    stride: int = 1
    out_channels: int = 1

    def receptive_field(self) -> int:
        """Radius in input pixels of the region that influences one output pixel (cached per instance)."""
        cached = self.__dict__.get("_rf")
        if cached is None:
            cached = receptive_field(self)
            self.__dict__["_rf"] = cached
        return int(cached)

    def halo(self) -> int:
        """The receptive-field radius rounded up to the stride: what blockwise predict must read around a block."""
        rf = self.receptive_field()
        return int(math.ceil(rf / self.stride) * self.stride) if rf else 0


# Linear + BatchNorm1d is left alone: on 3-D input BatchNorm1d normalises axis 1, not the Linear's features.
_FUSABLE = (
    (nn.Conv1d, nn.BatchNorm1d),
    (nn.Conv2d, nn.BatchNorm2d),
)


def fuse_batchnorm(model: nn.Module) -> int:
    """Fold every eval-mode BatchNorm into the convolution or linear layer just before it, in place.

    Only pairs that follow each other inside a plain ``nn.Sequential`` (not a subclass, which may override
    ``forward``) are folded: there the data flow is certain;
    the BatchNorm becomes an ``nn.Identity``. The outputs are the same up to float rounding (~1e-7), and
    inference skips one full pass over every feature map. Returns the number of pairs folded.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    if model.training:
        raise ValueError(
            "fuse_batchnorm got a model in training mode; expected eval mode (folding uses BatchNorm's running "
            "statistics). Call `model.eval()` first."
        )
    folded = 0
    for seq in [m for m in model.modules() if type(m) is nn.Sequential]:
        for i in range(len(seq) - 1):
            layer, bn = seq[i], seq[i + 1]
            pair = next((p for p in _FUSABLE if type(layer) is p[0] and type(bn) is p[1]), None)
            if pair is None or not isinstance(bn, nn.modules.batchnorm._BatchNorm):
                continue
            if not bn.track_running_stats or bn.running_mean is None:
                continue
            if isinstance(layer, (nn.Conv1d, nn.Conv2d)):
                seq[i] = fuse_conv_bn_eval(layer, bn)
            seq[i + 1] = nn.Identity()
            folded += 1
    return folded


def _example_input(
    model: GeoModel, n: int, h: int, w: int, gen: torch.Generator
) -> tuple[torch.Tensor, dict[str, Any]]:
    c = int(model.hparams.get("in_channels", 1))
    if model.input_kind == "sequence":
        x = torch.randn(n, 3, c, h, w, generator=gen)
        return x, {"dates": torch.tensor([[10.0, 40.0, 70.0]] * n)}
    return torch.randn(n, c, h, w, generator=gen), {}


def _radius(c0: int, lo: int, hi: int, s: int) -> int:
    return max(c0 - lo, hi - (c0 + s - 1), 0)


def _footprint(model: GeoModel, length: int, axis: int, gen: torch.Generator) -> tuple[int, int, int]:
    """``(c0, lo, hi)`` along ``axis`` (0: y, 1: x) on a strip ``length`` long and a few strides wide.

    The gradient of a ``stride x stride`` block of outputs at ``c0`` (on both axes) w.r.t. two random inputs
    (one batch: dead ReLUs can't hide the footprint of both); ``lo``/``hi`` bound its non-zero input pixels.
    """
    s = model.stride
    across = max(s, 16)
    h, w = (length, across) if axis == 0 else (across, length)
    x, extra = _example_input(model, 2, h, w, gen)
    p = next(model.parameters(), None)  # the probe runs where the model is (a CUDA model saved after fit)
    if p is not None:
        x = x.to(p.device, p.dtype)
        extra = {k: v.to(p.device) for k, v in extra.items()}
    x.requires_grad_(True)
    out = model(x, **extra)
    cy, cx = (h // 2) // s * s, (w // 2) // s * s
    out[..., cy : cy + s, cx : cx + s].abs().sum().backward()
    g = x.grad
    assert g is not None
    hit = (g.abs().reshape(-1, h, w).amax(0) > 0).any(dim=1 - axis)
    idx = torch.nonzero(hit).flatten()
    return (cy, cx)[axis], int(idx.min()), int(idx.max())


def receptive_field(model: GeoModel, *, max_size: int = 2048) -> int:
    """Measure the receptive-field radius from the gradient footprint of one stride-cell of outputs.

    A ``stride x stride`` block of output pixels in the middle of a long random input covers every phase of
    the down-sampling grid; the extent of the input pixels with a non-zero gradient, minus that block, is the
    radius. Each axis is measured on a strip that is long on that axis and only ``max(stride, 16)`` pixels
    across (the footprint's extent along one axis does not need the other axis' room: a path can take the
    kernels' centre column), which costs a fraction of a square input as large: 5-20x less on the UNets and
    Res-UNets (``tests/models/test_receptive_field.py`` pins every registered architecture to the values of
    the square measurement). The strip grows until the footprint no longer touches its ends. Parameters are
    frozen during the probe (only the input's gradient is needed), and it runs on one torch thread (its tensors
    are small: on 2 loaded cores two threads took 10-20x the CPU time of one, waiting on each other; the count is
    per thread under OpenMP and is given back afterwards). Pixel-wise models (``input_kind ==
    "pixels"``) return 0; chip models have no per-pixel receptive field and return 0.
    """
    if model.input_kind in ("pixels", "chip"):
        return 0
    was_training = model.training
    grads = [p.requires_grad for p in model.parameters()]
    threads = torch.get_num_threads()
    model.eval()
    try:
        torch.set_num_threads(1)
        model.requires_grad_(False)
        s = model.stride
        size = max(64, 8 * s)
        gen = torch.Generator().manual_seed(0)
        while size <= max_size:
            ends = [_footprint(model, size, axis, gen) for axis in (0, 1)]
            if all(lo > 0 and hi < size - 1 for _, lo, hi in ends):
                return max(_radius(c0, lo, hi, s) for c0, lo, hi in ends)
            size *= 2
        raise RuntimeError(f"receptive field of {model.name!r} exceeds {max_size} px")
    finally:
        for p, g in zip(model.parameters(), grads, strict=True):
            p.requires_grad_(g)
        model.train(was_training)
        torch.set_num_threads(threads)


def pad_to_stride(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, int, int]:
    """Zero-pad the last two dims at the bottom/right to multiples of ``stride``; returns the original H, W."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        x = nn.functional.pad(x, (0, pw, 0, ph))
    return x, h, w


def sinusoidal_encoding(days: torch.Tensor, dim: int, *, period: float = 365.25) -> torch.Tensor:
    """Sinusoidal encoding of dates given in days, shape ``(..., dim)``.

    Frequencies are geometric from one cycle per ``period`` up to ``dim / 2`` cycles per period, so day of
    year (``period=365.25``) and days since an epoch (longer period) both encode smoothly.
    """
    if dim % 2:
        raise ValueError(f"encoding dim={dim} must be even")
    k = torch.arange(dim // 2, dtype=torch.float32, device=days.device)
    freqs = 2 * math.pi * (2.0**k) / period
    angles = days.to(torch.float32)[..., None] * freqs
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=-1)
