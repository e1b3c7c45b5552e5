"""VICReg on image chips (seed 002, SpaceNet-7 patches): two views of each chip (two augmentations, or with
``positives="temporal"`` the same place on two dates, each augmented), an expander (the projector), and
invariance + variance + covariance terms (Bardes, Ponce & LeCun, 2022).

Under DDP the embeddings of every rank are gathered (with gradients) before the variance and covariance
terms, as in the reference implementation, so both see the global batch; the invariance term is per rank.
"""

from __future__ import annotations

import math

import torch
from torch.nn import functional as F

from geoarray.errors import TrainError
from geoarray.tasks._gather import gather_rows
from geoarray.tasks._ssl import SSLTask

__all__ = ["VICRegTask", "vicreg_loss"]


def _off_diagonal(c: torch.Tensor) -> torch.Tensor:
    d = c.shape[0]
    return c.flatten()[:-1].view(d - 1, d + 1)[:, 1:].flatten()


def variance_term(z: torch.Tensor, eps: float = 1e-4, target: float = 1.0) -> torch.Tensor:
    """``mean_j relu(target - sqrt(var_j + eps))``: the hinge on each dimension's std over the batch (unbiased
    variance, as the reference code's ``torch.var``); 0 when every std is at least ``target``."""
    std = torch.sqrt(z.var(0) + eps)
    return F.relu(target - std).mean()


def covariance_term(z: torch.Tensor) -> torch.Tensor:
    """``sum_{i≠j} C_ij² / D`` of the batch covariance ``C = (z - mean)ᵀ (z - mean) / (n - 1)``."""
    n, d = z.shape
    zc = z - z.mean(0)
    c = zc.T @ zc / (n - 1)
    return _off_diagonal(c).pow(2).sum() / d


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_coeff: float = 25.0,
    std_coeff: float = 25.0,
    cov_coeff: float = 1.0,
    *,
    gather: bool = False,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """VICReg's loss of two batches of projections ``(n, D)`` (row i of each: two views of one sample).

    ``sim_coeff · mse(z1, z2) + std_coeff · (v(z1) + v(z2)) / 2 + cov_coeff · (c(z1) + c(z2))`` with ``v``
    :func:`variance_term` (eps 1e-4, target std 1) and ``c`` :func:`covariance_term`. ``gather``: under DDP,
    ``v`` and ``c`` are taken over every rank's rows (:func:`geoarray.tasks._gather.gather_rows`); the
    invariance term stays per rank (every rank must then call this, a collective).

    Returns the loss and its terms before the weights: ``vic_invariance``, ``vic_variance``, ``vic_covariance``.
    """
    inv = F.mse_loss(z1, z2, reduction="sum") / max(1, z1.numel())  # 0 for a rank with no rows
    if gather:
        z1, z2 = gather_rows(z1), gather_rows(z2)
    if len(z1) < 2:  # no batch statistics of one row
        zero = (z1.sum() + z2.sum()) * 0.0
        var = cov = zero
    else:
        var = (variance_term(z1) + variance_term(z2)) / 2
        cov = covariance_term(z1) + covariance_term(z2)
    loss = sim_coeff * inv + std_coeff * var + cov_coeff * cov
    return loss, {"vic_invariance": inv, "vic_variance": var, "vic_covariance": cov}


def _weight(name: str, v: object) -> float:
    if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v) or v < 0:
        raise TrainError(
            f"task_kwargs {name}={v!r}; expected a finite weight >= 0 (VICReg's defaults are sim_coeff=25, "
            "std_coeff=25, cov_coeff=1)."
        )
    return float(v)


class VICRegTask(SSLTask):
    name = "vicreg"
    terms = ("vic_invariance", "vic_variance", "vic_covariance")
    kinds = ("chip",)
    gathers = True
    default_projector = (512, 3)  # the expander: 3 layers, as in VICReg (8192 wide there, on ImageNet)

    def __init__(
        self,
        loss: str | None = None,
        multilabel: bool = False,
        *,
        sim_coeff: float = 25.0,
        std_coeff: float = 25.0,
        cov_coeff: float = 1.0,
        **kw: object,
    ) -> None:
        self.sim_coeff = _weight("sim_coeff", sim_coeff)
        self.std_coeff = _weight("std_coeff", std_coeff)
        self.cov_coeff = _weight("cov_coeff", cov_coeff)
        if self.std_coeff == 0 and self.cov_coeff == 0:
            raise TrainError(
                "task_kwargs std_coeff=0 and cov_coeff=0 leave only the invariance term, which a constant "
                "embedding minimises (collapse); expected std_coeff > 0 or cov_coeff > 0 (defaults 25 and 1)."
            )
        super().__init__(loss, multilabel, **kw)  # type: ignore[arg-type]

    def objective(
        self, p1: torch.Tensor, p2: torch.Tensor, *, gather: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        return vicreg_loss(p1, p2, self.sim_coeff, self.std_coeff, self.cov_coeff, gather=gather)
