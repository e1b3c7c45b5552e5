"""Losses. Targets use -100 for "ignore" (invalid pixels, label nodata)."""

from __future__ import annotations

import torch
from torch.nn import functional as F

from geoarray._constants import IGNORE


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    return F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE)


def focal(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, gamma: float = 2.0
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al.), mean over non-ignored samples (seed 001's Focal Loss option)."""
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE, reduction="none")
    keep = target != IGNORE
    if not keep.any():
        return logits.sum() * 0
    pt = torch.exp(-ce[keep])
    return ((1 - pt) ** gamma * ce[keep]).mean()


def bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE-with-logits over independent classes; ``target`` holds 0/1 or -100 per class and pixel."""
    keep = target != IGNORE
    if not keep.any():
        return logits.sum() * 0
    return F.binary_cross_entropy_with_logits(logits[keep], target[keep].to(logits.dtype))


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice on sigmoid(logits), per class then averaged (seed 004's BCE + Dice)."""
    keep = (target != IGNORE).to(logits.dtype)
    p = torch.sigmoid(logits) * keep
    t = target.clamp_min(0).to(logits.dtype) * keep
    dims = [d for d in range(p.ndim) if d != 1]
    inter = (p * t).sum(dims)
    denom = p.sum(dims) + t.sum(dims)
    return 1 - ((2 * inter + eps) / (denom + eps)).mean()


def bce_dice(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    return bce(logits, target) + soft_dice(logits, target)


LOSSES = {"ce": cross_entropy, "focal": focal, "bce": bce, "bce_dice": bce_dice}
