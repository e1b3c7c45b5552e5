"""What every self-supervised task shares: views made from an unlabelled batch, a projector trained beside the
model, and the collapse watch (per-dimension std and effective rank of the embeddings, every epoch).

A subclass defines :meth:`SSLTask.objective` (the loss of two projected views, with its named terms). The
views come from a maker per input kind (:mod:`geoarray.tasks._views`): pixel series keep random subsets of their
valid dates; chips are augmented twice, or taken on two dates (``positives="temporal"``). The model stays the
backbone: the checkpoint holds it without the projector, and its output kind is "features".
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
from geoarray.tasks._augment import ChipAugment
from geoarray.tasks._gather import world_size
from geoarray.tasks._ssl_parts import TwinNet, knn_probe, projector
from geoarray.tasks._views import chip_views, clean_inputs, pixel_views
from geoarray.tasks.base import Task

__all__ = ["SSLTask", "TwinNet", "knn_probe", "pixel_views", "projector"]

#: rows of clean (un-augmented) inputs the collapse watch keeps from the end of each epoch
WATCH_ROWS = 2048
#: ... and at most this many input values (chips are large: 64 chips of 256² x 8 bands)
WATCH_VALUES = 1 << 25
#: validation samples whose clean embeddings feed the effective rank and the kNN probe
PROBE_ROWS = 8192
#: what each input kind is, for messages
_KIND_WORDS = {
    "pixels": ("pixel", "pixel time-series backbones (pixel_mlp, pixel_cnn, pixel_transformer)"),
    "chip": ("chip", "chip encoders (resnet18, resnet50)"),
}
#: task_kwargs of chip views (ChipAugment's fields)
_CHIP_OPTIONS = ("crop_scale", "brightness", "contrast", "jitter_p", "blur_p", "blur_sigma")
POSITIVES = ("augment", "temporal")


class SSLTask(Task):
    """A self-supervised task: unlabelled batches, two views per sample, a projector.

    It trains pixel time-series backbones (views: two subsets of a pixel's valid dates, plus band noise) and
    chip encoders (views: two augmentations of a chip, or with ``positives="temporal"`` the same place on two
    dates, each augmented); :meth:`check` picks the views from the model's ``input_kind``.
    """

    reads_label_raster = False
    #: term names of :meth:`objective`, logged per epoch as ``<name>``
    terms: tuple[str, ...] = ()
    #: the input kinds this task trains
    kinds: tuple[str, ...] = ("pixels", "chip")
    #: whether :meth:`objective` takes batch statistics over every DDP rank's rows (``gather=True``)
    gathers = False
    default_projector: tuple[int, int] = (128, 2)

    def __init__(
        self,
        loss: str | None = None,
        multilabel: bool = False,
        *,
        view_dates: int | None = None,
        noise: float = 0.05,
        positives: str = "augment",
        min_valid_date: float = 0.5,
        projector_dim: int | None = None,
        projector_depth: int | None = None,
        collapse_rank: float = 1.5,
        collapse_std: float = 1e-4,
        diverge_rms: float = 1e3,
        **chip_options: Any,
    ) -> None:
        self._own_loss(loss, multilabel)
        unknown = sorted(set(chip_options) - set(_CHIP_OPTIONS))
        if unknown:
            raise TypeError(f"unexpected options {unknown}; chip views take {list(_CHIP_OPTIONS)}")
        projector_dim = self.default_projector[0] if projector_dim is None else projector_dim
        projector_depth = self.default_projector[1] if projector_depth is None else projector_depth
        for key, v in (
            ("view_dates", view_dates),
            ("projector_dim", projector_dim),
            ("projector_depth", projector_depth),
        ):
            if v is not None and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise TrainError(f"task_kwargs {key}={v!r}; expected a positive integer.")
        if not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
            raise TrainError(f"task_kwargs noise={noise!r}; expected a finite std >= 0 (e.g. 0.05).")
        if positives not in POSITIVES:
            raise TrainError(
                f"task_kwargs positives={positives!r}; expected 'augment' (two augmentations of one chip) or "
                "'temporal' (the same place on two dates, each augmented)."
            )
        if (
            isinstance(min_valid_date, bool)
            or not isinstance(min_valid_date, (int, float))
            or not (0 <= min_valid_date <= 1)
        ):
            raise TrainError(
                f"task_kwargs min_valid_date={min_valid_date!r}; expected the fraction (0..1) of a chip's pixels "
                "that must be valid on a date for it to be a temporal positive (e.g. 0.5)."
            )
        self.view_dates, self.noise = view_dates, float(noise)
        self.positives, self.min_valid_date = positives, float(min_valid_date)
        self.chip_options = dict(chip_options)
        self.augment = ChipAugment(noise=self.noise, **chip_options)  # checks the chip options now
        self.projector_dim, self.projector_depth = projector_dim, projector_depth
        self.collapse_rank, self.collapse_std, self.diverge_rms = collapse_rank, collapse_std, diverge_rms
        self.kind = ""  # the model's input kind, set by check()
        self.n_times = 0
        self._reset()

    def _reset(self) -> None:
        self._sums = {t: 0.0 for t in self.terms}
        self._steps = 0
        self._seen = self._skipped = 0
        self._watch: deque[tuple[torch.Tensor, ...]] = deque()
        self._rows = 0

    # -- set-up --------------------------------------------------------------------------------------
    def check(self, model: Any, n_times: int) -> None:
        kind = str(getattr(model, "input_kind", None))
        if kind not in self.kinds:
            trains = " or ".join(_KIND_WORDS[k][1] for k in self.kinds)
            raise TrainError(f"task {self.name!r} trains {trains}; model {model.name!r} takes {kind} input.")
        self.kind, self.n_times = kind, n_times
        if getattr(model, "out_channels", None) != getattr(model, "feature_dim", None):
            fix = (
                "Drop num_classes from model_kwargs."
                if kind == "pixels"
                else "Pass model_kwargs num_classes=0."
            )
            raise TrainError(
                f"task {self.name!r} trains a feature backbone; the model has a class head of "
                f"{model.out_channels} outputs. {fix}"
            )
        if kind == "chip":
            self._check_chips(n_times)
            return
        given = sorted(self.chip_options) + [
            k
            for k, v, d in (
                ("positives", self.positives, "augment"),
                ("min_valid_date", self.min_valid_date, 0.5),
            )
            if v != d
        ]
        if given:
            raise TrainError(
                f"task_kwargs {given} are options of chip views, but {model.name!r} takes pixel time series, "
                "whose views are subsets of their valid dates (view_dates) plus band noise (noise). Drop them, "
                "or train a chip encoder (resnet18, resnet50)."
            )
        if self.view_dates is None:
            self.view_dates = max(1, n_times // 2)
        if self.view_dates > n_times:
            raise TrainError(
                f"task_kwargs view_dates={self.view_dates}, but the cube has {n_times} dates; a view takes "
                f"view_dates of a pixel's valid dates. Pass view_dates <= {n_times} (e.g. {max(1, n_times // 2)})."
            )

    def _check_chips(self, n_times: int) -> None:
        if self.view_dates is not None:
            raise TrainError(
                f"task_kwargs view_dates={self.view_dates} is an option of pixel time-series views; chip views "
                "are augmentations (crop_scale, brightness, contrast, blur_p, noise) or, with "
                "positives='temporal', two dates of one place. Drop view_dates."
            )
        if self.positives == "temporal" and n_times < 2:
            raise TrainError(
                f"task_kwargs positives='temporal' pairs the same place on two different dates, but the cube has "
                f"{n_times} date. Use positives='augment' (two augmentations of one chip, the default), or a "
                "cube with at least 2 dates."
            )

    def plan_times(self, times: Any) -> Any:
        """Temporal positives need every date of a chip (or the dates the user picked, at least two)."""
        if self.kind != "chip" or self.positives != "temporal":
            return times
        if isinstance(times, str):
            return "all"
        picked = list(times)
        if len(set(map(str, picked))) < 2:
            raise TrainError(
                f"task_kwargs positives='temporal' pairs two dates of each chip, but times={times!r} selects "
                f"{len(set(map(str, picked)))}. Pass times='all' (or leave the default), or at least two dates."
            )
        return picked

    def train_module(self, model: Any) -> nn.Module:
        return TwinNet(model, projector(int(model.feature_dim), self.projector_dim, self.projector_depth))

    # -- training ------------------------------------------------------------------------------------
    def objective(
        self, p1: torch.Tensor, p2: torch.Tensor, *, gather: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The loss of the projections of two views (row i of each is one sample), with its named terms.
        ``gather``: under DDP, batch statistics may be taken over every rank's rows (see :attr:`gathers`)."""
        raise NotImplementedError

    def _kind(self, batch: Batch) -> str:
        return self.kind or ("pixels" if batch.x.ndim == 3 else "chip")

    def views(
        self, batch: Batch, generator: torch.Generator | None = None
    ) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """The model inputs of both views (view 1 rows, then view 2 rows) and the ``(B,)`` mask of samples kept."""
        if self._kind(batch) == "pixels":
            k = int(self.view_dates or 1)
            xv, dv, mv, keep = pixel_views(batch.x, batch.dates, batch.valid, k, self.noise, generator)
            return (xv, dv, mv), keep
        return chip_views(
            batch,
            self.augment,
            temporal=self.positives == "temporal",
            min_valid=self.min_valid_date,
            generator=generator,
        )

    def _views_loss(
        self, net: Any, batch: Batch, generator: torch.Generator | None = None, *, gather: bool = False
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], int]:
        world = world_size() if gather else 1
        if world > 1 and generator is None:
            # every rank's global generator is seeded alike (the loop seeds it per epoch): draw this rank's views
            # from its own stream, still determined by that seed
            import torch.distributed as dist

            base = int(torch.randint(0, 2**62, (1,)))
            generator = torch.Generator().manual_seed(base + int(dist.get_rank()))
        inputs, keep = self.views(batch, generator)
        n = int(keep.sum())
        gathering = self.gathers and world > 1
        if n < (1 if gathering else 2):
            # nothing to compare here: a zero loss that still runs the forward pass (DDP expects one) and
            # reaches every parameter; under a gathered objective this rank still joins the collectives
            _, proj = net(*clean_inputs(self._kind(batch), batch))
            zero = proj.float().sum() * 0.0
            if not gathering:
                return zero, {}, n
            loss, terms = self.objective(proj[:0].float(), proj[:0].float(), gather=True)
            return loss + zero, terms, n
        _, proj = net(*inputs)
        loss, terms = self.objective(proj[:n].float(), proj[n:].float(), gather=gathering)
        return loss, terms, n

    def training_loss(self, net: Any, batch: Batch) -> torch.Tensor:
        loss, terms, n = self._views_loss(net, batch, gather=True)
        self._seen += len(batch.x)
        self._skipped += len(batch.x) - n
        self._steps += 1
        for t, v in terms.items():
            self._sums[t] += float(v.detach())
        # the collapse watch keeps the clean inputs of the last batches (copies: the stream reuses its buffers)
        clean = clean_inputs(self._kind(batch), batch)
        per_row = max(1, clean[0][0].numel())
        cap = max(64, min(WATCH_ROWS, WATCH_VALUES // per_row))
        self._watch.append(tuple(t[:cap].detach().clone() for t in clean))
        self._rows += len(self._watch[-1][0])
        while self._rows - len(self._watch[0][0]) >= cap:
            self._rows -= len(self._watch.popleft()[0])
        return loss

    def _watch_embeddings(self, net: Any) -> torch.Tensor | None:
        """The end-of-epoch model's embeddings (eval mode, as predict makes them) of the kept clean inputs."""
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
        parts = [torch.cat(p) for p in zip(*self._watch, strict=True)]
        # the watch holds clean inputs: (x, dates, valid) of pixel series, or (x,) single-date chips, whose
        # views are then two augmentations (also under positives="temporal", which needs the dates)
        batch = Batch(parts[0], None, *parts[1:]) if len(parts) == 3 else Batch(parts[0], None)
        g = torch.Generator().manual_seed(0)
        if self._kind(batch) == "pixels":
            inputs, keep = self.views(batch, g)
        else:
            inputs, keep = chip_views(batch, self.augment, temporal=False, generator=g)
        n = int(keep.sum())
        if n < 2:
            return None
        module = getattr(net, "module", net)
        was = module.training
        module.eval()
        with torch.no_grad():
            _, proj = module(*inputs)
        module.train(was)
        return proj[:n].float().cpu(), proj[n:].float().cpu()

    def diagnostics(self, net: Any) -> dict[str, float]:
        """Extra per-epoch numbers of a subclass, from the watch rows (called before they are dropped)."""
        return {}

    def _skip_message(self, seen: int) -> str:
        if self.kind == "chip":
            return (
                f"task {self.name!r} skipped every chip ({seen}): none has two dates with at least "
                f"min_valid_date={self.min_valid_date:g} of its pixels valid, which positives='temporal' pairs. "
                "Lower min_valid_date in task_kwargs, use a cube with more cloud-free dates, or "
                "positives='augment'."
            )
        return (
            f"task {self.name!r} skipped every pixel ({seen}): none has view_dates={self.view_dates} valid dates. "
            f"Pass a smaller view_dates in task_kwargs, or use a cube with more cloud-free dates."
        )

    def end_epoch(self, net: Any) -> dict[str, float]:
        seen, skipped, steps = self._seen, self._skipped, max(1, self._steps)
        sums, emb = dict(self._sums), self._watch_embeddings(net)
        extra = self.diagnostics(net) if emb is not None else {}
        self._reset()
        if seen and skipped == seen:
            raise TrainError(self._skip_message(seen))
        out = {t: v / steps for t, v in sums.items()}
        out[f"skipped_{_KIND_WORDS.get(self.kind or 'pixels', ('pixel',))[0]}s"] = float(skipped)
        if emb is None:
            return out
        z = emb.double()
        std = z.std(0)
        rms = float(z.pow(2).mean().sqrt())
        out["emb_std_mean"], out["emb_std_min"] = float(std.mean()), float(std.min())
        out["effective_rank"] = effective_rank(z.numpy())
        out.update(extra)
        flat = float(std.max()) <= self.collapse_std * max(1.0, rms)
        what_rows = f"the last {len(z)} {_KIND_WORDS.get(self.kind or 'pixels', ('pixel',))[0]}s"
        if flat or out["effective_rank"] < self.collapse_rank:
            what = (
                f"per-dimension std at most {float(std.max()):.2e}"
                if flat
                else f"effective rank {out['effective_rank']:.2f} of {z.shape[1]} dims"
            )
            raise TrainError(
                f"task {self.name!r} collapsed: the embeddings of {what_rows} are near constant "
                f"({what}; expected std > {self.collapse_std:g} x rms and effective rank >= {self.collapse_rank:g}). "
                "No checkpoint of this run is kept. Lower lr, check that the cube varies (a constant cube has "
                "nothing to learn), or raise the off-diagonal / variance weight or the augmentation in task_kwargs."
            )
        if not math.isfinite(rms) or rms > self.diverge_rms:
            raise TrainError(
                f"task {self.name!r} diverged: the embeddings of {what_rows} have rms {rms:.3g} "
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
            state["emb"].append(net.backbone(*clean_inputs(self._kind(batch), batch)).float().cpu())
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
