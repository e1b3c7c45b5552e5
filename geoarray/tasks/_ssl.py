"""What every self-supervised task shares: views made from an unlabelled batch, a projector trained beside the
model, and the collapse watch (per-dimension std and effective rank of the embeddings, every epoch).

A subclass defines :meth:`SSLTask.objective` (the loss of two projected views, with its named terms). The
model stays the backbone: the checkpoint holds it without the projector, and its output kind is "features".
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch import nn

from geoarray.chips import Batch
from geoarray.errors import TrainError
from geoarray.metrics import effective_rank
from geoarray.tasks.base import Task

#: rows of clean (un-augmented) embeddings the collapse watch keeps from the end of each epoch
WATCH_ROWS = 2048
#: validation pixels whose clean embeddings feed the effective rank and the kNN probe
PROBE_ROWS = 8192


class TwinNet(nn.Module):
    """The backbone and the projector, as one module (what trains, and what DDP wraps)."""

    def __init__(self, backbone: nn.Module, projector: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.projector = projector

    def forward(self, x: torch.Tensor, dates: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        e = self.backbone(x, dates, valid)
        return e, self.projector(e)


def projector(dim_in: int, dim: int, depth: int = 2) -> nn.Sequential:
    layers: list[nn.Module] = []
    c = dim_in
    for _ in range(depth - 1):
        layers += [nn.Linear(c, dim), nn.BatchNorm1d(dim), nn.ReLU(inplace=True)]
        c = dim
    layers.append(nn.Linear(c, dim))
    return nn.Sequential(*layers)


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


class SSLTask(Task):
    """A self-supervised task on pixel time series: unlabelled batches, two views, a projector."""

    reads_label_raster = False
    #: term names of :meth:`objective`, logged per epoch as ``<name>``
    terms: tuple[str, ...] = ()

    def __init__(
        self,
        loss: str | None = None,
        multilabel: bool = False,
        *,
        view_dates: int | None = None,
        noise: float = 0.05,
        projector_dim: int = 128,
        projector_depth: int = 2,
        collapse_rank: float = 1.5,
        collapse_std: float = 1e-4,
        diverge_rms: float = 1e3,
    ) -> None:
        if loss is not None or multilabel:
            raise TrainError(
                f"task {self.name!r} has its own loss; expected loss=None and multilabel=False, got "
                f"loss={loss!r}, multilabel={multilabel}."
            )
        self.loss_name, self.multilabel = self.name, False
        self.classes: list[str] = []
        self.class_weights: list[float] | None = None
        for key, v in (("view_dates", view_dates), ("projector_dim", projector_dim)):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise TrainError(f"task_kwargs {key}={v!r}; expected a positive integer.")
        if not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
            raise TrainError(f"task_kwargs noise={noise!r}; expected a finite std >= 0 (e.g. 0.05).")
        self.view_dates, self.noise = view_dates, float(noise)
        self.projector_dim, self.projector_depth = projector_dim, projector_depth
        self.collapse_rank, self.collapse_std, self.diverge_rms = collapse_rank, collapse_std, diverge_rms
        self._reset()

    def _reset(self) -> None:
        self._sums = {t: 0.0 for t in self.terms}
        self._steps = 0
        self._seen = self._skipped = 0
        self._watch: deque[tuple[torch.Tensor, ...]] = deque()
        self._rows = 0

    # -- set-up --------------------------------------------------------------------------------------
    def check(self, model: Any, n_times: int) -> None:
        if getattr(model, "input_kind", None) != "pixels":
            raise TrainError(
                f"task {self.name!r} trains pixel time-series backbones (pixel_mlp, pixel_cnn, ...)."
            )
        if getattr(model, "out_channels", None) != getattr(model, "feature_dim", None):
            raise TrainError(
                f"task {self.name!r} trains a feature backbone; the model has a class head of "
                f"{model.out_channels} outputs. Drop num_classes from model_kwargs."
            )
        if self.view_dates is None:
            self.view_dates = max(1, n_times // 2)
        if self.view_dates > n_times:
            raise TrainError(
                f"task_kwargs view_dates={self.view_dates}, but the cube has {n_times} dates; a view takes "
                f"view_dates of a pixel's valid dates. Pass view_dates <= {n_times} (e.g. {max(1, n_times // 2)})."
            )

    def train_module(self, model: Any) -> nn.Module:
        return TwinNet(model, projector(int(model.feature_dim), self.projector_dim, self.projector_depth))

    # -- training ------------------------------------------------------------------------------------
    def objective(self, p1: torch.Tensor, p2: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def _views_loss(
        self, net: Any, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        k = int(self.view_dates or 1)
        xv, dv, mv, keep = pixel_views(batch.x, batch.dates, batch.valid, k, self.noise, generator)
        n = int(keep.sum())
        if n < 2:  # nothing to correlate; a zero loss that still reaches every parameter
            zero = sum((p.sum() * 0.0 for p in net.parameters()), torch.zeros((), device=batch.x.device))
            return zero, {}, n
        _, proj = net(xv, dv, mv)
        loss, terms = self.objective(proj[:n].float(), proj[n:].float())
        return loss, terms, n

    def training_loss(self, net: Any, batch: Batch) -> torch.Tensor:
        loss, terms, n = self._views_loss(net, batch)
        self._seen += len(batch.x)
        self._skipped += len(batch.x) - n
        self._steps += 1
        for t, v in terms.items():
            self._sums[t] += float(v.detach())
        # the collapse watch keeps the clean series of the last batches (copies: the stream reuses its buffers)
        self._watch.append(
            tuple(t[:WATCH_ROWS].detach().clone() for t in (batch.x, batch.dates, batch.valid))
        )
        self._rows += len(self._watch[-1][0])
        while self._rows - len(self._watch[0][0]) >= WATCH_ROWS:
            self._rows -= len(self._watch.popleft()[0])
        return loss

    def _watch_embeddings(self, net: Any) -> torch.Tensor | None:
        """The end-of-epoch model's embeddings (eval mode, as predict makes them) of the kept clean series."""
        if not self._watch:
            return None
        backbone = getattr(net, "module", net).backbone
        was = backbone.training
        backbone.eval()
        with torch.no_grad():
            e = torch.cat([backbone(*inp).float().cpu() for inp in self._watch])
        backbone.train(was)
        return e

    def _watch_projections(self, net: Any) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Projections of two views of the kept clean series (eval mode, views drawn from a fixed seed, so
        epochs compare), or None when fewer than two series have enough valid dates."""
        if not self._watch:
            return None
        x, d, v = (torch.cat(parts) for parts in zip(*self._watch, strict=True))
        g = torch.Generator().manual_seed(0)
        xv, dv, mv, keep = pixel_views(x, d, v, int(self.view_dates or 1), self.noise, g)
        n = int(keep.sum())
        if n < 2:
            return None
        module = getattr(net, "module", net)
        was = module.training
        module.eval()
        with torch.no_grad():
            _, proj = module(xv, dv, mv)
        module.train(was)
        return proj[:n].float().cpu(), proj[n:].float().cpu()

    def diagnostics(self, net: Any) -> dict[str, float]:
        """Extra per-epoch numbers of a subclass, from the watch rows (called before they are dropped)."""
        return {}

    def end_epoch(self, net: Any) -> dict[str, float]:
        seen, skipped, steps = self._seen, self._skipped, max(1, self._steps)
        sums, emb = dict(self._sums), self._watch_embeddings(net)
        extra = self.diagnostics(net) if emb is not None else {}
        self._reset()
        k = self.view_dates
        if seen and skipped == seen:
            raise TrainError(
                f"task {self.name!r} skipped every pixel ({seen}): none has view_dates={k} valid dates. "
                f"Pass a smaller view_dates in task_kwargs, or use a cube with more cloud-free dates."
            )
        out = {t: v / steps for t, v in sums.items()}
        out["skipped_pixels"] = float(skipped)
        if emb is None:
            return out
        z = emb.double()
        std = z.std(0)
        rms = float(z.pow(2).mean().sqrt())
        out["emb_std_mean"], out["emb_std_min"] = float(std.mean()), float(std.min())
        out["effective_rank"] = effective_rank(z.numpy())
        out.update(extra)
        flat = float(std.max()) <= self.collapse_std * max(1.0, rms)
        if flat or out["effective_rank"] < self.collapse_rank:
            what = (
                f"per-dimension std at most {float(std.max()):.2e}"
                if flat
                else f"effective rank {out['effective_rank']:.2f} of {z.shape[1]} dims"
            )
            raise TrainError(
                f"task {self.name!r} collapsed: the embeddings of the last {len(z)} pixels are near constant "
                f"({what}; expected std > {self.collapse_std:g} x rms and effective rank >= {self.collapse_rank:g}). "
                "No checkpoint of this run is kept. Lower lr, check that the cube varies (a constant cube has "
                "nothing to learn), or raise the off-diagonal weight / noise in task_kwargs."
            )
        if not math.isfinite(rms) or rms > self.diverge_rms:
            raise TrainError(
                f"task {self.name!r} diverged: the embeddings of the last {len(z)} pixels have rms {rms:.3g} "
                f"(expected at most diverge_rms={self.diverge_rms:g}; inputs are normalised, so features of a "
                "working encoder stay near 1). No checkpoint of this run is kept. Lower lr (e.g. by 10x)."
            )
        return out

    # -- validation ----------------------------------------------------------------------------------
    def new_state(self) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)  # the same views every epoch: scores that compare
        return {"loss": 0.0, "n": 0, "gen": g, "emb": [], "y": []}

    def validation_step(self, net: Any, batch: Batch, state: dict[str, Any]) -> None:
        loss, _, n = self._views_loss(net, batch, state["gen"])
        if n >= 2:
            state["loss"] += float(loss) * n
            state["n"] += n
        if sum(len(e) for e in state["emb"]) < PROBE_ROWS:
            state["emb"].append(net.backbone(batch.x, batch.dates, batch.valid).float().cpu())
            if batch.y is not None:
                state["y"].append(batch.y.cpu())

    def summarize(self, state: dict[str, Any]) -> dict[str, float]:
        val = state["loss"] / state["n"] if state["n"] else math.nan
        out = {"val_loss": val, "score": -val}
        if not state["emb"]:
            return out
        emb = torch.cat(state["emb"]).double().numpy()
        out["val_effective_rank"] = effective_rank(emb)
        if state["y"] and len(self.classes) >= 2:
            knn = knn_probe(emb, torch.cat(state["y"]).numpy(), len(self.classes))
            if not math.isnan(knn):
                out["val_knn_top1"] = out["score"] = knn  # the labels pick the best epoch
        return out


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
