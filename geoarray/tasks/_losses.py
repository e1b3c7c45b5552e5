"""Losses. Targets use -100 for "ignore" (invalid pixels, label nodata).

Every loss is a mean over the non-ignored targets and is exactly 0 (with zero, finite gradients) for a batch
whose targets are all ignored: torch's ``mean`` over nothing would be NaN and stop training. The means are
written as ``sum / count`` with the count guarded, so there is no host sync on the GPU.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

from geoarray._constants import IGNORE


def _safe_mean(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count``, and 0 where ``count`` is 0 (``total`` is then 0 too: a sum over nothing)."""
    return total / torch.where(count > 0, count, torch.ones_like(count))


def cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None
) -> torch.Tensor:
    """Softmax cross-entropy, weighted like torch's: ``sum(w[y] * ce) / sum(w[y])`` over non-ignored targets."""
    total = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE, reduction="sum")
    keep = target != IGNORE
    if weight is None:
        count = keep.sum().to(logits.dtype)
    else:
        count = (weight.to(logits.dtype)[target.clamp_min(0)] * keep).sum()
    return _safe_mean(total, count)


def focal(
    logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None, gamma: float = 2.0
) -> torch.Tensor:
    """Multi-class focal loss (Lin et al.), mean over non-ignored samples (seed 001's Focal Loss option)."""
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE, reduction="none")
    keep = target != IGNORE
    pt = torch.exp(-ce)  # ignored targets have ce = 0, so (1 - pt) = 0: they add nothing
    return _safe_mean(((1 - pt) ** gamma * ce).sum(), keep.sum().to(logits.dtype))


def bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE-with-logits over independent classes; ``target`` holds 0/1 or -100 per class and pixel."""
    keep = target != IGNORE
    per = F.binary_cross_entropy_with_logits(logits, target.clamp_min(0).to(logits.dtype), reduction="none")
    return _safe_mean((per * keep).sum(), keep.sum().to(logits.dtype))


def soft_dice(logits: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """1 - soft Dice on sigmoid(logits), per class then averaged (seed 004's BCE + Dice); 0 when all ignored."""
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
