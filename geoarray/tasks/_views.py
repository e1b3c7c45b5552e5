"""Two views of each sample of an unlabelled batch, per input kind, for the self-supervised tasks.

A view maker returns the model inputs of both views in one tuple (view 1 rows, then view 2 rows: one forward
pass, so BatchNorm sees both) and the number ``n`` of samples kept. Pixel series keep ``k`` of their valid
dates (:func:`pixel_views`); chips are augmented twice (:class:`geoarray.tasks._augment.ChipAugment`), or, for
temporal positives, two different valid dates of the same place are taken and each augmented
(:func:`chip_views`).
"""

from __future__ import annotations

from typing import Any

import torch

from geoarray.chips import Batch
from geoarray.tasks._augment import ChipAugment

__all__ = ["chip_views", "clean_inputs", "pixel_views", "valid_dates"]


def pixel_views(
    x: torch.Tensor,
    dates: torch.Tensor,
    valid: torch.Tensor,
    k: int,
    noise: float,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two views of each pixel series with at least ``k`` valid dates: ``k`` of its valid dates drawn at random
    (kept in time order, with their date features; the other dates are marked invalid, so every pixel backbone
    takes them, fixed-length ones too), plus Gaussian band noise of std ``noise`` (normalised units).

    Returns ``x (2n, T, C)``, ``dates (2n, T)``, ``valid (2n, T)`` (view 1 rows, then view 2 rows) and the
    ``(B,)`` bool mask of the pixels kept.
    """
    keep = valid.sum(1) >= k
    x, dates, valid = x[keep], dates[keep], valid[keep]
    xs, ms = [], []
    for _ in range(2):
        r = torch.rand(valid.shape, generator=generator).to(x.device)
        r = r.masked_fill(~valid, 2.0)  # invalid dates never drawn
        idx = r.topk(k, dim=1, largest=False).indices
        m = torch.zeros_like(valid).scatter_(1, idx, True)
        eps = torch.randn(x.shape, generator=generator).to(x.device) * noise
        xs.append((x + eps) * m[..., None])
        ms.append(m)
    return torch.cat(xs), dates.repeat(2, 1), torch.cat(ms), keep


def valid_dates(batch: Batch, min_valid: float) -> torch.Tensor:
    """``(B, T)`` bool: the dates of each multi-date chip with at least ``min_valid`` of its pixels valid."""
    x = batch.x
    if batch.valid is None:  # no validity from the stream: every date counts
        return torch.ones(x.shape[:2], dtype=torch.bool, device=x.device)
    return batch.valid.to(torch.float32) >= min_valid


def chip_views(
    batch: Batch,
    augment: ChipAugment,
    *,
    temporal: bool,
    min_valid: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[tuple[torch.Tensor], torch.Tensor]:
    """Two augmented views of each chip of ``batch``.

    ``temporal=False``: both views come from the same chip ``(B, C, H, W)`` (a multi-date chip
    ``(B, T, C, H, W)`` uses one valid date, drawn at random, for both). ``temporal=True``: the chips are
    ``(B, T, C, H, W)``; two different dates with at least ``min_valid`` valid pixels are drawn at random per
    chip, and chips with fewer than two such dates are skipped.

    Returns ``((x (2n, C, H, W),), keep (B,) bool)``.
    """
    x = batch.x
    if x.ndim == 5:
        ok = valid_dates(batch, min_valid)
        need = 2 if temporal else 1
        keep = ok.sum(1) >= need
        x, ok = x[keep], ok[keep]
        r = torch.rand(ok.shape, generator=generator).to(x.device).masked_fill(~ok, 2.0)
        idx = r.topk(need, dim=1, largest=False).indices  # random distinct valid dates, in random order
        rows = torch.arange(len(x), device=x.device)
        a = x[rows, idx[:, 0]]
        b = x[rows, idx[:, 1]] if temporal else a
    else:
        keep = torch.ones(len(x), dtype=torch.bool, device=x.device)
        a = b = x
    return (torch.cat([augment(a, generator), augment(b, generator)]),), keep


def clean_inputs(kind: str, batch: Batch) -> tuple[Any, ...]:
    """The un-augmented model inputs of a batch, as predict would feed them: pixel series with their dates and
    validity; chips as they are, or a multi-date chip's best-covered date."""
    if kind == "pixels":
        return (batch.x, batch.dates, batch.valid)
    x = batch.x
    if x.ndim == 5:
        cover = batch.valid.to(torch.float32) if batch.valid is not None else torch.ones(x.shape[:2])
        t = cover.to(x.device).argmax(1)
        x = x[torch.arange(len(x), device=x.device), t]
    return (x,)
