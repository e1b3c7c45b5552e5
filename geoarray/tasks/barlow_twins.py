"""Barlow Twins on pixel time series (seed 001, BTFM): two views of a pixel's valid dates, a projector, and
the cross-correlation of the two views' projections pushed towards the identity."""

from __future__ import annotations

import math

import torch

from geoarray.errors import TrainError
from geoarray.tasks._ssl import SSLTask


def cross_correlation(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """``C (D, D)``: each dimension standardised over the batch (mean 0, population std, ``eps`` added to the
    variance as BatchNorm does), then ``C = z1ᵀ z2 / n``."""
    n = z1.shape[0]
    a = (z1 - z1.mean(0)) / torch.sqrt(z1.var(0, unbiased=False) + eps)
    b = (z2 - z2.mean(0)) / torch.sqrt(z2.var(0, unbiased=False) + eps)
    return a.T @ b / n


def barlow_twins_loss(
    z1: torch.Tensor, z2: torch.Tensor, lambd: float = 5e-3
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``Σᵢ (1 − Cᵢᵢ)² + λ Σ_{i≠j} Cᵢⱼ²`` with its two terms (on-diagonal, off-diagonal before λ)."""
    c = cross_correlation(z1, z2)
    diag = c.diagonal()
    on = (1 - diag).pow(2).sum()
    off = c.pow(2).sum() - diag.pow(2).sum()
    return on + lambd * off, on, off


class BarlowTwinsTask(SSLTask):
    name = "barlow_twins"
    terms = ("bt_on_diag", "bt_off_diag")

    def __init__(
        self, loss: str | None = None, multilabel: bool = False, *, lambd: float = 5e-3, **kw: object
    ):
        if (
            not isinstance(lambd, (int, float))
            or isinstance(lambd, bool)
            or not math.isfinite(lambd)
            or lambd < 0
        ):
            raise TrainError(f"task_kwargs lambd={lambd!r}; expected a finite weight >= 0 (e.g. 5e-3).")
        self.lambd = float(lambd)
        super().__init__(loss, multilabel, **kw)  # type: ignore[arg-type]

    def objective(
        self, p1: torch.Tensor, p2: torch.Tensor, *, gather: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, on, off = barlow_twins_loss(p1, p2, self.lambd)
        return loss, {"bt_on_diag": on, "bt_off_diag": off}
