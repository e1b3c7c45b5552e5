"""Seed 000 (WATCH invariants): multi-head pretext training of per-pixel features on multi-date chips.

A UNet backbone gives ``feature_dim`` (64) per-pixel features; each chosen head adds its own ``head_dim`` (8)
per-pixel features, and the total loss is the sum over the chosen heads:

- ``arrow_of_time``: two co-registered dates of one chip in random order; per pixel, a binary prediction of
  whether the first was taken before the second (binary cross-entropy; the label is the pair's true order).
- ``temporal_association``: per-pixel triplet loss; anchor a chip on one date, positive the same place on
  another date, negative another place on the same date.
- ``augmentation_association``: per-pixel triplet loss; positive a photometric augmentation of the anchor
  (per-band gain and offset, noise), negative another place.

"Another place" is the anchor's own date shifted cyclically by ``negative_shift`` (half) of the chip: every
pixel's negative lies at least ``negative_shift * chip_size`` pixels away, so anchor and negative footprints
never overlap (an overlap threshold of 0), whatever the chip plan. Dates are never shown to the model (it
could read the order from them). The trained module, backbone and heads, is the registry model
``pretext_unet``; the checkpoint holds all of it, and its ``output.parts`` tell predict what to write.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

import torch
from torch.nn import functional as F

from geoarray.chips import Batch
from geoarray.errors import TrainError
from geoarray.metrics import effective_rank
from geoarray.tasks._pretext import another_place, date_order, fit_pca, photometric, triplet_loss
from geoarray.tasks.base import Task

HEADS = ("arrow_of_time", "temporal_association", "augmentation_association")
#: heads that compare two dates of one place
_TWO_DATES = ("arrow_of_time", "temporal_association")
WATCH_CHIPS = 16  # clean chips the collapse watch (and the PCA) keeps from the end of each epoch
WATCH_PIXELS = 4096


def _positive_int(key: str, v: Any, low: int = 1) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < low:
        raise TrainError(f"task_kwargs {key}={v!r}; expected an integer >= {low}.")
    return v


def _number(key: str, v: Any, low: float, high: float = math.inf, example: str = "") -> float:
    ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and low <= v <= high
    if not ok:
        rng = f">= {low:g}" if high == math.inf else f"in [{low:g}, {high:g}]"
        raise TrainError(f"task_kwargs {key}={v!r}; expected a finite number {rng}{example}.")
    return float(v)


class InvariantsTask(Task):
    """``task="invariants"``: see the module docstring. Options come from ``fit(task_kwargs=...)``."""

    name = "invariants"
    reads_label_raster = False
    scores_with_label_raster = False

    def __init__(
        self,
        loss: str | None = None,
        multilabel: bool = False,
        *,
        heads: Any = HEADS,
        feature_dim: int = 64,
        head_dim: int = 8,
        pca_dim: int = 0,
        margin: float = 1.0,
        jitter: float = 0.1,
        noise: float = 0.05,
        negative_shift: float = 0.5,
        collapse_rank: float = 1.5,
        collapse_std: float = 1e-4,
        diverge_rms: float = 1e3,
    ) -> None:
        self._own_loss(loss, multilabel, losses="its own losses (one per head)")
        if isinstance(heads, str) or not hasattr(heads, "__iter__"):
            raise TrainError(f"task_kwargs heads={heads!r}; expected a list of head names among {list(HEADS)}.")
        heads = list(heads)
        unknown = [h for h in heads if h not in HEADS]
        if not heads or unknown or len(set(heads)) != len(heads):
            found = "an empty list" if not heads else f"unknown {unknown}" if unknown else "repeated names"
            raise TrainError(
                f"task_kwargs heads={heads!r} ({found}); expected one or more distinct heads among {list(HEADS)}, "
                "e.g. heads=['arrow_of_time', 'temporal_association']."
            )
        self.heads = [h for h in HEADS if h in heads]
        self.feature_dim = _positive_int("feature_dim", feature_dim)
        self.head_dim = _positive_int("head_dim", head_dim)
        self.pca_dim = _positive_int("pca_dim", pca_dim, 0)
        if self.pca_dim > self.feature_dim:
            raise TrainError(
                f"task_kwargs pca_dim={pca_dim}; expected at most feature_dim={feature_dim} components."
            )
        self.margin = _number("margin", margin, 0.0, example=" (e.g. 1.0)")
        self.jitter = _number("jitter", jitter, 0.0, example=" (e.g. 0.1)")
        self.noise = _number("noise", noise, 0.0, example=" (e.g. 0.05)")
        self.shift = _number("negative_shift", negative_shift, 0.25, 0.75, " (e.g. 0.5)")
        self.collapse_rank, self.collapse_std, self.diverge_rms = collapse_rank, collapse_std, diverge_rms
        self._reset()

    def _reset(self) -> None:
        self._sums = {h: 0.0 for h in self.heads}
        self._steps = 0
        self._watch: deque[torch.Tensor] = deque(maxlen=WATCH_CHIPS)

    # -- set-up ----------------------------------------------------------------------------------------
    def kind_for(self, model: Any) -> str:
        return "sequence"  # chips of every date: pairs of dates of one place

    def check(self, model: Any, n_times: int) -> None:
        if getattr(model, "name", "") != "unet":
            raise TrainError(
                f"task 'invariants' trains a UNet backbone with pretext heads; got model "
                f"{getattr(model, 'name', '') or type(model).__name__!r}. Pass model='unet' (model_kwargs set its "
                "depth, width and dropout; task_kwargs feature_dim/head_dim/heads the rest)."
            )
        two = [h for h in self.heads if h in _TWO_DATES]
        if two and n_times < 2:
            raise TrainError(
                f"task 'invariants' heads {two} compare two dates of one place, but the cube has {n_times} date. "
                "Expected a cube with at least 2 dates; or train only heads=['augmentation_association'] on it."
            )

    def train_module(self, model: Any) -> Any:
        from geoarray.models import create_model

        hp = model.hparams
        return create_model(
            "pretext_unet",
            in_channels=hp["in_channels"],
            feature_dim=self.feature_dim,
            depth=hp["depth"],
            width=hp["width"],
            dropout=hp["dropout"],
            heads=",".join(self.heads),
            head_dim=self.head_dim,
            pca_dim=self.pca_dim,
        )

    def saved_model(self, model: Any, net: Any) -> Any:
        return net  # the backbone and its heads: predict writes every head's features

    # -- the losses ------------------------------------------------------------------------------------
    def losses(
        self, net: Any, x: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[dict[str, torch.Tensor], torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
        """Per-head losses of a batch ``x (B, T, C, H, W)``; also the arrow-of-time logits ``(B, T-1, H, W)``
        and labels ``(B, T-1)`` (or None), and the first frames' backbone features.

        Each chip's dates go through the model in a random order (``perm``): the model's per-frame heatmap
        says whether the frame before was taken earlier, which for frame ``k`` is true when
        ``perm[k-1] < perm[k]``; so one pass gives ``T - 1`` pairs per chip, about half in each order. The
        temporal positive of frame ``k`` is frame ``k + 1`` (another date of the same place); the photometric
        view of frame 0 goes last.
        """
        b, t = x.shape[:2]
        if not any(h in self.heads for h in _TWO_DATES):
            t = 1  # one date is enough: the augmentation head compares a date with its own view
        perm = date_order(b, t, generator).to(x.device)
        seq = x[torch.arange(b, device=x.device)[:, None], perm]
        if "augmentation_association" in self.heads:
            seq = torch.cat([seq, photometric(seq[:, 0], self.jitter, self.noise, generator)[:, None]], 1)
        out = net(seq)  # through forward, so DDP sees every parameter used
        module = getattr(net, "module", net)
        at: dict[str, slice] = {}
        start = 0
        for name, c, _, _ in module.parts():
            at[name], start = slice(start, start + c), start + c
        losses: dict[str, torch.Tensor] = {}
        logits = labels = None
        if "arrow_of_time" in self.heads:
            logits = out[:, 1:t, at["arrow_of_time"]][:, :, 0]
            labels = (perm[:, :-1] < perm[:, 1:]).to(out.dtype)
            target = labels[:, :, None, None].expand_as(logits)
            losses["arrow_of_time"] = F.binary_cross_entropy_with_logits(logits, target)
        if "temporal_association" in self.heads:
            f = out[:, :t, at["features_temporal_association"]]
            a = f[:, :-1].flatten(0, 1)
            pos = f[:, 1:].flatten(0, 1)
            losses["temporal_association"] = triplet_loss(a, pos, another_place(a, self.shift), self.margin)
        if "augmentation_association" in self.heads:
            f = out[:, :, at["features_augmentation_association"]]
            a = f[:, 0]
            losses["augmentation_association"] = triplet_loss(
                a, f[:, -1], another_place(a, self.shift), self.margin
            )
        return losses, logits, labels, out[:, 0, at["features"]]

    def training_loss(self, net: Any, batch: Batch) -> torch.Tensor:
        losses, *_ = self.losses(net, batch.x)
        for h, v in losses.items():
            self._sums[h] += float(v.detach())
        self._steps += 1
        # the collapse watch keeps clean chips of the last batches (copies: the stream reuses its buffers)
        self._watch.extend(batch.x[:4, 0].detach().clone())
        return sum(losses.values(), torch.zeros((), device=batch.x.device))

    def end_epoch(self, net: Any) -> dict[str, float]:
        module = getattr(net, "module", net)
        sums, steps, chips = dict(self._sums), max(1, self._steps), list(self._watch)
        self._reset()
        out = {f"loss_{h}": v / steps for h, v in sums.items()}
        if not chips:
            return out
        was = module.training
        module.eval()
        with torch.no_grad():
            f = module.frame_features(torch.stack(chips))["features"].float().cpu()  # numpy below
        module.train(was)
        z = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])
        z = z[torch.linspace(0, len(z) - 1, min(WATCH_PIXELS, len(z))).long()]
        self._watch_collapse(z, out)
        if self.pca_dim:  # the PCA of this epoch's features travels with this epoch's weights
            mean, axes = fit_pca(z, self.pca_dim)
            module.get_buffer("pca_mean").copy_(mean)
            module.get_buffer("pca_components").copy_(axes)
        return out

    def _watch_collapse(self, z: torch.Tensor, out: dict[str, float]) -> None:
        zd = z.double()
        std = zd.std(0)
        rms = float(zd.pow(2).mean().sqrt())
        out["emb_std_mean"], out["emb_std_min"] = float(std.mean()), float(std.min())
        out["effective_rank"] = effective_rank(zd.numpy()) if math.isfinite(rms) else math.nan
        flat = float(std.max()) <= self.collapse_std * max(1.0, rms)
        if flat or out["effective_rank"] < self.collapse_rank:
            raise TrainError(
                f"task 'invariants' collapsed: the features of {len(z)} pixels are near constant (std at most "
                f"{float(std.max()):.2e}, effective rank {out['effective_rank']:.2f} of {z.shape[1]}; expected std > "
                f"{self.collapse_std:g} x rms and effective rank >= {self.collapse_rank:g}). No checkpoint of this "
                "run is kept. Lower lr, or check that the cube varies."
            )
        if not math.isfinite(rms) or rms > self.diverge_rms:
            raise TrainError(
                f"task 'invariants' diverged: the features of {len(z)} pixels have rms {rms:.3g} (expected at most "
                f"diverge_rms={self.diverge_rms:g}). No checkpoint of this run is kept. Lower lr (e.g. by 10x)."
            )

    # -- validation --------------------------------------------------------------------------------------
    def new_state(self) -> dict[str, Any]:
        g = torch.Generator().manual_seed(0)  # the same pairs and views every epoch: scores that compare
        return {"loss": 0.0, "n": 0, "gen": g, "right": 0, "pixels": 0}

    def validation_step(self, net: Any, batch: Batch, state: dict[str, Any]) -> None:
        losses, logits, labels, _ = self.losses(net, batch.x, state["gen"])
        n = len(batch.x)
        state["loss"] += float(sum(losses.values())) * n
        state["n"] += n
        if logits is not None and labels is not None:
            state["right"] += int(((logits > 0) == (labels[:, :, None, None] > 0.5)).sum())
            state["pixels"] += logits.numel()

    def summarize(self, state: dict[str, Any]) -> dict[str, float]:
        val = state["loss"] / state["n"] if state["n"] else math.nan
        out = {"val_loss": val, "score": -val}
        if state["pixels"]:
            out["val_arrow_of_time_accuracy"] = state["right"] / state["pixels"]
        return out
