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
