"""The pieces around a self-supervised task: the backbone + projector module that trains (and that DDP wraps),
the projector, and the kNN probe that scores validation embeddings when the cube has labels."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

__all__ = ["TwinNet", "knn_probe", "projector"]


class TwinNet(nn.Module):
    """The backbone and the projector, as one module (what trains, and what DDP wraps)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``inputs`` as the backbone takes them: ``(x, dates, valid)`` for pixel series, ``(x,)`` for chips."""
        e = self.backbone(*inputs)
        return e, self.projector(e)


def projector(dim_in: int, dim: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = dim_in
    for _ in range(depth - 1):
        layers += [nn.Linear(c, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
        c = dim
    layers.append(nn.Linear(c, dim))
    return nn.Sequential(*layers)


def knn_probe(emb: Any, y: Any, n_classes: int) -> float:
    """kNN top-1 between the two halves of the validation pixels (they come chip by chip, so the halves are
    different chips of the held-out tiles), averaged over both directions; NaN when a half has no label."""
    import numpy as np

    from geoarray._probe_fit import knn_scores, standardize
    from geoarray.metrics import topk_accuracy

    ok = (y >= 0) & (y < n_classes)
    emb, y = emb[ok], y[ok]
    h = len(y) // 2
    if h < 1:
        return math.nan
    accs = []
    for a, b in ((slice(0, h), slice(h, None)), (slice(h, None), slice(0, h))):
        tr, te = standardize(emb[a], emb[b])
        accs.append(topk_accuracy(knn_scores(tr, y[a], te, n_classes), y[b]))
    return float(np.mean(accs))
