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
    overwrite: Overwrite = False,
) -> None:
    """Ingest GeoTIFFs (one per date) into a Zarr cube; other grids are warped onto the first file's."""
    from geoarray.io.geotiff import from_geotiff

    ds = from_geotiff(
        files,
        times=times.split(",") if times else None,
        bands=bands.split(",") if bands else None,
        sensor=sensor,
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
    new = [str(v) for v in out.data_vars if str(v) not in cube.data_vars]
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


@app.command()
@_friendly
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="Folder for the demo's cube and pictures.")] = Path(
        "geoarray-demo"
    ),
) -> None:
    """Run the main job on the embedded sample: build the cube and write it to Zarr."""
    from geoarray.cube import cube_summary, open_cube, write_cube
    from geoarray.datasets import sample_cube

    t0 = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    store = out / "sample.zarr"
    typer.echo("building the sample cube (real Landsat-7 ETM+ scene + planted change) ...")
    ds = sample_cube()
    write_cube(ds, store, mode="w", progress=True)
    cube = open_cube(store)
    typer.echo(f"store            : {store}")
    typer.echo(cube_summary(cube))
    typer.echo(f"done in {time.perf_counter() - t0:.1f} s")


def main() -> None:  # pragma: no cover
    app()
