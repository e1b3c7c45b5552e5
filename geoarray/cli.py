"""The ``geoarray`` command line."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from geoarray.errors import GeoArrayError

app = typer.Typer(
    name="geoarray",
    help="Deep learning on satellite image cubes: ingest imagery into Zarr cubes, train, predict, export.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
ingest_app = typer.Typer(help="Build a Zarr cube from GeoTIFFs or STAC items.", no_args_is_help=True)
app.add_typer(ingest_app, name="ingest")

F = TypeVar("F", bound=Callable[..., Any])


def _friendly(fn: F) -> F:
    """Turn GeoArrayError into a one-line message and exit code 2 instead of a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except GeoArrayError as e:
            typer.secho(f"error: {e}", err=True, fg=typer.colors.RED)
            raise typer.Exit(2) from None

    return wrapper  # type: ignore[return-value]


@app.callback()
def _main(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False,
) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


Store = Annotated[Path, typer.Argument(help="Path of a Zarr cube.")]


@app.command()
@_friendly
def info(store: Store, var: Annotated[str, typer.Option(help="Imagery variable.")] = "imagery") -> None:
    """Print a cube's dims, bands, dates, CRS, chunking and variables."""
    from geoarray.cube import cube_summary, open_cube

    ds = open_cube(store, var=var)
    typer.echo(f"store            : {store}")
    typer.echo(cube_summary(ds, var=var))


def _write(ds: Any, out: Path, overwrite: bool) -> None:
    from geoarray.cube import cube_summary, write_cube

    write_cube(ds, out, mode="w" if overwrite else "w-", progress=True)
    typer.echo(cube_summary(ds))
    typer.echo(f"wrote {out}")


Out = Annotated[Path, typer.Option("--output", "-o", help="Zarr store to create.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the store if it exists.")]


@ingest_app.command("geotiff")
@_friendly
def ingest_geotiff(
    files: Annotated[list[Path], typer.Argument(help="One multi-band GeoTIFF per date.")],
    output: Out,
    times: Annotated[
        str | None, typer.Option(help="Comma-separated dates, one per file (default: tags or file names).")
    ] = None,
    bands: Annotated[
        str | None, typer.Option(help="Comma-separated band names (default: band descriptions).")
    ] = None,
    sensor: Annotated[str | None, typer.Option(help="Sensor name for every date, e.g. S2 or L8.")] = None,
    labels: Annotated[
        Path | None,
        typer.Option(help="Single-band integer label GeoTIFF, clipped and warped onto the cube's grid."),
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Comma-separated class names, in label-id order (with --labels).")
    ] = None,
    label_nodata: Annotated[
        int | None,
        typer.Option(help="Label value meaning 'unknown' (default: the raster's nodata, else 255)."),
    ] = None,
    overwrite: Overwrite = False,
) -> None:
    """Ingest GeoTIFFs (one per date) into a Zarr cube; other grids are warped onto the first file's.

    With --labels, a label raster becomes the cube's `labels(y, x)` variable, ready for `geoarray fit`.
    """
    from geoarray.io.geotiff import from_geotiff, read_labels

    if (classes or label_nodata is not None) and labels is None:
        raise typer.BadParameter(
            "--classes and --label-nodata need --labels (the label raster they describe)."
        )
    ds = from_geotiff(
        files,
        times=times.split(",") if times else None,
        bands=bands.split(",") if bands else None,
        sensor=sensor,
    )
    if labels is not None:
        ds["labels"] = read_labels(
            labels, ds, classes=classes.split(",") if classes else None, nodata=label_nodata
        )
    _write(ds, output, overwrite)


@ingest_app.command("stac")
@_friendly
def ingest_stac(
    items: Annotated[
        Path, typer.Argument(help="ItemCollection JSON, Item JSON, or catalog (file or folder).")
    ],
    output: Out,
    bands: Annotated[str, typer.Option(help="Comma-separated asset keys to load, e.g. red,green,nir.")],
    resolution: Annotated[float | None, typer.Option(help="Pixel size in CRS units.")] = None,
    crs: Annotated[str | None, typer.Option(help="Output CRS, e.g. EPSG:32633.")] = None,
    bbox: Annotated[str | None, typer.Option(help="minlon,minlat,maxlon,maxlat")] = None,
    engine: Annotated[str, typer.Option(help="odc (default) or stackstac.")] = "odc",
    overwrite: Overwrite = False,
) -> None:
    """Ingest STAC items into a Zarr cube (odc-stac, or stackstac)."""
    from geoarray.errors import STACError
    from geoarray.io.stac import from_stac

    box = None
    if bbox:
        parts = [float(v) for v in bbox.split(",")]
        if len(parts) != 4:
            raise STACError(
                f"--bbox {bbox!r} has {len(parts)} numbers; expected minlon,minlat,maxlon,maxlat."
            )
        box = (parts[0], parts[1], parts[2], parts[3])
    if engine not in ("odc", "stackstac"):
        raise STACError(f"--engine {engine!r}; expected odc or stackstac.")
    ds = from_stac(
        items,
        bands=bands.split(","),
        resolution=resolution,
        crs=crs,
        bbox=box,
        engine=engine,  # type: ignore[arg-type]
    )
    _write(ds, output, overwrite)


@app.command()
@_friendly
def predict(
    store: Store,
    ckpt: Annotated[Path, typer.Option("--ckpt", "-c", help="Checkpoint (.safetensors) from geoarray fit.")],
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="Write into this Zarr store instead (a copy of STORE's cube is made)."
        ),
    ] = None,
    halo: Annotated[
        str, typer.Option(help="Halo in pixels, or 'auto' (the receptive field: seamless).")
    ] = "auto",
    batch_size: Annotated[
        int | None, typer.Option(help="Dates (image models) or pixels per forward pass.")
    ] = None,
    prefix: Annotated[str, typer.Option(help="Prefix of output variable names, e.g. s2_.")] = "",
    overwrite: Annotated[bool, typer.Option(help="Replace outputs that exist in the store.")] = False,
    float16: Annotated[
        bool, typer.Option("--float16", help="Store probabilities/features as float16.")
    ] = False,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    var: Annotated[str, typer.Option(help="Imagery variable.")] = "imagery",
) -> None:
    """Apply a checkpoint blockwise (with a halo) and write its outputs into the cube's Zarr store.

    A run that is interrupted resumes where it stopped when the same command runs again.
    """
    from geoarray.cube import open_cube, write_cube
    from geoarray.errors import PredictError
    from geoarray.predict import predict as run_predict

    if halo != "auto" and not halo.isdigit():
        raise PredictError(f"--halo {halo!r}; expected 'auto' or a number of pixels.")
    cube = open_cube(store, var=var)
    target = store
    if output is not None:
        if not output.exists():
            write_cube(cube, output, var=var, progress=True)
        cube, target = open_cube(output, var=var), output
    t0 = time.perf_counter()
    out = run_predict(
        cube,
        ckpt,
        var=var,
        halo="auto" if halo == "auto" else int(halo),
        batch_size=batch_size,
        device=device,
        prefix=prefix,
        store=target,
        overwrite=overwrite,
        dtype="float16" if float16 else "float32",
        progress=True,
    )
    new = sorted(str(v) for v in out.data_vars if str(v) not in cube.data_vars)
    px = cube.sizes["time"] * cube.sizes["y"] * cube.sizes["x"]
    dt = time.perf_counter() - t0
    typer.echo(
        f"wrote {', '.join(new) or 'nothing new'} to {target} in {dt:.1f} s ({px / dt / 1e6:.2f} Mpx/s)"
    )


@app.command()
@_friendly
def export(
    store: Store,
    variable: Annotated[str, typer.Argument(help="Variable to export, e.g. mask or probabilities.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="GeoTIFF to write (COG).")],
    time_index: Annotated[
        str | None,
        typer.Option("--time", help="Date (YYYY-MM-DD) or index to export; needed for many dates."),
    ] = None,
) -> None:
    """Export one variable (one date) as a Cloud-Optimized GeoTIFF with its georeferencing."""
    from geoarray.cube import _open_zarr
    from geoarray.errors import RasterError
    from geoarray.io.geotiff import export_geotiff

    ds = _open_zarr(store)
    if variable not in ds.data_vars:
        raise RasterError(f"no variable {variable!r} in {store}; it has {sorted(map(str, ds.data_vars))}.")
    da = ds[variable]
    if time_index is None and "time" in da.dims and da.sizes["time"] > 1:
        dates = [str(t)[:10] for t in da["time"].values]
        raise RasterError(f"{variable!r} has {len(dates)} dates {dates}; pass --time with one date or index.")
    if time_index is not None and "time" in da.dims:
        da = (
            da.isel(time=[int(time_index)]) if time_index.lstrip("-").isdigit() else da.sel(time=[time_index])
        )
    path = export_geotiff(da, output)
    typer.echo(f"wrote {path}")


def _parse_kv(items: list[str] | None) -> dict[str, Any]:
    """``["width=16", "encoder=resnet18"]`` -> ``{"width": 16, "encoder": "resnet18"}`` (JSON values)."""
    import json

    from geoarray.errors import TrainError

    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise TrainError(f"--model-kw {item!r}; expected name=value, e.g. --model-kw width=16.")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


@app.command()
@_friendly
def fit(
    store: Store,
    output: Annotated[Path, typer.Option("--output", "-o", help="Checkpoint to write (.safetensors).")],
    task: Annotated[
        str, typer.Option(help="segmentation, classification or pixel_classification.")
    ] = "segmentation",
    model: Annotated[str, typer.Option(help="Registry model name (geoarray models).")] = "unet",
    model_kw: Annotated[
        list[str] | None, typer.Option("--model-kw", help="Model hparam name=value (repeat).")
    ] = None,
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
    log_dir: Annotated[Path | None, typer.Option(help="Folder for metrics.csv (and TensorBoard).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue from this checkpoint's last epoch.")] = None,
    workers: Annotated[int, typer.Option(help="DDP ranks on a local Dask cluster (0: one process).")] = 0,
    scheduler: Annotated[str | None, typer.Option(help="Address of a Dask scheduler for DDP.")] = None,
    regions: Annotated[
        Path | None, typer.Option(help="GeoJSON of chip-label regions (classification).")
    ] = None,
    region_property: Annotated[str | None, typer.Option(help="Property holding the region label.")] = None,
) -> None:
    """Train a model on a cube and write the best epoch as a self-describing checkpoint."""
    from geoarray.cube import open_cube
    from geoarray.train import fit as run_fit

    cube = open_cube(store)
    opts: dict[str, Any] = dict(
        model=model,
        model_kwargs=_parse_kv(model_kw),
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
        out=str(output),
        log_dir=str(log_dir) if log_dir else None,
        resume=str(resume) if resume else None,
        regions=str(regions) if regions else None,
        region_property=region_property,
    )
    t0 = time.perf_counter()
    if workers or scheduler:
        from geoarray.distributed import cluster

        with cluster(scheduler, n_workers=workers or None) as client:
            path = run_fit(cube, task=task, client=client, **opts)
    else:
        path = run_fit(cube, task=task, **opts)
    from geoarray.checkpoint import read_metadata

    tr = read_metadata(path)["training"]
    typer.echo(
        f"wrote {path} (best epoch {tr['epoch']}, score {tr['best_metric']:.4f}) in {time.perf_counter() - t0:.1f} s"
    )


def _score_table(s: dict[str, Any]) -> str:
    lines = [
        f"{'class':<18s} {'IoU':>6s} {'Dice':>6s} {'prec':>6s} {'recall':>6s} {'F1':>6s} {'support':>9s}"
    ]
    for c in s["iou"]:
        vals = [s[k][c] for k in ("iou", "dice", "precision", "recall", "f1")]
        cells = " ".join(f"{v:6.3f}" if v is not None else f"{'-':>6s}" for v in vals)
        lines.append(f"{c:<18s} {cells} {s['support'][c]:9d}")
    lines.append(
        f"{'mean':<18s} {s['mean_iou']:6.3f} {s['mean_dice']:6.3f} {'':6s} {'':6s} {s['mean_f1']:6.3f}"
    )
    lines.append(f"overall accuracy {s['accuracy']:.4f}")
    return "\n".join(lines)


@app.command()
@_friendly
def evaluate(
    store: Store,
    pred: Annotated[str, typer.Option(help="Predicted class variable.")] = "mask",
    truth: Annotated[str, typer.Option(help="Truth variable.")] = "labels",
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the scores as JSON here.")] = None,
) -> None:
    """Score a predicted mask against the truth: per-class IoU, Dice, precision, recall, F1."""
    import json

    import xarray as xr

    from geoarray.cube import open_cube
    from geoarray.errors import CubeError
    from geoarray.metrics import confusion_matrix, scores

    ds = open_cube(store)
    for v in (pred, truth):
        if v not in ds.data_vars:
            raise CubeError(f"no variable {v!r} in {store}; it has {sorted(map(str, ds.data_vars))}.")
    p, t = ds[pred], ds[truth]
    classes = [str(c) for c in (t.attrs.get("classes") or p.attrs.get("classes") or [])]
    nodata = int(t.attrs.get("nodata", 255))
    t = t.broadcast_like(p) if set(p.dims) - set(t.dims) else t
    if "valid" in ds.data_vars and "time" in p.dims:
        t = t.where(ds["valid"], nodata)
    p = p.where(p != int(p.attrs.get("nodata", 255)), nodata)
    if not classes:
        classes = [str(i) for i in range(int(xr.DataArray(t).where(t != nodata).max()) + 1)]
    s = scores(confusion_matrix(p, t, len(classes), ignore_index=nodata), classes)
    typer.echo(_score_table(s))
    if json_out:
        json_out.write_text(json.dumps(s, indent=2))
        typer.echo(f"wrote {json_out}")


@app.command()
@_friendly
def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Folder for the demo's cube, checkpoint and pictures.")
    ] = Path("geoarray-demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
) -> None:
    """The main job on the embedded sample: cube -> Zarr -> fit a UNet -> predict back into Zarr -> IoU + PNGs."""

    from geoarray import plot
    from geoarray.chips import plan_chips
    from geoarray.cube import open_cube, write_cube
    from geoarray.datasets import sample_cube
    from geoarray.metrics import confusion_matrix, scores
    from geoarray.predict import predict as run_predict
    from geoarray.train import fit as run_fit

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    store = out / "sample.zarr"
    typer.echo("1/4 building the sample cube (real Landsat-7 ETM+ scene, planted change) -> " + str(store))
    write_cube(sample_cube(), store, mode="w")
    cube = open_cube(store)
    typer.echo(cube_summary_short(cube))

    typer.echo(f"2/4 training a small UNet ({epochs} epochs, 64 px chips, spatial-block validation)")
    opts = dict(
        model="unet",
        model_kwargs={"width": 16, "depth": 3},
        chip_size=64,
        stride=32,
        epochs=epochs,
        batch_size=16,
        lr=3e-3,
        warmup_epochs=0.5,
        seed=0,
        log_dir=str(out / "log"),
        class_weights="balanced",
    )
    ckpt = run_fit(cube, task="segmentation", out=str(out / "unet.safetensors"), **opts)
    typer.echo(f"    checkpoint: {ckpt}")

    typer.echo("3/4 predicting blockwise back into the Zarr store")
    for v in ("probabilities", "mask", "class"):
        if (store / v).exists():
            import shutil

            shutil.rmtree(store / v)
    res = run_predict(cube, ckpt, store=store, progress=True)

    typer.echo("4/4 scoring and drawing")
    classes = list(res.labels.attrs["classes"])
    plan = plan_chips(cube, chip_size=64, stride=32, val_fraction=0.2, seed=0)
    held = plan.val_mask((cube.sizes["y"], cube.sizes["x"]))
    truth = res.labels.where(res.valid, 255)
    s_all = scores(confusion_matrix(res["mask"], truth, len(classes), ignore_index=255), classes)
    s_held = scores(
        confusion_matrix(res["mask"].where(held, 255), truth, len(classes), ignore_index=255), classes
    )
    typer.echo("held-out tiles (never seen in training):")
    typer.echo(_score_table(s_held))
    typer.echo(f"whole scene: mean IoU {s_all['mean_iou']:.3f}, accuracy {s_all['accuracy']:.3f}")
    last = res.isel(time=-1)
    rgb = plot.false_color(last.imagery, bands=["B3", "B2", "B1"])
    png = plot.overlay(
        rgb,
        {"truth": last.labels.values, "prediction": last["mask"].values},
        classes,
        out / "overlay.png",
        title=f"last date, mean IoU on held-out tiles {s_held['mean_iou']:.2f}",
    )
    plot.curves(
        out / "log" / "metrics.csv", out / "curves.png", keys=["train_loss", "val_loss", "val_mean_iou"]
    )
    typer.echo(f"wrote {png} and {out / 'curves.png'}")
    typer.echo(f"done in {time.perf_counter() - t0:.1f} s")


def cube_summary_short(ds: Any) -> str:
    dates = [str(t)[:10] for t in ds["time"].values]
    return f"    {dict(ds.imagery.sizes)} bands {list(map(str, ds.band.values))} {ds.rio.crs} dates {dates[0]}..{dates[-1]}"


def main() -> None:  # pragma: no cover
    app()
