"""Evaluation protocols on a pretrained encoder (issue 10): ``linear_probe`` (the encoder frozen, only the
linear head trains) and ``finetune`` (the whole model trains, the backbone at its own learning rate).

Both are the supervised task of the encoder's input kind, with nothing else of their own: pixel time series
(``pixel_*`` encoders) train like ``pixel_classification`` on the label raster, chips (``resnet18/50``) like
``classification`` on ``regions=``. ``fit(init=)`` loads the encoder (:mod:`geoarray.training.protocols`), the
training loop is the ordinary one, and the checkpoint is an ordinary classifier's.
"""

from __future__ import annotations

import math
from typing import Any

from torch import nn

from geoarray.errors import TrainError
from geoarray.tasks.base import Task

#: encoder input kinds the protocols train (the supervised task each one uses)
KINDS = {"pixels": "pixel_classification", "chip": "classification"}


def head_parameters(model: Any) -> list[nn.Parameter]:
    return list(model.head.parameters())


class ProtocolTask(Task):
    """A supervised classifier on a pretrained encoder; :meth:`check` takes on its input kind's behaviour."""

    default_loss = "ce"
    chip = False

    def check(self, model: Any, n_times: int) -> None:
        kind = getattr(model, "input_kind", None)
        if kind not in KINDS or not isinstance(getattr(model, "head", None), nn.Linear):
            raise TrainError(
                f"task {self.name!r} trains a linear head on a feature encoder of pixel time series (pixel_mlp, "
                f"pixel_cnn, pixel_transformer) or of chips (resnet18, resnet50); the model takes {kind!r} "
                "inputs. Pass init= the checkpoint of such an encoder."
            )
        # chip labels come from regions= (as task 'classification'), pixel labels from the label raster
        self.chip = kind == "chip"
        self.reads_label_raster = self.scores_with_label_raster = not self.chip

    def summarize(self, state: dict[str, Any]) -> dict[str, float]:
        out = super().summarize(state)
        if self.chip:
            out["score"] = out["val_accuracy"]  # top-1 accuracy ranks chip classifiers
        return out


class FrozenEncoder(nn.Module):
    """The model with every parameter but the head's frozen and every module but the head kept in eval mode,
    so BatchNorm running statistics and dropout stay as the pretrained encoder left them."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        head = {id(p) for p in head_parameters(model)}
        for p in model.parameters():
            p.requires_grad_(id(p) in head)

    @property
    def input_kind(self) -> str:
        return str(self.model.input_kind)

    def train(self, mode: bool = True) -> FrozenEncoder:
        super().train(mode)
        for name, child in self.model.named_children():
            if name != "head":
                child.eval()
        return self

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.model(*args, **kwargs)


class LinearProbeTask(ProtocolTask):
    name = "linear_probe"

    def train_module(self, model: Any) -> nn.Module:
        return FrozenEncoder(model)


class FinetuneTask(ProtocolTask):
    name = "finetune"

    def __init__(
        self, loss: str | None = None, multilabel: bool = False, *, backbone_lr: float | None = None
    ) -> None:
        super().__init__(loss, multilabel)
        if backbone_lr is not None and (
            not isinstance(backbone_lr, (int, float))
            or isinstance(backbone_lr, bool)
            or not math.isfinite(backbone_lr)
            or backbone_lr < 0
        ):
            raise TrainError(
                f"task_kwargs backbone_lr={backbone_lr!r}; expected a finite learning rate >= 0 (default: lr / 10)."
            )
        self.backbone_lr = backbone_lr

    def param_groups(self, net: Any, lr: float) -> list[dict[str, Any]]:
        """The head at ``lr``, the backbone at ``backbone_lr`` (default ``lr / 10``): the pretrained features
        move slowly while the new head learns."""
        head = head_parameters(net)
        ids = {id(p) for p in head}
        rest = [p for p in net.parameters() if id(p) not in ids and p.requires_grad]
        back = lr / 10 if self.backbone_lr is None else float(self.backbone_lr)
        return [{"params": head, "lr": lr}, {"params": rest, "lr": back}]
