"""``geoarray fit`` and ``geoarray predict``: train, and write a checkpoint's outputs into a cube."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from geoarray.cli._app import Store, _friendly, app
from geoarray.cli._outputs import _not_a_file


def _parse_kv(items: list[str] | None, flag: str = "--model-kw") -> dict[str, Any]:
    """``["width=16", "encoder=resnet18", "crop_scale=0.5,1"]`` -> ``{"width": 16, "encoder": "resnet18",
    "crop_scale": [0.5, 1]}``: values parsed as JSON when they parse; else a comma-separated value is a list (its
    items parsed the same way), and anything else is kept as a string."""
    from geoarray.errors import TrainError

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            example = "width=16" if flag == "--model-kw" else "backbone_lr=1e-4"
            raise TrainError(f"{flag} {item!r}; expected name=value, e.g. {flag} {example}.")
        k, v = item.split("=", 1)
        out[k] = _json_or_text(v)
        if isinstance(out[k], str) and "," in v:  # crop_scale=0.5,1; heads=arrow_of_time,temporal_association
            out[k] = [_json_or_text(p.strip()) for p in v.split(",") if p.strip()]
    return out


def _json_or_text(v: str) -> Any:
    import json

    try:
        return json.loads(v)
    except json.JSONDecodeError:
        return v


def _parse_ids(text: str | None) -> list[int] | None:
    """``"1,3"`` -> ``[1, 3]``."""
    from geoarray.errors import TrainError

    if text is None:
        return None
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise TrainError(
            f"--positive-classes {text!r}; expected comma-separated class ids such as 1,3."
        ) from None


@contextlib.contextmanager
def _quiet_dask() -> Iterator[None]:
    """Keep dask's INFO chatter (scheduler and nanny start-up, connections) out of a CLI run without --verbose.

    distributed sets its loggers to INFO, and they propagate to the handler the CLI installs on the root
    logger; the worker processes log at WARNING already (LocalCluster's silence_logs).
    """
    import distributed  # noqa: F401  (importing it sets its loggers' levels: do that first)

    lg = logging.getLogger("distributed")
    old = lg.level
    if logging.getLogger().getEffectiveLevel() > logging.INFO:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        lg.setLevel(old)


@app.command()
@_friendly
def fit(
    store: Store,
    output: Annotated[
        str,
        typer.Option(
            "--output",
            "-o",
            help="Checkpoint to write (.safetensors): a path, or an s3:// (fsspec) URL, with credentials from the "
            "environment (AWS_* variables or profile).",
        ),
    ],
    task: Annotated[
        str,
        typer.Option(
            help="segmentation, classification, pixel_classification, barlow_twins, vicreg, invariants, or "
            "linear_probe / finetune (with --init)."
        ),
    ] = "segmentation",
    model: Annotated[
        str | None,
        typer.Option(help="Registry model name (geoarray models); default unet, with --init the init's."),
    ] = None,
    model_kw: Annotated[
        list[str] | None, typer.Option("--model-kw", help="Model hparam name=value (repeat).")
    ] = None,
    task_kw: Annotated[
        list[str] | None,
        typer.Option(
            "--task-kw",
            help="Task option name=value (repeat), e.g. --task-kw backbone_lr=1e-4; a list as JSON or with "
            "commas: --task-kw crop_scale=0.5,1, --task-kw 'heads=[\"arrow_of_time\"]'.",
        ),
    ] = None,
    init: Annotated[
        str | None,
        typer.Option(
            help="Pretrained encoder checkpoint for --task linear_probe or finetune (its model, bands and "
            "normalisation are used): a path or an s3:// (fsspec) URL."
        ),
    ] = None,
    label_fraction: Annotated[
        float,
        typer.Option(help="Train on this fraction (0-1] of the labelled training tiles (at least one tile)."),
    ] = 1.0,
    labels: Annotated[str, typer.Option(help="Label variable in the cube.")] = "labels",
    bands: Annotated[str | None, typer.Option(help="Comma-separated bands (default: all).")] = None,
    chip_size: Annotated[int, typer.Option(help="Chip size in pixels.")] = 64,
    stride: Annotated[int | None, typer.Option(help="Grid step between chips (default: chip size).")] = None,
    epochs: Annotated[int, typer.Option(help="Epochs.")] = 10,
    batch_size: Annotated[int, typer.Option(help="Chips per batch.")] = 16,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    loss: Annotated[str | None, typer.Option(help="ce, focal, bce or bce_dice (default by task).")] = None,
    val_fraction: Annotated[float, typer.Option(help="Fraction of tiles held out.")] = 0.2,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    precision: Annotated[str, typer.Option(help="32, bf16 or 16 (16 needs a GPU).")] = "32",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    log_dir: Annotated[
        str | None, typer.Option(help="Folder (or s3:// URL prefix) for metrics.csv (and TensorBoard).")
    ] = None,
    resume: Annotated[
        str | None, typer.Option(help="Continue from this checkpoint's last epoch (a path or an s3:// URL).")
    ] = None,
    workers: Annotated[int, typer.Option(help="DDP ranks on a local Dask cluster (0: one process).")] = 0,
    scheduler: Annotated[str | None, typer.Option(help="Address of a Dask scheduler for DDP.")] = None,
    regions: Annotated[
        Path | None,
        typer.Option(
            help="Vector file of chip-label regions (classification): GeoPackage, Shapefile, GeoJSON, ..."
        ),
    ] = None,
    region_property: Annotated[str | None, typer.Option(help="Property holding the region label.")] = None,
    region_layer: Annotated[
        str | None, typer.Option(help="Layer of the regions file, when it has several.")
    ] = None,
    min_valid: Annotated[
        float, typer.Option(help="Chip filter: the fraction of valid pixels a chip needs.")
    ] = 0.5,
    min_positive: Annotated[
        int,
        typer.Option(
            help="Chip filter: labelled pixels (not nodata; class 0 counts) a chip needs. Chips with none "
            "are always skipped."
        ),
    ] = 0,
    positive_classes: Annotated[
        str | None,
        typer.Option(help="Comma-separated class ids that --min-positive counts (default: every class)."),
    ] = None,
    keep_state: Annotated[
        bool,
        typer.Option(help="Keep OUTPUT.train-state.safetensors after the run, so --resume can extend it."),
    ] = False,
) -> None:
    """Train a model on a cube and write the best epoch as a self-describing checkpoint.

    After every epoch the optimizer state goes to OUTPUT.train-state.safetensors beside the checkpoint, so an
    interrupted run continues with --resume OUTPUT; a finished run deletes it unless --keep-state.
    """
    from geoarray.cube import open_cube
    from geoarray.training import fit as run_fit

    cube = open_cube(store)
    opts: dict[str, Any] = dict(
        min_valid=min_valid,
        min_positive=min_positive,
        positive_classes=_parse_ids(positive_classes),
        region_layer=region_layer,
        keep_state=keep_state,
        model=model,
        model_kwargs=_parse_kv(model_kw),
        task_kwargs=_parse_kv(task_kw, "--task-kw"),
        init=str(init) if init else None,
        label_fraction=label_fraction,
        labels=labels,
        bands=bands.split(",") if bands else None,
        chip_size=chip_size,
        stride=stride,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        loss=loss,
        val_fraction=val_fraction,
        seed=seed,
        precision=precision,
        device=device,
        out=output,
        log_dir=log_dir or None,
        resume=resume or None,
        regions=str(regions) if regions else None,
        region_property=region_property,
    )
    t0 = time.perf_counter()
    if workers or scheduler:
        from geoarray.distributed import cluster

        with _quiet_dask(), cluster(scheduler, n_workers=workers or None) as client:
            path = run_fit(cube, task=task, client=client, **opts)
    else:
        path = run_fit(cube, task=task, **opts)
    from geoarray.checkpoint import read_metadata

    tr = read_metadata(path)["training"]
    score = "n/a" if tr.get("best_metric") is None else f"{tr['best_metric']:.4f}"
    typer.echo(f"wrote {path} (best epoch {tr['epoch']}, score {score}) in {time.perf_counter() - t0:.1f} s")
    if keep_state:  # the side file's name is the checkpoint's plus a suffix (training.state.state_path)
        typer.echo(f"kept the resume state {path}.train-state.safetensors (delete it when you no longer need --resume)")


@app.command()
@_friendly
def predict(
    store: Store,
    ckpt: Annotated[
        str, typer.Option("--ckpt", "-c", help="Checkpoint (.safetensors) from geoarray fit, a path or an s3:// URL.")
    ],
    output: Annotated[
        str | None,
        typer.Option(
            "--output",
            "-o",
            help="Write into this local Zarr store instead: a copy of STORE's cube (without its outputs) is made.",
        ),
    ] = None,
    halo: Annotated[
        str, typer.Option(help="Halo in pixels, or 'auto' (the receptive field: seamless).")
    ] = "auto",
    batch_size: Annotated[
        int | None, typer.Option(help="Dates (image models) or pixels per forward pass.")
    ] = None,
    prefix: Annotated[
        str, typer.Option(help="Prefix of output names and of their class/feature dim, e.g. s2_.")
    ] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace outputs a previous predict wrote.")] = False,
    float16: Annotated[
        bool, typer.Option("--float16", help="Store probabilities/features as float16.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    var: Annotated[str, typer.Option(help="Imagery variable.")] = "imagery",
    group: Annotated[
        str, typer.Option(help="Chip models: the Zarr group of the store that receives the chip grid.")
    ] = "chips",
    chip_size: Annotated[
        int | None, typer.Option(help="Chip models: chip size in pixels (default: the training chip size).")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="32, bf16 or 16: the model under autocast (16 needs a GPU; bf16 pays off on GPUs "
        "and CPUs with AVX512-BF16/AMX).")
    ] = "32",
) -> None:
    """Apply a checkpoint blockwise (with a halo) and write its outputs into the cube's Zarr store.

    A run that is interrupted resumes where it stopped when the same command runs again. Whole-series models
    (pixel_*, attention_unet) read every date of a block in one task: memory grows with the number of dates.
    Chip models (resnet18/50 classifiers and encoders) give one class or embedding per chip: their chip grid is
    written into the group --group of the store (see geoarray.predict_chips).
    """
    from geoarray.checkpoint import read_metadata
    from geoarray.cube import open_cube
    from geoarray.errors import PredictError
    from geoarray.predict import _predict

    if halo != "auto" and not halo.isdigit():
        raise PredictError(f"--halo {halo!r}; expected 'auto' or a number of pixels.")
    _not_a_file(store)
    copy = _local_output(output)
    if read_metadata(ckpt)["input"].get("kind") == "chip":
        from geoarray._chip_predict import predict_chips

        t0 = time.perf_counter()
        out = predict_chips(
            open_cube(store, var=var),
            ckpt,
            chip_size=chip_size,
            var=var,
            device=device,
            store=copy if copy is not None else store,
            group=group,
            overwrite=overwrite,
            dtype="float16" if float16 else "float32",
            progress=True,
            batch_size=batch_size or 64,
        )
        dims = ", ".join(f"{d}={n}" for d, n in out.sizes.items())
        typer.echo(
            f"wrote {sorted(map(str, out.data_vars))} ({dims}; chips of {out.attrs.get('chip_size', chip_size)} px) "
            f"to group {group!r} of {output or store} in {time.perf_counter() - t0:.1f} s"
        )
        return
    opts: dict[str, Any] = dict(
        var=var,
        halo="auto" if halo == "auto" else int(halo),
        batch_size=batch_size,
        device=device,
        outputs=None,
        prefix=prefix,
        overwrite=overwrite,
        dtype="float16" if float16 else "float32",
        threshold=0.5,
        precision=precision,
        rechunk_time=True,  # whole-series models get each block's dates in one task (the CLI cannot rechunk)
    )
    cube = open_cube(store, var=var)
    target: str | Path = store
    if copy is not None:
        if not copy.exists():
            _predict(_inputs(cube), ckpt, store=None, progress=False, **opts)  # every check, before the copy
            _copy_inputs(cube, copy, var)
        src, target = cube, copy
        cube = open_cube(copy, var=var)
        _check_copy(src, cube, store, copy, var)
    t0 = time.perf_counter()
    _, report = _predict(cube, ckpt, store=target, progress=True, **opts)
    assert report is not None  # predict with store= always reports what it wrote
    dt = time.perf_counter() - t0
    px = cube.sizes["time"] * cube.sizes["y"] * cube.sizes["x"]
    done = report.blocks_written / max(1, report.blocks_written + report.blocks_present)
    typer.echo(f"wrote {report.summary()} in {dt:.1f} s ({px * done / dt / 1e6:.2f} Mpx/s)")


def _local_output(output: str | None) -> Path | None:
    """--output is copied under a temporary name and renamed when whole; object storage has no rename, and a
    copy cut short there would pass for a whole one (its missing chunks read as fill)."""
    from geoarray._storage import is_url
    from geoarray.errors import StoreError

    if output is not None and is_url(output):
        raise StoreError(
            f"--output {str(output)!r} is on object storage; expected a local path (the copy of STORE is renamed "
            "into place when whole, which object storage cannot do). Predict into STORE itself (no --output), "
            "or copy the cube there first."
        )
    return None if output is None else Path(output)


def _inputs(cube: Any) -> Any:
    """The cube without predict's outputs (and the class/feature coords only they used)."""
    outputs = [n for n, v in cube.data_vars.items() if "checkpoint_sha256" in v.attrs]
    rest = cube.drop_vars(outputs)
    used = {d for v in rest.data_vars.values() for d in v.dims}
    return rest.drop_vars([c for c in rest.coords if c in rest.dims and c not in used])


def _copy_inputs(cube: Any, output: Path, var: str) -> None:
    """Write the cube's inputs to ``output`` under a temporary name, renamed when complete."""
    import os
    import shutil
    import uuid

    from geoarray.cube import write_cube

    tmp = output.with_name(f".{output.name}.tmp-{uuid.uuid4().hex[:8]}")
    chunk = int(cube[var].chunks[2][0]) if cube[var].chunks else 512
    try:
        write_cube(_inputs(cube), tmp, var=var, chunk=chunk, progress=True)
        os.rename(tmp, output)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _check_copy(src: Any, copy: Any, store: str, output: Path, var: str) -> None:
    """An --output store that exists must hold STORE's cube: same bands, dates and grid."""
    from geoarray.cube import _grid_mismatch
    from geoarray.errors import StoreError

    problem = _grid_mismatch(copy, src[[var]])
    if problem is None and list(map(str, copy["band"].values)) != list(map(str, src["band"].values)):
        problem = f"its bands {list(map(str, copy['band'].values))} differ from {list(map(str, src['band'].values))}"
    if problem:
        raise StoreError(
            f"--output {str(output)!r} exists but is not a copy of {str(store)!r}: {problem}. Pass a new path "
            "for --output, or remove the old one."
        )
