"""The pieces of seed 000's pretext objectives that need no model: the per-pixel triplet loss, the date pairs,
the photometric view and the "another place" shift, and the PCA fitted on features at the end of an epoch."""

from __future__ import annotations

import torch


def triplet_loss(
    anchor: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, margin: float = 1.0
) -> torch.Tensor:
    """Per-pixel triplet loss ``mean over pixels of max(0, ‖a − p‖ − ‖a − n‖ + margin)``.

    ``anchor``, ``positive`` and ``negative`` are ``(N, D, H, W)`` feature maps; distances are Euclidean over
    ``D`` at each pixel (as ``torch.nn.TripletMarginLoss`` with ``p=2``, without its ``eps``).
    """
    dp = torch.linalg.vector_norm(anchor - positive, dim=1)
    dn = torch.linalg.vector_norm(anchor - negative, dim=1)
    return torch.relu(dp - dn + margin).mean()


def another_place(f: torch.Tensor, shift: float = 0.5) -> torch.Tensor:
    """``f (N, D, H, W)`` shifted cyclically by ``shift`` of its height and width: each pixel's negative is a
    place of the same date at least ``shift * min(H, W)`` pixels away (their footprints never overlap)."""
    h, w = f.shape[-2:]
    return torch.roll(f, shifts=(max(1, round(h * shift)), max(1, round(w * shift))), dims=(-2, -1))


def date_order(b: int, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """``(b, t)``: a random permutation of the ``t`` date indices for each of ``b`` chips."""
    return torch.rand(b, t, generator=generator).argsort(1)


def photometric(
    x: torch.Tensor, jitter: float, noise: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``x (N, C, H, W)`` with a random per-band gain ``N(1, jitter)`` and offset ``N(0, jitter)`` per chip, plus
    per-pixel noise of std ``noise`` (normalised units); geometry is untouched, so pixels stay aligned."""
    n, c = x.shape[:2]
    gain = 1 + jitter * torch.randn(n, c, 1, 1, generator=generator)
    bias = jitter * torch.randn(n, c, 1, 1, generator=generator)
    eps = noise * torch.randn(x.shape, generator=generator)
    return x * gain.to(x) + bias.to(x) + eps.to(x)


def fit_pca(z: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean ``(D,)`` and the first ``k`` principal axes ``(k, D)`` of rows ``z (n, D)``, each axis signed so
    that its largest entry is positive (the same data gives the same axes)."""
    z = z.double()
    mean = z.mean(0)
    _, _, vh = torch.linalg.svd(z - mean, full_matrices=False)
    axes = vh[:k]
    big = axes.abs().argmax(1)
    axes = axes * torch.sign(axes[torch.arange(len(axes)), big])[:, None]
    return mean.float(), axes.float()
