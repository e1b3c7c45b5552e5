"""One training process: the epoch loop shared by single-process fit and each DDP rank."""

from __future__ import annotations

import json
import logging
import math
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from geoarray._atomic import atomic_write
from geoarray.errors import TrainError
from geoarray.train import (
    FitConfig,
    MetricsLog,
    Setup,
    _device,
    check_finite,
    lr_factor,
    seed_everything,
)

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

        self.cube, self.cfg, self.setup, self.rank, self.world = cube, cfg, setup, rank, world
        self.device = _device(cfg.device)
        seed_everything(cfg.seed)
        self.model = create_model(cfg.model, **setup.model_kwargs).to(self.device)
        self.start_epoch = 0
        self.best = -math.inf
        if cfg.resume:
            self._resume(cfg.resume)
        plan = setup.plan
        train_windows = plan.train
        if world > 1:
            train_windows = shard_windows(train_windows, rank, world)
        common: dict[str, Any] = {
            "bands": setup.bands,
            "mean": setup.mean,
            "std": setup.std,
            "kind": setup.stream_kind,
            "labels": cfg.labels if cfg.task != "classification" else None,
            "pixels_per_window": cfg.pixels_per_chip,
            "var": cfg.var,
            "readers": cfg.readers,
            "batch_size": cfg.batch_size,
        }
        self.train_stream = ChipStream(
            cube,
            train_windows,
            plan,
            shuffle=True,
            augment=cfg.augment,
            seed=cfg.seed + rank,
            drop_last=world > 1,
            **common,
        )
        self.val_stream = ChipStream(
            cube, plan.val, plan, shuffle=False, augment=False, seed=cfg.seed, **common
        )
        steps = len(self.train_stream)
        if cfg.steps_per_epoch:
            steps = min(steps, cfg.steps_per_epoch)
        self.steps_per_epoch = steps
        if steps == 0:
            raise TrainError(
                f"rank {rank} has no full training batch ({self.train_stream.num_samples} chips, "
                f"batch_size={cfg.batch_size}); lower batch_size or use more data."
            )
        params = [p for p in self.model.parameters() if p.requires_grad]
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
        if cfg.resume:
            self._resume_optimizer(cfg.resume)
        self.scaler = (
            torch.amp.GradScaler("cuda") if cfg.precision == "16" and self.device.startswith("cuda") else None
        )
        self.ddp_model: Any = self.model
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
    def run(self) -> Path:
        out = Path(self.cfg.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        patience = 0
        total = self.cfg.epochs * self.steps_per_epoch
        warmup = int(self.cfg.warmup_epochs * self.steps_per_epoch)
        base_lrs = [g["lr"] for g in self.opt.param_groups]
        saved = False
        for epoch in range(self.start_epoch, self.cfg.epochs):
            t0 = time.perf_counter()
            train_loss = self._train_epoch(epoch, total, warmup, base_lrs)
            row: dict[str, Any] = {
                "epoch": epoch + 1,
                "train_loss": train_loss,
                "lr": self.opt.param_groups[0]["lr"],
            }
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
                self._save_state(out, epoch)
                self.log.write(row)
                self.history.append(row)
                if self.cfg.progress:
                    log.warning("epoch %d/%d %s", epoch + 1, self.cfg.epochs, _fmt(row))
                if self.plateau is not None and not math.isnan(score):
                    self.plateau.step(score)
            stop = self.cfg.early_stopping is not None and patience >= self.cfg.early_stopping
            if self._broadcast_stop(stop):
                break
        return out

    def _broadcast_stop(self, stop: bool) -> bool:
        if self.world == 1:
            return stop
        import torch
        import torch.distributed as dist

        flag = torch.tensor([1 if stop else 0])
        dist.broadcast(flag, src=0)
        return bool(flag.item())

    def _train_epoch(self, epoch: int, total: int, warmup: int, base_lrs: list[float]) -> float:

        self.model.train()
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
                logits = self.setup.task.forward(self.ddp_model, batch)
                loss = self.setup.task.loss(logits.float(), batch)
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
            if self.world > 1:
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

        self.model.eval()
        state = self.setup.task.new_state()
        with torch.no_grad():
            for batch in self.val_stream:
                batch = self._to(batch)
                with self._autocast():
                    logits = self.setup.task.forward(self.model, batch)
                    loss = self.setup.task.loss(logits.float(), batch)
                self.setup.task.update(state, logits, batch, float(loss))
        return self.setup.task.summarize(state)

    # -- checkpoints -----------------------------------------------------------------------------------
    def _save(self, out: Path, epoch: int, metrics: dict[str, Any]) -> None:
        from geoarray.checkpoint import save_checkpoint

        task = self.cfg.task
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
            training={
                "epoch": epoch + 1,
                "epochs": self.cfg.epochs,
                "best_metric": metrics.get("score"),
                "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float))},
                "seed": self.cfg.seed,
                "data_identity": self.setup.identity,
                "chip_size": self.cfg.chip_size,
                "world_size": self.world,
            },
        )

    def _state_path(self, out: Path) -> Path:
        return out.with_name(out.name + ".train-state.safetensors")

    def _save_state(self, out: Path, epoch: int) -> None:
        """Last-epoch weights and optimizer state, for ``resume=`` (safetensors + JSON, no pickle)."""
        from safetensors.torch import save_file

        tensors, meta = _flatten_state(self.model, self.opt)
        meta["epoch"] = epoch + 1
        meta["best"] = self.best
        atomic_write(
            self._state_path(out), lambda p: save_file(tensors, str(p), metadata={"state": json.dumps(meta)})
        )

    def _resume(self, path: str) -> None:
        from geoarray.checkpoint import load_checkpoint

        state = self._state_path(Path(path))
        if state.exists():
            from safetensors import safe_open

            with safe_open(str(state), framework="pt") as f:
                meta = json.loads(f.metadata()["state"])
                weights = {k[len("model.") :]: f.get_tensor(k) for k in f.keys() if k.startswith("model.")}
            self.model.load_state_dict(weights)
            self.start_epoch = int(meta["epoch"])
            self.best = float(meta.get("best", -math.inf))
        else:
            ck = load_checkpoint(path)
            self.model.load_state_dict(ck.model.state_dict())
            self.start_epoch = int(ck.meta.get("training", {}).get("epoch", 0))
            self.best = float(ck.meta.get("training", {}).get("best_metric") or -math.inf)
        log.info("resuming from %s at epoch %d", path, self.start_epoch + 1)

    def _resume_optimizer(self, path: str) -> None:
        state = self._state_path(Path(path))
        if not state.exists():
            return
        from safetensors import safe_open

        with safe_open(str(state), framework="pt") as f:
            meta = json.loads(f.metadata()["state"])
            tensors = {k: f.get_tensor(k) for k in f.keys() if k.startswith("opt.")}
        sd = {"param_groups": meta["param_groups"], "state": {}}
        for key, t in tensors.items():
            _, idx, name = key.split(".", 2)
            sd["state"].setdefault(int(idx), {})[name] = t
        for idx, scalars in meta.get("opt_scalars", {}).items():
            sd["state"].setdefault(int(idx), {}).update(scalars)
        self.opt.load_state_dict(sd)


def _flatten_state(model: Any, opt: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    import torch

    tensors = {f"model.{k}": v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sd = opt.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for idx, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt.{idx}.{name}"] = v.detach().cpu().contiguous()
            else:
                scalars.setdefault(str(idx), {})[name] = v
    return tensors, {"param_groups": sd["param_groups"], "opt_scalars": scalars}


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
