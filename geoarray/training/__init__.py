"""Training: ``geoarray.fit(cube, task=..., model=...)`` -> the best checkpoint's path.

The package reads top-down, and imports only go down:

- :mod:`.config`: :class:`FitConfig`, every option, checked before any work;
- :mod:`.protocols`: ``init=`` (a pretrained encoder checked against the run and made its model) and
  ``label_fraction`` (training chips of a fraction of the labelled tiles);
- :mod:`.prepare`: bands, classes, chip plan and normalisation statistics (:class:`Setup`);
- :mod:`.loop`: the epoch loop (plain PyTorch), shared by one process and each DDP rank;
- :mod:`.state`: the resume side file (safetensors + JSON);
- :mod:`.files`: where the checkpoint, side file and log_dir go (a local path, or uploaded to object storage);
- :mod:`.ddp`: one DDP rank per Dask worker.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import xarray as xr

from geoarray.training.config import FitConfig, Precision, Schedule

__all__ = ["FitConfig", "fit"]


def fit(
    cube: xr.Dataset,
    *,
    task: str,
    # model
    model: str | None = None,
    model_kwargs: dict[str, Any] | None = None,
    task_kwargs: dict[str, Any] | None = None,
    init: str | os.PathLike[str] | None = None,
    # data
    labels: str = "labels",
    bands: Sequence[str] | None = None,
    var: str = "imagery",
    chip_size: int = 64,
    stride: int | None = None,
    mode: Literal["grid", "random"] = "grid",
    times: Literal["each", "all"] | Sequence[int | str] = "each",
    val_fraction: float = 0.2,
    label_fraction: float = 1.0,
    min_valid: float = 0.5,
    min_positive: int = 0,
    positive_classes: Sequence[int] | None = None,
    augment: bool = True,
    regions: str | os.PathLike[str] | Any = None,
    region_property: str | None = None,
    region_layer: str | None = None,
    pixels_per_chip: int = 256,
    sensor: str | None = None,
    # optimisation
    epochs: int = 10,
    batch_size: int = 16,
    lr: float = 1e-3,
    loss: str | None = None,
    multilabel: bool = False,
    class_weights: Literal["balanced"] | Sequence[float] | None = None,
    optimizer: Literal["adamw", "sgd"] = "adamw",
    weight_decay: float = 1e-4,
    schedule: Schedule = "cosine",
    warmup_epochs: float = 0.0,
    early_stopping: int | None = None,
    seed: int = 0,
    # runtime
    out: str | os.PathLike[str] = "model.safetensors",
    resume: str | os.PathLike[str] | None = None,
    keep_state: bool = False,
    device: str = "auto",
    precision: Precision = "32",
    client: Any = None,
    log_dir: str | os.PathLike[str] | None = None,
    progress: bool = True,
    readers: int = 2,
    steps_per_epoch: int | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Path | str:
    """Train a model on a cube; save the best epoch as a self-describing checkpoint and return its path (or URL).

    Parameters
    ----------
    cube
        The cube (lazy). Supervised tasks read ``labels`` from it (``labels(y, x)``, ``labels(time, y, x)``, or
        ``labels(class, y, x)`` 0/1 masks for multi-label segmentation).
    task
        ``"segmentation"``, ``"classification"`` (chip labels from ``regions=`` + ``region_property=``) or
        ``"pixel_classification"`` (pixel time series), or ``"barlow_twins"`` (self-supervised, on pixel
        time-series backbones or chip encoders; no labels needed; the checkpoint's output is ``features``), or
        ``"vicreg"`` (self-supervised, on ``resnet18`` / ``resnet50`` chip encoders, which then output their
        pooled embedding: ``num_classes`` defaults to 0 for both self-supervised tasks). The evaluation
        protocols on a pretrained encoder (``init=``): ``"linear_probe"`` (the encoder frozen, BatchNorm
        statistics included; only a linear head trains) and ``"finetune"`` (the whole model trains). On a
        ``pixel_*`` encoder they train like ``"pixel_classification"`` on ``labels``, on a ``resnet18/50``
        encoder like ``"classification"`` on ``regions=``; the checkpoint is that task's ordinary classifier
        (``predict`` writes ``mask`` and ``probabilities``), and its ``training`` provenance records
        ``protocol``, ``init`` and ``init_sha256``.
    task_kwargs
        Options of the task. ``"barlow_twins"``: ``lambd`` (off-diagonal weight, default 10 / projector_dim),
        ``view_dates`` (valid dates per view; default half the cube's dates; pixels with fewer are skipped and
        counted), ``noise`` (band noise std in normalised units, 0.05), ``projector_dim`` (128); with
        ``log_dir``, ``cross_correlation_epochNNN.npy`` per epoch and ``cross_correlation.png``; the collapse watch's
        ``collapse_rank`` (1.5), ``collapse_std`` (1e-4) and ``diverge_rms`` (1e3): a run whose end-of-epoch
        embeddings fall below either of the first two (collapse) or above the last (divergence) ends in a
        TrainError, and no checkpoint of it is kept. ``"finetune"``: ``backbone_lr`` (the encoder's learning
        rate; default ``lr / 10``, the head trains at ``lr``; the schedule scales both).
        ``"invariants"`` (seed 000; ``model="unet"``, whose ``model_kwargs`` set the backbone's depth, width
        and dropout; chips take every date): ``heads`` (any of ``"arrow_of_time"``,
        ``"temporal_association"``, ``"augmentation_association"``; default all; the first two need >= 2
        dates), ``feature_dim`` (64), ``head_dim`` (8), ``pca_dim`` (0: no PCA features), ``margin`` (1.0,
        of the triplet losses), ``jitter`` (0.1) and ``noise`` (0.05) of the photometric view,
        ``negative_shift`` (0.5 of the chip: how far "another place" is), and the collapse watch's options
        as above. The checkpoint holds the backbone and its heads (model ``pretext_unet``); see
        :mod:`geoarray.tasks.invariants`.
        ``"vicreg"``: ``sim_coeff`` / ``std_coeff`` / ``cov_coeff`` (invariance, variance and covariance
        weights, 25 / 25 / 1; under DDP the variance and covariance terms see every rank's rows),
        ``projector_dim`` (512) and ``projector_depth`` (3) of the expander, the collapse watch's options
        as above, and the chip views (also ``"barlow_twins"`` on a chip encoder): ``positives``
        (``"augment"``: two augmentations of each chip; ``"temporal"``: the same place on two different dates
        with at least ``min_valid_date`` (0.5) of their pixels valid, each augmented, which needs at least 2
        dates), and the augmentations, valid for any bands: ``crop_scale`` (area range of the random crop,
        resized back, (0.35, 1)), flips and 90° rotations, per-band ``brightness`` (0.4) and ``contrast``
        (0.4) with probability ``jitter_p`` (0.8), Gaussian blur with probability ``blur_p`` (0.5) and
        ``blur_sigma`` (0.1, 2) px, and ``noise`` (0.05).
    init
        For ``"linear_probe"`` / ``"finetune"`` (and only them): a checkpoint of a feature encoder (e.g. from
        ``task="barlow_twins"``). The run builds its model (``model`` and ``model_kwargs`` may be left out;
        given, they must match it), loads every weight but the head's, and normalises with the checkpoint's
        band statistics, not new ones. Its bands, by name and in order, are the run's (``bands=`` may be left
        out; given, it must equal them), and the cube must have them.

    model, model_kwargs
        A registry name (``geoarray.models.list_models()``; default ``"unet"``, or for ``init=`` the init's
        model, and a model named that differs from it, ``"unet"`` included, is refused) and its
        hyper-parameters; ``in_channels`` and
        ``num_classes`` are filled in from the bands and classes.

    labels, bands, var
        The label variable, the bands to use (default: all, in cube order) and the imagery variable.
    chip_size, stride, mode, times
        Chips: size in pixels (a multiple of the model's stride), grid step (default: ``chip_size``),
        ``"grid"`` or ``"random"`` windows, and which dates make a chip (``"each"``, ``"all"``, or a list of
        indices or dates such as ``["2021-05-01"]``).
    val_fraction
        Fraction of spatial tiles held out for validation (the best epoch is chosen on them).
    label_fraction
        Supervised tasks: train on the chips of ``max(1, round(label_fraction * n))`` of the ``n`` training
        tiles that hold labelled chips (seeded by ``seed``); a fraction that rounds to no tile still keeps one.
        The checkpoint records ``label_tiles`` and ``labelled_train_tiles`` under ``training``. Validation
        tiles are not thinned.
    min_valid, min_positive, positive_classes
        Chip filters. ``min_valid``: the fraction of valid pixels (``valid`` and finite imagery) a chip needs.
        ``min_positive``: how many *labelled* pixels a chip needs: pixels whose label is not the labels'
        ``nodata``, on a date where they are valid. Class 0 counts like any other class, so a chip labelled only
        with class 0 is kept; pass ``positive_classes`` (class ids) to count only those classes (seed 003's
        filter: ``min_positive=50, positive_classes=[1]``); ``positive_classes`` alone (``min_positive`` left
        at 0) means ``min_positive=1``: chips that hold at least one pixel of those classes. Chips without a
        single labelled pixel are always skipped, whatever ``min_positive`` is: with sparse labels (a few
        polygons rasterised onto a scene) most chips have none, and a batch of them has nothing to learn from.
    augment
        Random flips, 90° rotations and radiometric jitter of training chips.
    regions, region_property, region_layer
        Vector regions for ``task="classification"``: a file GDAL reads (GeoPackage, Shapefile, GeoJSON,
        FlatGeobuf, ...; read with pyogrio in the layer's own CRS) or an object with ``__geo_interface__`` and
        ``.crs`` (a GeoDataFrame), the property that holds each region's class, and the layer of a
        multi-layer file. GeoParquet needs a GDAL built with Parquet, which pyogrio's wheels are not: pass
        ``geopandas.read_parquet(path)`` instead.
    pixels_per_chip
        Pixels sampled per window for ``pixel_classification``.
    sensor
        Recorded in the checkpoint; predict then runs only on dates of that sensor.

    epochs, batch_size, lr
        Epochs, chips per batch and the peak learning rate.
    loss
        ``"ce"``, ``"focal"``, ``"bce"`` or ``"bce_dice"`` (default by task).
    multilabel
        Sigmoid outputs, one per class (implied by ``labels(class, y, x)``).
    class_weights
        ``"balanced"`` (inverse square root of class frequency) or one weight per class.
    optimizer, weight_decay, schedule, warmup_epochs
        ``"adamw"`` or ``"sgd"``; ``"cosine"``, ``"step"``, ``"plateau"`` or ``"constant"``, after a linear
        warm-up of ``warmup_epochs``.
    early_stopping
        Stop after this many epochs without a better validation score.
    seed
        Seeds the chip plan, the split, the shuffle, augmentation and the model's initialisation. The
        caller's torch generator is left as it was.

    out
        The checkpoint to write (atomically); the best epoch is kept. A local path, or an fsspec URL
        (``"s3://bucket/run/model.safetensors"``) with ``storage_options``: the run then writes into a local
        temporary folder and, after each epoch's saves, uploads every finished file (checkpoint, side file,
        ``log_dir``'s files) with one ``put`` each. An object store shows an object whole or not at all, so a
        reader never sees half a checkpoint; a killed run leaves the last uploaded epoch's files there.
    resume, keep_state
        Continue from checkpoint ``resume``: its side file ``<resume>.train-state.safetensors`` restores the
        last epoch's weights, optimizer and schedule, so a run of 4 epochs equals a run of 2 resumed to 4. The
        side file is written after every epoch; a finished run deletes it unless ``keep_state=True``.
        ``resume`` may be a URL (the checkpoint and its side file are downloaded first): ``out=URL,
        resume=URL`` continues a killed run in object storage.
    device, precision
        ``"auto"``, ``"cpu"``, ``"cuda"``; ``"32"``, ``"bf16"`` (autocast) or ``"16"`` (GPU only).
    client
        A ``distributed.Client``: train with one DDP rank per worker (gloo on CPU, nccl on GPU).
    log_dir
        Folder for ``metrics.csv`` (and TensorBoard when it is installed), or a URL prefix (uploaded after each
        epoch, as ``out``).
    progress
        A progress bar per epoch. Epoch summaries go to the ``geoarray.training`` logger at INFO level.
    readers, steps_per_epoch
        Background reader threads; an optional cap on steps per epoch (for pixel streams, on validation
        batches per epoch too: their batches are ``batch_size`` pixels).
    storage_options
        fsspec options of the ``out`` / ``resume`` / ``log_dir`` URLs (s3fs: ``{"key": ..., "secret": ...,
        "client_kwargs": {"endpoint_url": ...}}``; without them the AWS environment variables or profile). Under
        DDP each rank downloads ``resume`` itself and only rank 0 uploads. A cube in object storage is opened
        with its own options (``open_cube(url, storage_options=...)``).

    Returns
    -------
    pathlib.Path or str
        The best checkpoint (written atomically): its path, or its URL (a str) when ``out`` is a URL.

    Raises
    ------
    TrainError
        Before any work: bad options (named, with the expected range), paths that cannot be written (URLs
        included: a missing or read-only bucket; ``storage_options`` without a URL), missing
        labels, labels on another grid, labels that cannot train (float or bool, nodata everywhere, a single
        class, negative ids, ids beyond ``attrs["classes"]``), chips that don't fit, a model that does not fit
        the task (e.g. ``unet`` for ``"classification"``) or the cube's number of dates, class counts that
        don't match the model, unreadable or non-overlapping regions, every chip filtered out, no training
        tiles, an ``init`` that is not a pixel or chip feature encoder or whose model, hparams or bands differ
        from the run's. During training: a NaN loss (named by epoch and step; nothing is saved from a NaN model).
    CheckpointError
        ``init`` is not a readable geoarray checkpoint.

    Warns
    -----
    GeoArrayWarning
        A band that float32 normalisation cannot serve (an unmasked fill value such as 1e30, an undeclared
        nodata of 0, no valid value), label ids that look like codes rather than indices, or no validation
        chip left after the filters.

    Examples
    --------
    >>> ckpt = geoarray.fit(cube, task="segmentation", model="unet", chip_size=64, epochs=5,
    ...                     batch_size=8, lr=1e-3, out="unet.safetensors")  # doctest: +SKIP
    """
    opts = dict(locals())
    opts.pop("cube")
    opts.pop("client")
    opts["model"] = "unet" if model is None else model
    opts["model_kwargs"] = dict(model_kwargs or {})
    opts["task_kwargs"] = dict(task_kwargs) if isinstance(task_kwargs, dict) else (task_kwargs or {})
    opts["bands"] = list(bands) if bands is not None else None
    if positive_classes is not None and not isinstance(positive_classes, (str, bytes)):
        opts["positive_classes"] = list(positive_classes)
    if class_weights is not None and not isinstance(class_weights, str):
        opts["class_weights"] = [float(w) for w in class_weights]
    for key in ("out", "resume", "log_dir", "init"):
        if opts[key] is not None:
            opts[key] = str(opts[key])
    if isinstance(storage_options, dict):
        opts["storage_options"] = dict(storage_options)
    cfg = FitConfig(**opts)
    return run(cube, cfg, client=client, model_given=model is not None)


def run(cube: xr.Dataset, cfg: FitConfig, *, client: Any = None, model_given: bool = False) -> Path | str:
    """Train with a ready :class:`FitConfig` (what :func:`fit` does after checking its options).
    ``model_given``: ``cfg.model`` was named by the caller, so with ``init=`` it must be the init's model
    (left out, fit's default ``"unet"`` stands for "the init's")."""
    from geoarray._preprocess import declared_valid
    from geoarray.cube import conform_cube
    from geoarray.training.prepare import _device, _labels_of, prepare
    from geoarray.training.protocols import resolve_init

    _check_paths(cfg)
    cfg = resolve_init(cube, cfg, model_given=model_given)  # the encoder's model and bands, checked
    if client is None:
        _device(cfg.device)  # a wrong device fails now, not after the statistics pass
    _labels_of(cube, cfg)  # first: its message says how to align labels, which is the usual fix
    cube = conform_cube(cube, var=cfg.var)  # dims by name: another order is transposed (lazily)
    if "valid" not in cube.data_vars:  # a declared nodata (e.g. from rioxarray) marks pixels, as in predict
        declared = declared_valid(cube[cfg.var], [str(b) for b in cube["band"].values])
        cube = cube if declared is None else cube.assign(valid=declared)
    setup = prepare(cube, cfg)
    if client is not None:
        from geoarray.training.ddp import fit_ddp

        return fit_ddp(client, cube, cfg, setup)
    from geoarray.training.loop import Trainer

    return Trainer(cube, cfg, setup).run()


def _check_paths(cfg: FitConfig) -> None:
    """Paths that would fail only after training: refuse them before the first step."""
    from geoarray.errors import TrainError
    from geoarray.training.files import check_remote_paths

    urls = check_remote_paths(cfg)  # URLs: the bucket is there and takes a write, resume= exists
    out = Path(cfg.out)
    if "out" not in urls:
        if out.is_dir():
            raise TrainError(
                f"out={cfg.out!r} is a directory; expected the path of a checkpoint file to write, e.g. "
                f"{str(out / 'model.safetensors')!r}."
            )
        blocking = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
        if blocking is not None:
            raise TrainError(f"out={cfg.out!r}: {str(blocking)!r} is a file, not a folder. Choose another path.")
    log_dir = cfg.log_dir
    if log_dir is not None and "log_dir" not in urls and Path(log_dir).exists() and not Path(log_dir).is_dir():
        raise TrainError(f"log_dir={cfg.log_dir!r} is a file; expected a folder for metrics.csv.")
    if cfg.resume is not None and "resume" not in urls and not Path(cfg.resume).is_file():
        raise TrainError(
            f"resume={cfg.resume!r} does not exist; expected the checkpoint of an earlier run (its side file "
            "<checkpoint>.train-state.safetensors, if there, restores the optimizer too)."
        )
