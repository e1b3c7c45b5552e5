"""Augmentations of image chips for self-supervised views, valid for any number of bands.

Every op is a torch op on the whole batch ``(B, C, H, W)`` with per-chip (and per-band) random parameters
drawn from one ``torch.Generator``, so a seeded generator gives the same views. There are no RGB-only colour
ops (hue, saturation, grey-scale): brightness and contrast are jittered per band, which means the same for
2 bands or 13. Inputs are normalised (mean 0, std 1 per band), so the strengths are in those units.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch.nn import functional as F

from geoarray.errors import TrainError

__all__ = ["ChipAugment"]


def _rand(
    shape: tuple[int, ...], gen: torch.Generator | None, lo: float = 0.0, hi: float = 1.0
) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=gen)


@dataclass(frozen=True)
class ChipAugment:
    """One random view of each chip of a batch (see :meth:`__call__` for the order of the ops).

    Parameters
    ----------
    crop_scale
        Area fraction of the random crop, drawn uniformly in this range (aspect ratio log-uniform in 3/4..4/3);
        the crop is resized back to the chip size (bilinear). ``(1, 1)``: no crop.
    flip, rotate
        Random horizontal / vertical flips, and rotations by a multiple of 90° (square chips).
    brightness
        Per-band additive shift, uniform in ``±brightness`` (normalised units).
    contrast
        Per-band factor, uniform in ``1 ± contrast``, around each band's chip mean.
    jitter_p
        Probability that a chip gets the brightness / contrast jitter.
    blur_p, blur_sigma
        Probability of a Gaussian blur, and the range of its sigma in pixels.
    noise
        Std of additive Gaussian noise (normalised units).
    """

    crop_scale: tuple[float, float] = (0.35, 1.0)
    flip: bool = True
    rotate: bool = True
    brightness: float = 0.4
    contrast: float = 0.4
    jitter_p: float = 0.8
    blur_p: float = 0.5
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    noise: float = 0.05

    def __post_init__(self) -> None:
        lo, hi = (float(v) for v in _pair("crop_scale", self.crop_scale))
        if not 0 < lo <= hi <= 1:
            raise TrainError(
                f"task_kwargs crop_scale={self.crop_scale!r}; expected (low, high) area fractions with "
                "0 < low <= high <= 1, e.g. (0.35, 1.0)."
            )
        s0, s1 = (float(v) for v in _pair("blur_sigma", self.blur_sigma))
        if not 0 < s0 <= s1 <= 10:
            raise TrainError(
                f"task_kwargs blur_sigma={self.blur_sigma!r}; expected (low, high) sigmas in pixels with "
                "0 < low <= high <= 10, e.g. (0.1, 2.0)."
            )
        for name in ("brightness", "contrast", "noise"):
            v = getattr(self, name)
            if not _real(v) or v < 0:
                raise TrainError(f"task_kwargs {name}={v!r}; expected a finite number >= 0.")
        if self.contrast >= 1:
            raise TrainError(
                f"task_kwargs contrast={self.contrast!r}; expected a number in [0, 1) (the factor is 1 ± contrast)."
            )
        for name in ("jitter_p", "blur_p"):
            v = getattr(self, name)
            if not _real(v) or not 0 <= v <= 1:
                raise TrainError(f"task_kwargs {name}={v!r}; expected a probability between 0 and 1.")

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """A view of every chip of ``x (B, C, H, W)``: crop + resize, flips, 90° rotations, per-band brightness
        and contrast, blur, noise (in that order). Returns a new tensor; ``x`` is left alone."""
        if x.ndim != 4:
            raise ValueError(f"expected chips (B, C, H, W), got shape {tuple(x.shape)}")
        if len(x) == 0:  # every chip of the batch was skipped (temporal positives)
            return x.clone()
        g = generator
        x = random_resized_crop(x, self.crop_scale, g)
        x = flip_rotate(x, g, flip=self.flip, rotate=self.rotate and x.shape[-1] == x.shape[-2])
        x = jitter(x, self.brightness, self.contrast, self.jitter_p, g)
        if self.blur_p > 0:
            x = gaussian_blur(x, self.blur_sigma, self.blur_p, g)
        if self.noise > 0:
            x = x + self.noise * torch.randn(x.shape, generator=g).to(x.device, x.dtype)
        return x


def _pair(name: str, v: Any) -> tuple[float, float]:
    if isinstance(v, (str, bytes)) or not hasattr(v, "__len__") or len(v) != 2 or not all(map(_real, v)):
        raise TrainError(f"task_kwargs {name}={v!r}; expected a pair of numbers (low, high).")
    return float(v[0]), float(v[1])


def _real(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def random_resized_crop(
    x: torch.Tensor, scale: tuple[float, float], gen: torch.Generator | None
) -> torch.Tensor:
    """A random crop of each chip (area fraction in ``scale``, aspect ratio in 3/4..4/3) resized back to
    ``(H, W)``: one ``grid_sample`` over the batch, with a per-chip affine grid."""
    lo, hi = float(scale[0]), float(scale[1])
    if lo == hi == 1.0:
        return x
    b = x.shape[0]
    area = _rand((b,), gen, lo, hi)
    logr = _rand((b,), gen, math.log(3 / 4), math.log(4 / 3))
    ratio = torch.exp(logr)
    sw = torch.sqrt(area * ratio).clamp(max=1.0)  # crop width / chip width
    sh = torch.sqrt(area / ratio).clamp(max=1.0)
    # the crop's centre, anywhere that keeps the crop inside the chip (normalised coords in [-1, 1])
    cx = (1 - sw) * _rand((b,), gen, -1.0, 1.0)
    cy = (1 - sh) * _rand((b,), gen, -1.0, 1.0)
    theta = torch.zeros(b, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2] = sw, cx
    theta[:, 1, 1], theta[:, 1, 2] = sh, cy
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def flip_rotate(x: torch.Tensor, gen: torch.Generator | None, *, flip: bool, rotate: bool) -> torch.Tensor:
    """Per chip: a horizontal and a vertical flip with probability 1/2 each, and a rotation by k·90°."""
    b = x.shape[0]
    out = x.clone()
    if flip:
        for dim, mask in (
            (-1, torch.rand((b,), generator=gen) < 0.5),
            (-2, torch.rand((b,), generator=gen) < 0.5),
        ):
            idx = mask.nonzero().flatten().to(x.device)
            if len(idx):
                out[idx] = out[idx].flip(dim)
    if rotate:
        k = torch.randint(0, 4, (b,), generator=gen)
        for r in (1, 2, 3):
            idx = (k == r).nonzero().flatten().to(x.device)
            if len(idx):
                out[idx] = torch.rot90(out[idx], r, dims=(-2, -1))
    return out


def jitter(
    x: torch.Tensor, brightness: float, contrast: float, p: float, gen: torch.Generator | None
) -> torch.Tensor:
    """Per chip (with probability ``p``) and per band: ``(x - m) * c + m + s``, where ``m`` is the band's chip
    mean, ``c`` uniform in ``1 ± contrast`` and ``s`` uniform in ``± brightness``."""
    b, c = x.shape[:2]
    on = (torch.rand((b, 1, 1, 1), generator=gen) < p).to(x.dtype)
    fac = 1 + on * _rand((b, c, 1, 1), gen, -contrast, contrast)
    shift = on * _rand((b, c, 1, 1), gen, -brightness, brightness)
    fac, shift = fac.to(x.device, x.dtype), shift.to(x.device, x.dtype)
    m = x.mean((-2, -1), keepdim=True)
    return (x - m) * fac + m + shift


def gaussian_kernels(sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """``(n, 2 radius + 1)`` normalised 1-D Gaussian kernels, one per sigma."""
    t = torch.arange(-radius, radius + 1, dtype=sigma.dtype)
    k = torch.exp(-0.5 * (t[None, :] / sigma[:, None]) ** 2)
    return k / k.sum(1, keepdim=True)


def gaussian_blur(
    x: torch.Tensor, sigma_range: tuple[float, float], p: float, gen: torch.Generator | None
) -> torch.Tensor:
    """A separable Gaussian blur of each chip with probability ``p`` (sigma uniform in ``sigma_range``, the
    same for every band of a chip); the edges are replicated. Chips that are not blurred come back unchanged."""
    b, c, h, w = x.shape
    on = torch.rand((b,), generator=gen) < p
    sigma = _rand((b,), gen, float(sigma_range[0]), float(sigma_range[1]))
    if not bool(on.any()):
        return x
    radius = max(1, math.ceil(3 * float(sigma_range[1])))
    k = gaussian_kernels(sigma, radius)  # (b, K)
    delta = torch.zeros_like(k)
    delta[:, radius] = 1.0
    k = torch.where(on[:, None], k, delta)  # the identity kernel for chips left sharp
    k = k.repeat_interleave(c, 0).to(x.device, x.dtype)  # one kernel per (chip, band) channel
    z = x.reshape(1, b * c, h, w)
    z = F.pad(z, (radius, radius, 0, 0), mode="replicate")
    z = F.conv2d(z, k[:, None, None, :], groups=b * c)
    z = F.pad(z, (0, 0, radius, radius), mode="replicate")
    z = F.conv2d(z, k[:, None, :, None], groups=b * c)
    return z.reshape(b, c, h, w)
