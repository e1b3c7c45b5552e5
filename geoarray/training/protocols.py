"""Evaluation protocols on a pretrained encoder (``task="linear_probe"`` / ``"finetune"`` with ``init=``), and
``label_fraction``.

Along the data flow: :func:`resolve_init` checks the init checkpoint against the run before any work and
makes the run's model and bands its own; :func:`as_task` names the supervised task whose labels, checks and
batches the run uses; :func:`thin_by_tile` keeps the training chips of a fraction of the labelled training
tiles; :func:`load_encoder` puts the encoder's weights into the new model (every tensor but the head's).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import xarray as xr

from geoarray._storage import is_url
from geoarray.errors import TrainError
from geoarray.training.config import PROTOCOLS, FitConfig

__all__ = ["as_task", "load_encoder", "protocol_setup", "resolve_init", "thin_by_tile"]

#: encoder input kind -> the supervised task a protocol run on it is
_AS_TASK = {"pixels": "pixel_classification", "chip": "classification"}
_MISSING = object()
log = logging.getLogger(__name__)


def init_options(cfg: FitConfig) -> dict[str, Any] | None:
    """The ``storage_options`` that reach ``cfg.init``: fit's own, when init is a URL (``s3://…``)."""
    return cfg.storage_options if cfg.init is not None and is_url(str(cfg.init)) else None


def _meta(cfg: FitConfig) -> dict[str, Any]:
    from geoarray.checkpoint import read_metadata

    # header only; CheckpointError for a file that is not a checkpoint
    return read_metadata(str(cfg.init), storage_options=init_options(cfg))


def as_task(cfg: FitConfig) -> str:
    """``cfg.task``, or for a protocol the supervised task of its encoder's input kind."""
    if cfg.task not in PROTOCOLS or cfg.init is None:
        return cfg.task
    return _AS_TASK.get(str(_meta(cfg)["input"].get("kind")), cfg.task)


def resolve_init(cube: xr.Dataset, cfg: FitConfig, *, model_given: bool = False) -> FitConfig:
    """Check ``cfg.init`` against the run and return the config with the encoder's model, hparams (all but
    ``num_classes``, which the labels set) and bands. Raises before any work. ``model_given``: the caller
    named ``cfg.model`` (else ``"unet"``, fit's default, stands for "the init's model")."""
    if cfg.init is None:
        return cfg
    meta = _meta(cfg)
    where = f"init={cfg.init!r}"
    made, inp = meta["model"], meta["input"]
    name, hp, kind = str(made["name"]), dict(made["hparams"]), inp.get("kind")
    if kind not in _AS_TASK:
        raise TrainError(
            f"{where} is a {meta['task']!r} checkpoint of {name!r}, a model of {kind!r} inputs; task {cfg.task!r} "
            "needs a feature encoder of pixel time series (pixel_mlp, pixel_cnn, pixel_transformer, e.g. from "
            "task='barlow_twins') or of chips (resnet18, resnet50). Pass init= such a checkpoint."
        )
    # "unet" is fit's default model and never a feature encoder: left at it, the model comes from init
    if cfg.model != name and (model_given or cfg.model != "unet"):
        raise TrainError(
            f"model={cfg.model!r}, but {where} holds a {name!r} encoder. Drop model= (it comes from init) or "
            f"pass model={name!r}."
        )
    clash = {k: v for k, v in cfg.model_kwargs.items() if k != "num_classes" and hp.get(k, _MISSING) != v}
    if clash:
        theirs = {k: hp.get(k, "(none)") for k in clash}
        raise TrainError(
            f"model_kwargs {clash} differ from the hparams {theirs} of the {name!r} encoder in {where}; the "
            "encoder's weights need its own. Drop them from model_kwargs (they come from init)."
        )
    want = [str(b) for b in inp["bands"]]
    present = [str(b) for b in cube["band"].values]
    if cfg.bands is not None and list(cfg.bands) != want:
        raise TrainError(
            f"bands={list(cfg.bands)}, but the encoder in {where} was trained on bands {want}, in that order; "
            f"it takes those bands. Drop bands= (they then come from init) or pass bands={want}."
        )
    missing = [b for b in want if b not in present]
    if missing:
        raise TrainError(
            f"the encoder in {where} was trained on bands {want}, but the cube has bands {present} (it lacks "
            f"{missing}). Use a cube with the encoder's bands, or init= an encoder trained on this cube's bands."
        )
    if float(inp.get("scale", 1.0)) != 1.0:
        raise TrainError(
            f"{where} scales its input by {inp['scale']} before normalising, which fit does not do; expected a "
            "checkpoint with scale 1 (as fit writes). Re-save the encoder with save_checkpoint(..., scale=1)."
        )
    _check_kind(cube, cfg, name, kind, hp, where)
    hp.pop("num_classes", None)
    # the encoder's sensor too: predict then runs on that sensor's dates, like the encoder's own checkpoint
    return dataclasses.replace(
        cfg, model=name, model_kwargs=hp, bands=want, sensor=cfg.sensor or inp.get("sensor")
    )


def _check_kind(
    cube: xr.Dataset, cfg: FitConfig, name: str, kind: str, hp: dict[str, Any], where: str
) -> None:
    """Labels of the encoder's kind (chip labels from regions, pixel labels from the cube) and its dates."""
    regions = cfg.regions is not None or cfg.region_property is not None
    if kind == "chip" and not (cfg.regions is not None and cfg.region_property):
        raise TrainError(
            f"{where} holds a chip encoder ({name!r}), whose labels are one class per chip: task {cfg.task!r} "
            "needs regions= (a vector file) and region_property= (its label field) for it."
        )
    if kind == "pixels" and regions:
        raise TrainError(
            f"{where} holds a pixel time-series encoder ({name!r}), trained on the cube's {cfg.labels!r} "
            "raster; regions= label whole chips (for chip encoders). Drop regions= / region_property=."
        )
    n = hp.get("num_timesteps")
    if n is not None and n != cube.sizes["time"]:
        raise TrainError(
            f"the {name!r} encoder in {where} takes exactly {n} dates, and the cube has {cube.sizes['time']}. "
            f"Select {n} dates (cube.isel(time=...)), or use an encoder that takes any number of dates "
            "(pixel_cnn, pixel_transformer)."
        )


def init_provenance(cfg: FitConfig) -> dict[str, Any]:
    """What the checkpoint records of the init: the protocol, the path and its sha256 (which the trainer checks
    again when it loads the weights), and the input statistics the run normalises with (the encoder's)."""
    from geoarray.checkpoint import file_sha256

    inp = _meta(cfg)["input"]
    return {
        "protocol": cfg.task,
        "init": str(cfg.init),
        "init_sha256": file_sha256(str(cfg.init), storage_options=init_options(cfg)),
        "mean": [float(v) for v in inp["mean"]],
        "std": [float(v) for v in inp["std"]],
        "date_encoding": inp.get("date_encoding"),
    }


def protocol_setup(cfg: FitConfig, plan: Any, *, supervised: bool) -> dict[str, Any]:
    """Thin ``plan`` to ``cfg.label_fraction`` of its labelled training tiles, and return the provenance the
    checkpoint records (with the init's statistics and date encoding under ``mean``, ``std``,
    ``date_encoding``, which prepare takes out)."""
    out = init_provenance(cfg) if cfg.init is not None else {}
    if supervised:
        kept, n = thin_by_tile(plan, cfg.label_fraction, cfg.seed)
        out.update(label_fraction=cfg.label_fraction, label_tiles=kept, labelled_train_tiles=n)
        log.info(
            "training on %d of %d labelled training tiles (label_fraction=%g)", kept, n, cfg.label_fraction
        )
    elif cfg.label_fraction < 1:
        raise TrainError(
            f"label_fraction={cfg.label_fraction} keeps a fraction of the labelled tiles of a supervised run; "
            f"task {cfg.task!r} trains without labels. Drop label_fraction."
        )
    return out


def thin_by_tile(plan: Any, fraction: float, seed: int) -> tuple[int, int]:
    """Keep the training chips of ``max(1, round(fraction * n))`` of the ``n`` training tiles of the spatial
    split that still hold a chip after the filters (the labelled ones), drawn with ``seed``; returns
    ``(kept, n)``. A fraction so small that it rounds to no tile keeps one."""
    tiles = plan.tiles
    y0, y1, x0, x1 = (np.array([getattr(t, a) for t in tiles]) for a in ("y0", "y1", "x0", "x1"))
    # a chip is planned inside its tile, so its corner names the tile
    of = [int(np.flatnonzero((y0 <= w.y) & (w.y < y1) & (x0 <= w.x) & (w.x < x1))[0]) for w in plan.train]
    used = sorted(set(of))
    k = max(1, round(fraction * len(used)))
    if k < len(used):
        keep = set(np.random.default_rng(seed).choice(used, size=k, replace=False).tolist())
        plan.train = [w for w, t in zip(plan.train, of, strict=True) if t in keep]
    return k, len(used)


def load_encoder(
    model: Any, path: str, sha256: str | None, *, storage_options: dict[str, Any] | None = None
) -> None:
    """Copy every tensor of the checkpoint's model but the head's (``head.*``) into ``model``, buffers too.
    ``path`` may be a URL, read with ``storage_options``."""
    from geoarray.checkpoint import load_checkpoint

    so = storage_options if is_url(path) else None
    ck = load_checkpoint(path, storage_options=so)  # validated (checksum, metadata, shapes); never unpickles
    if sha256 is not None and ck.sha256 != sha256:
        raise TrainError(
            f"init={path!r} changed after the run was prepared (sha256 {ck.sha256[:12]}..., expected "
            f"{sha256[:12]}...); run fit again."
        )
    enc = {k: v for k, v in ck.model.state_dict().items() if not k.startswith("head.")}
    missing, unexpected = model.load_state_dict(enc, strict=False)
    left = [k for k in missing if not k.startswith("head.")]
    if left or unexpected:
        raise TrainError(
            f"the encoder in init={path!r} does not fit the model (missing {left[:5]}, unexpected "
            f"{list(unexpected)[:5]}); expected the same architecture and hparams."
        )
