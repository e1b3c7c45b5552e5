"""Barlow Twins on pixel time series (seed 001, BTFM): two views of a pixel's valid dates, a projector, and
the cross-correlation of the two views' projections pushed towards the identity."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
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
        self, loss: str | None = None, multilabel: bool = False, *, lambd: float | None = None, **kw: object
    ):
        super().__init__(loss, multilabel, **kw)  # type: ignore[arg-type]
        # The off-diagonal sum has D(D-1) terms against D on the diagonal, so its weight scales as 1/D:
        # 10 / D is the balance of the usual settings (5e-3 at D=2048 on CIFAR); the paper's 5e-3 was for
        # D=8192, and at D=128 it leaves the features correlated (effective rank ~12 of 32 on the phenology
        # cube, against ~20 at 10 / D).
        if lambd is None:
            lambd = 10.0 / self.projector_dim
        if (
            not isinstance(lambd, (int, float))
            or isinstance(lambd, bool)
            or not math.isfinite(lambd)
            or lambd < 0
        ):
            raise TrainError(
                f"task_kwargs lambd={lambd!r}; expected a finite weight >= 0 (e.g. 10 / projector_dim)."
            )
        self.lambd = float(lambd)

    def diagnostics(self, net: Any) -> dict[str, float]:
        """C of the watch rows' two views at the end of the epoch: its diagonal mean (1 is the goal) and
        off-diagonal rms (0 is the goal), logged; the matrix is kept for :meth:`log_epoch`."""
        pair = self._watch_projections(net)
        if pair is None:
            self.last_c = None
            return {}
        c = cross_correlation(*pair).double().numpy()
        self.last_c = c.astype(np.float32)
        off = c[~np.eye(len(c), dtype=bool)]
        return {"bt_c_diag_mean": float(np.diag(c).mean()), "bt_c_off_rms": float(np.sqrt((off**2).mean()))}

    def log_epoch(self, log_dir: Path, epoch: int) -> None:
        """``cross_correlation_epochNNN.npy`` for every epoch (64 KB at projector_dim=128: any epoch can be
        drawn again or compared), and one ``cross_correlation.png`` redrawn with the latest epoch (a picture
        per epoch would cost ~0.3 s each and fill the folder; ``geoarray.plot.cross_correlation(log_dir,
        epoch=N)`` draws any other)."""
        c = getattr(self, "last_c", None)
        if c is None:
            return
        from geoarray.plot import cross_correlation as draw

        np.save(log_dir / f"cross_correlation_epoch{epoch:03d}.npy", c, allow_pickle=False)
        draw(c, log_dir / "cross_correlation.png", epoch=epoch)

    def objective(
        self, p1: torch.Tensor, p2: torch.Tensor, *, gather: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        loss, on, off = barlow_twins_loss(p1, p2, self.lambd)
        return loss, {"bt_on_diag": on, "bt_off_diag": off}
