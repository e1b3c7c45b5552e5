"""One training process: the epoch loop (plain PyTorch) shared by single-process fit and each DDP rank."""

from __future__ import annotations

import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geoarray._devices import check_precision
from geoarray.errors import TrainError
from geoarray.training import state
from geoarray.training.config import FitConfig
from geoarray.training.files import MetricsLog, RunFiles
from geoarray.training.prepare import Setup, _device, seeded_torch
from geoarray.training.protocols import load_encoder

log = logging.getLogger(__name__)


def shard_windows(windows: list[Any], rank: int, world: int) -> list[Any]:
    """This rank's training windows: whole read blocks when there are at least ``world`` of them (each rank
    reads only its own chunks), else every ``world``-th window (ranks share blocks rather than sit idle)."""
    blocks = sorted({w.block for w in windows})
    if len(blocks) >= world:
        mine = set(blocks[rank::world])
        return [w for w in windows if w.block in mine]
    return windows[rank::world]


class Trainer:
    """Trains ``cfg.model`` on ``setup.plan``; ``rank``/``world`` shard the training blocks for DDP."""

    def __init__(
        self, cube: xr.Dataset, cfg: FitConfig, setup: Setup, *, rank: int = 0, world: int = 1
    ) -> None:
        import torch

        from geoarray.chips import ChipStream
        from geoarray.models import create_model

        self.files = RunFiles(cfg, rank=rank)  # URLs: a local working folder, uploaded after each save
        self.shown = cfg.resume  # resume= as the caller gave it, for messages
        cfg = self.files.cfg
        self.cube, self.cfg, self.setup, self.rank, self.world = cube, cfg, setup, rank, world
        self.device = _device(cfg.device)
        if self.device.startswith("cuda"):  # bf16 needs an Ampere or newer GPU: checked on the rank's own
            check_precision(cfg.precision, self.device, TrainError)
        with seeded_torch(cfg.seed, self.device):
            self.model = create_model(cfg.model, **setup.model_kwargs).to(self.device)
            if cfg.init is not None:  # a protocol: the pretrained encoder's weights, every one but the head's
                so = cfg.storage_options
                load_encoder(self.model, cfg.init, setup.provenance.get("init_sha256"), storage_options=so)
            # what trains: the model, or the model plus the task's heads (an SSL projector); the checkpoint
            # holds the model only
            self.net = setup.task.train_module(self.model).to(self.device)
            self.model = setup.task.saved_model(self.model, self.net)
        self.start_epoch = 0
        self.best = -math.inf
        resumed = self._resume(cfg.resume) if cfg.resume else None
        plan = setup.plan
        train_windows = plan.train
        if world > 1:
            train_windows = shard_windows(train_windows, rank, world)
        common: dict[str, Any] = {
            "bands": setup.bands,
            "mean": setup.mean,
            "std": setup.std,
            "kind": setup.stream_kind,
            "pixels_per_window": cfg.pixels_per_chip,
            "var": cfg.var,
            "readers": cfg.readers,
            "batch_size": cfg.batch_size,
            "date_encoding": setup.date_encoding,
        }
        labels = cfg.labels if setup.classes else None
        self.train_stream = ChipStream(
            cube,
            train_windows,
            plan,
            labels=labels if setup.task.reads_label_raster else None,
            shuffle=True,
            augment=cfg.augment,
            seed=cfg.seed + rank,
            drop_last=world > 1,
            min_batch=2,  # BatchNorm cannot train on one chip with 1x1 features: a last single chip is merged
            **common,
        )
        # the stream seeds each epoch's shuffle and augmentation with (seed, epoch): a resumed run continues
        # the sequence where the first run stopped
        self.train_stream.epoch = self.start_epoch
        self.val_stream = ChipStream(
            cube,
            plan.val,
            plan,
            shuffle=False,
            augment=False,
            seed=cfg.seed,
            labels=labels if setup.task.scores_with_label_raster else None,
            **common,
        )
        steps = len(self.train_stream)
        if cfg.steps_per_epoch:
            steps = min(steps, cfg.steps_per_epoch)
        self.steps_per_epoch = steps
        if steps == 0:
            raise TrainError(
                f"rank {rank} has no full training batch ({self.train_stream.num_samples} chips, "
                f"batch_size={cfg.batch_size}, at least 2 per batch); lower batch_size or use more data."
            )
        params = setup.task.param_groups(self.net, cfg.lr)  # e.g. finetune's backbone at its own lr
        if cfg.optimizer == "adamw":
            self.opt: Any = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        elif cfg.optimizer == "sgd":
            self.opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
        else:
            raise TrainError(f"optimizer={cfg.optimizer!r}; expected 'adamw' or 'sgd'.")
        self.plateau = (
            torch.optim.lr_scheduler.ReduceLROnPlateau(self.opt, mode="max", patience=2, factor=0.5)
            if cfg.schedule == "plateau"
            else None
        )
        # the schedule scales these: read before a resumed optimizer state brings back its last (scaled) lr
        self.base_lrs = [g["lr"] for g in self.opt.param_groups]
        if resumed is not None:
            self.opt.load_state_dict(resumed.optimizer)
            if self.plateau is not None and "plateau" in resumed.extra:
                self.plateau.load_state_dict(resumed.extra["plateau"])
        self.scaler = (
            torch.amp.GradScaler("cuda") if cfg.precision == "16" and self.device.startswith("cuda") else None
        )
        self.ddp_model: Any = self.net
        self.log = MetricsLog(cfg.log_dir if rank == 0 else None)
        self.history: list[dict[str, Any]] = []
        self.weight_digests: list[str] = []

    # -- autocast --------------------------------------------------------------------------------------
    def _autocast(self) -> Any:
        import torch

        if self.cfg.precision == "32":
            return nullcontext()
        dev = "cuda" if self.device.startswith("cuda") else "cpu"
        if self.cfg.precision == "bf16":
            return torch.autocast(dev, dtype=torch.bfloat16)
        if self.cfg.precision == "16":
            if dev == "cpu":
                raise TrainError("precision='16' needs a GPU; on CPU use precision='bf16' or '32'.")
            return torch.autocast(dev, dtype=torch.float16)
        raise TrainError(f"precision={self.cfg.precision!r}; expected '32', 'bf16' or '16'.")

    def _to(self, batch: Any) -> Any:
        for name in ("x", "y", "dates", "valid"):
            v = getattr(batch, name)
            if v is not None:
                setattr(batch, name, v.to(self.device, non_blocking=True))
        return batch

    # -- the loop --------------------------------------------------------------------------------------
    def run(self) -> Path | str:
        """Train; returns the best checkpoint: its path, or the URL it was uploaded to."""
        try:
            self._run()
        finally:
            self.files.close()
        return self.files.result

    def _run(self) -> None:
        out = Path(self.cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        patience = 0
        total = self.cfg.epochs * self.steps_per_epoch
        warmup = int(self.cfg.warmup_epochs * self.steps_per_epoch)
        base_lrs = self.base_lrs
        saved = self.start_epoch > 0 and out.exists()  # a resumed run keeps its best unless it improves
        for epoch in range(self.start_epoch, self.cfg.epochs):
            t0 = time.perf_counter()
            with seeded_torch(self.cfg.seed * 100_003 + epoch, self.device):  # dropout: the same per epoch
                train_loss = self._train_epoch(epoch, total, warmup, base_lrs)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "lr": self.opt.param_groups[0]["lr"],
            }
            try:
                row.update(self.setup.task.end_epoch(self.net))  # e.g. an SSL task's collapse watch
            except TrainError:
                if saved and self.start_epoch == 0 and self.rank == 0:
                    out.unlink(missing_ok=True)  # an earlier epoch of a run that then failed: not a result
                    state.state_path(out).unlink(missing_ok=True)
                    self.files.publish()
                raise
            if self.rank == 0:
                metrics = self.validate() if self.setup.plan.val else {"score": -train_loss}
                row.update(metrics)
                row["seconds"] = round(time.perf_counter() - t0, 2)
                score = metrics["score"]
                improved = not math.isnan(score) and score > self.best
                if improved or not saved:
                    self.best = score if improved else self.best
                    self._save(out, epoch, metrics)
                    saved = True
                    patience = 0
                else:
                    patience += 1
                extra = {"plateau": self.plateau.state_dict()} if self.plateau is not None else {}
                state.save_state(out, self.net, self.opt, epoch=epoch + 1, best=self.best, extra=extra)
                self.log.write(row)
                if self.log.dir is not None:
                    self.setup.task.log_epoch(self.log.dir, epoch + 1)
                self.files.publish()  # object storage: this epoch's finished files, one put each
                self.history.append(row)
                log.info("epoch %d/%d %s", epoch + 1, self.cfg.epochs, _fmt(row))
                if self.plateau is not None and not math.isnan(score):
                    self.plateau.step(score)
            stop = self.cfg.early_stopping is not None and patience >= self.cfg.early_stopping
            if self._broadcast_stop(stop):
                break
        if self.rank == 0 and not self.cfg.keep_state:
            state.state_path(out).unlink(missing_ok=True)
            self.files.publish()

    def _broadcast_stop(self, stop: bool) -> bool:
        if self.world == 1:
            return stop
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if stop else 0], device=self.device)  # nccl has no CPU tensors
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _train_epoch(self, epoch: int, total: int, warmup: int, base_lrs: list[float]) -> float:

        self.net.train()
        losses = []
        bar = None
        if self.cfg.progress and self.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", leave=False)
        step = 0
        for batch in self.train_stream:
            if step >= self.steps_per_epoch:
                break
            g = epoch * self.steps_per_epoch + step
            if self.cfg.schedule in ("cosine", "step", "constant") or g < warmup:
                f = lr_factor(g, total, warmup, self.cfg.schedule)
                for grp, base in zip(self.opt.param_groups, base_lrs, strict=True):
                    grp["lr"] = base * f
            batch = self._to(batch)
            with self._autocast():
                try:
                    loss = self.setup.task.training_loss(self.ddp_model, batch)
                except ValueError as e:  # BatchNorm on a batch of one chip whose features shrink to 1x1
                    if "more than 1 value per channel" not in str(e):
                        raise
                    pixels = getattr(self.model, "input_kind", None) == "pixels"
                    one = "one pixel series" if pixels else "one chip, reduced to 1x1"
                    raise TrainError(
                        f"batch_size={self.cfg.batch_size}: {self.cfg.model!r} normalises its features with "
                        f"BatchNorm, which cannot train on one value per channel ({one}). "
                        f"Expected batch_size >= 2{'' if pixels else ', or larger chips'}."
                    ) from None
            check_finite(loss.detach(), epoch + 1, step + 1)
            self.opt.zero_grad(set_to_none=True)
            if self.scaler is not None:
                self.scaler.scale(loss).backward()
                self.scaler.step(self.opt)
                self.scaler.update()
            else:
                loss.backward()
                self.opt.step()
            losses.append(float(loss.detach()))
            if self.cfg.debug_ddp and self.world > 1:  # a test aid: copies every parameter to the CPU
                self.weight_digests.append(_digest(self.model))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
            step += 1
            del batch
        if bar is not None:
            bar.close()
        if step < self.steps_per_epoch:
            raise TrainError(f"rank {self.rank} ran out of chips at step {step} of {self.steps_per_epoch}.")
        return float(np.mean(losses)) if losses else math.nan

    def validate(self) -> dict[str, float]:
        import torch

        self.net.eval()
        acc = self.setup.task.new_state()
        # a pixel stream's batches are batch_size pixel series: a val set of n chips is n * pixels_per_chip /
        # batch_size batches (576 for 9 chips of the Landsat SSL run, 510 s). Under steps_per_epoch validation
        # reads that many batches too, the first ones of the unshuffled stream: the same pixels every epoch.
        cap = self.cfg.steps_per_epoch if self.setup.stream_kind == "pixels" else None
        with torch.no_grad():
            for i, batch in enumerate(self.val_stream):
                if cap is not None and i >= cap:
                    break
                batch = self._to(batch)
                with self._autocast():
                    self.setup.task.validation_step(self.net, batch, acc)
        return self.setup.task.summarize(acc)

    # -- checkpoints -----------------------------------------------------------------------------------
    def _save(self, out: Path, epoch: int, metrics: dict[str, Any]) -> None:
        from geoarray.checkpoint import save_checkpoint

        task = self.setup.saved_task or self.cfg.task
        save_checkpoint(
            out,
            self.model,
            task=task,
            bands=self.setup.bands,
            mean=self.setup.mean,
            std=self.setup.std,
            classes=self.setup.classes or None,
            sensor=self.cfg.sensor,
            multilabel=self.setup.task.multilabel,
            # what the stream fed the model; predict reads it back, so both use the same date features
            **({"date_encoding": self.setup.date_encoding} if self.setup.date_encoding else {}),
            training={
                "epoch": epoch + 1,
                "epochs": self.cfg.epochs,
                "best_metric": metrics.get("score"),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                "seed": self.cfg.seed,
                "data_identity": self.setup.identity,
                "chip_size": self.cfg.chip_size,
                "world_size": self.world,
                **self.setup.provenance,  # init, its sha256 and the label tiles of a protocol run
            },
        )

    def _resume(self, path: str) -> state.TrainState | None:
        """Weights (and the epoch reached) from the side file of ``path``, else from the checkpoint itself."""
        from geoarray.checkpoint import load_checkpoint, read_metadata

        made = read_metadata(path)["model"]
        if made.get("name") != self.model.name:
            raise TrainError(
                f"resume={self.shown!r} holds a {made.get('name')!r} model, but this run builds {self.cfg.model!r}. "
                f"Resume with model={made.get('name')!r} and the same model_kwargs, or drop resume= to start anew."
            )
        try:
            st = state.load_state(path)
        except TrainError as e:  # a URL's side file was downloaded: name the object, not the working copy
            if path == self.shown:
                raise
            raise TrainError(str(e).replace(path, str(self.shown))) from None
        try:
            if st is not None:
                self.net.load_state_dict(st.weights)  # with the task's heads (an SSL projector)
                self.start_epoch, self.best = st.epoch, st.best
            else:
                ck = load_checkpoint(path)
                self.model.load_state_dict(ck.model.state_dict())
                self.start_epoch = int(ck.meta.get("training", {}).get("epoch", 0))
                self.best = float(ck.meta.get("training", {}).get("best_metric") or -math.inf)
                log.info("no resume file beside %s: continuing from its best epoch, with a fresh optimizer", self.shown)
        except RuntimeError as e:  # shapes differ: other bands, classes or hparams
            first = str(e).strip().splitlines()[-1].strip()
            raise TrainError(
                f"resume={self.shown!r} was trained with {made.get('name')!r} {made.get('hparams')}, which does not fit "
                f"this run's {self.cfg.model!r} {self.setup.model_kwargs} ({first}). Resume with the same bands, "
                "classes and model_kwargs, or drop resume= to start anew."
            ) from None
        if self.start_epoch >= self.cfg.epochs:
            raise TrainError(
                f"resume={self.shown!r} reached epoch {self.start_epoch}, and epochs={self.cfg.epochs}: nothing is left "
                f"to train. Pass epochs greater than {self.start_epoch} to train further."
            )
        log.info("resuming from %s at epoch %d", self.shown, self.start_epoch + 1)
        return st


def _digest(model: Any) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _fmt(row: dict[str, Any]) -> str:
    return " ".join(
        f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items() if k != "epoch"
    )


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Learning-rate multiplier at ``step`` of ``total``: linear warm-up, then cosine / step / constant."""
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule == "cosine":
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
    if schedule == "step":
        return 0.1 ** int(3 * (step - warmup) / max(1, total - warmup))
    return 1.0


def check_finite(loss: Any, epoch: int, step: int) -> None:
    if not math.isfinite(float(loss)):
        raise TrainError(
            f"the loss became {float(loss)} at epoch {epoch}, step {step}; training stopped and nothing was saved "
            "from this state. Lower lr, check the inputs for extreme values, or use precision='32'."
        )
