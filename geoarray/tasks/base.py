"""The task interface used by the training loop."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from geoarray.chips import Batch
from geoarray.errors import TrainError
from geoarray.metrics import confusion_matrix, scores
from geoarray.tasks import _losses


class Task:
    """How a model consumes a batch, the loss, and the validation score (higher is better).

    The training loop talks to a task through :meth:`train_module`, :meth:`param_groups`,
    :meth:`training_loss`, :meth:`validation_step`, :meth:`summarize` and :meth:`end_epoch` only. Supervised
    tasks take a labelled batch; self-supervised tasks (:mod:`geoarray.tasks._ssl`) override them to make their
    own views from an unlabelled batch, train heads (a projector) beside the model, and watch for collapse.
    """

    name = ""
    default_loss = "ce"
    #: whether the training chips (and their filters) read the cube's label raster for this task
    reads_label_raster = True
    #: whether validation reads it (an SSL task scores its features with them when the cube has labels)
    scores_with_label_raster = True

    def __init__(self, loss: str | None = None, multilabel: bool = False) -> None:
        self.multilabel = multilabel
        self.loss_name = loss or ("bce" if multilabel else self.default_loss)
        if self.loss_name not in _losses.LOSSES:
            raise TrainError(f"loss={self.loss_name!r}; expected one of {sorted(_losses.LOSSES)}.")
        if multilabel and self.loss_name in ("ce", "focal"):
            raise TrainError(f"loss={self.loss_name!r} is for single-label classes; use 'bce' or 'bce_dice'.")
        if not multilabel and self.loss_name in ("bce", "bce_dice"):
            raise TrainError(f"loss={self.loss_name!r} needs multi-label targets; use 'ce' or 'focal'.")
        self.classes: list[str] = []
        self.class_weights: list[float] | None = None

    def _own_loss(self, loss: str | None, multilabel: bool, *, losses: str = "its own loss") -> None:
        """Set up a task whose objective is its own (self-supervised): refuse ``loss=`` and ``multilabel=``,
        which choose the loss of supervised tasks; ``losses`` says what the task computes instead."""
        if loss is not None or multilabel:
            raise TrainError(
                f"task {self.name!r} has {losses}; expected loss=None and multilabel=False, got loss={loss!r}, "
                f"multilabel={multilabel}. Drop loss= and multilabel= (they choose a supervised task's loss)."
            )
        self.loss_name, self.multilabel = self.name, False
        self.classes = []
        self.class_weights = None

    def kind_for(self, model: Any) -> str:
        return str(getattr(model, "input_kind", "image"))

    def forward(self, model: Any, batch: Batch) -> torch.Tensor:
        # DDP does not pass attribute lookups on to the module it wraps: ask the module
        kind = getattr(getattr(model, "module", model), "input_kind", "image")
        if kind == "sequence":
            return model(batch.x, dates=batch.dates)
        if kind == "pixels":
            return model(batch.x, batch.dates, batch.valid)
        return model(batch.x)

    def loss(self, logits: torch.Tensor, batch: Batch) -> torch.Tensor:
        fn = _losses.LOSSES[self.loss_name]
        w = None
        if self.class_weights is not None and self.loss_name in ("ce", "focal"):
            w = torch.as_tensor(self.class_weights, dtype=logits.dtype, device=logits.device)
        return fn(*self._flat(logits, batch.y), weight=w)

    def _flat(self, logits: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if logits.ndim == 5:  # (B, T, K, H, W) per-frame outputs
            b, t = logits.shape[:2]
            return logits.reshape(b * t, *logits.shape[2:]), y.reshape(b * t, *y.shape[2:])
        return logits, y

    # -- what the training loop calls ---------------------------------------------------------------------
    def check(self, model: Any, n_times: int) -> None:
        """Refuse a model or cube this task cannot train, before any work (``prepare`` calls it)."""

    def plan_times(self, times: Any) -> Any:
        """The ``times=`` of the chip plan for this task (``prepare`` calls it after :meth:`check`); a task whose
        samples need several dates of one chip widens it."""
        return times

    def train_module(self, model: Any) -> Any:
        """The module whose parameters train (and that DDP wraps): the model, or the model plus heads."""
        return model

    def param_groups(self, net: Any, lr: float) -> list[dict[str, Any]]:
        """The optimizer's parameter groups (``net`` is :meth:`train_module`'s result): every trainable
        parameter at ``lr``. A task may give parts of the model their own learning rates."""
        return [{"params": [p for p in net.parameters() if p.requires_grad], "lr": lr}]
    def saved_model(self, model: Any, net: Any) -> Any:
        """The registry model the checkpoint holds: the model (an SSL backbone without its projector), or
        :meth:`train_module`'s result when that is itself a registry model whose heads predict uses."""
        return model

    def training_loss(self, net: Any, batch: Batch) -> torch.Tensor:
        """The loss of one training batch (``net`` is :meth:`train_module`'s result, maybe DDP-wrapped)."""
        return self.loss(self.forward(net, batch).float(), batch)

    def validation_step(self, net: Any, batch: Batch, state: dict[str, Any]) -> None:
        """Score one validation batch into ``state`` (from :meth:`new_state`), without gradients."""
        logits = self.forward(net, batch)
        self.update(state, logits, batch, float(self.loss(logits.float(), batch)))

    def end_epoch(self, net: Any) -> dict[str, float]:
        """Training statistics of the epoch just run (``net`` as trained), logged with it; may raise
        TrainError to end the run."""
        return {}

    def log_epoch(self, log_dir: Any, epoch: int) -> None:
        """Write the epoch's own artefacts into fit's ``log_dir`` (a ``Path``; rank 0 only, after
        ``metrics.csv``), e.g. Barlow Twins' cross-correlation matrix. Nothing by default."""

    # -- validation ------------------------------------------------------------------------------------
    def new_state(self) -> dict[str, Any]:
        k = max(2, len(self.classes)) if self.multilabel else len(self.classes)
        return {"cm": np.zeros((2, 2) if self.multilabel else (k, k), dtype=np.int64), "loss": 0.0, "n": 0}

    def update(self, state: dict[str, Any], logits: torch.Tensor, batch: Batch, loss: float) -> None:
        lg, y = self._flat(logits.float(), batch.y)
        if self.multilabel:
            pred = (lg > 0).long().cpu().numpy()
            state["cm"] += confusion_matrix(pred, y.cpu().numpy(), 2, ignore_index=_losses.IGNORE)
        else:
            pred = lg.argmax(1).cpu().numpy()
            state["cm"] += confusion_matrix(
                pred, y.cpu().numpy(), len(self.classes), ignore_index=_losses.IGNORE
            )
        state["loss"] += loss * len(batch.x)
        state["n"] += len(batch.x)

    def summarize(self, state: dict[str, Any]) -> dict[str, float]:
        names = ["0", "1"] if self.multilabel else self.classes
        s = scores(state["cm"], names)
        out = {"val_loss": state["loss"] / max(1, state["n"]), "val_accuracy": s["accuracy"]}
        if self.multilabel:
            out["val_iou"] = s["iou"]["1"] if s["iou"]["1"] is not None else float("nan")
            out["score"] = out["val_iou"]
        else:
            out["val_mean_iou"] = s["mean_iou"]
            out["score"] = s["mean_iou"]
        return out
