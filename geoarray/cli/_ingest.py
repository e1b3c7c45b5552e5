"""``geoarray ingest geotiff|stac``: build a Zarr cube."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from geoarray.cli._app import _friendly, cube_summary, ingest_app, split_dates, split_list


def _write(ds: Any, out: Path, overwrite: bool) -> None:
    from geoarray.cube import write_cube
    from geoarray.errors import StoreExistsError

    if out.exists() and not overwrite:  # write_cube's own message names its mode= argument
        raise StoreExistsError(f"{str(out)!r} already exists; pass --overwrite to replace it, or another --output.")
    write_cube(ds, out, mode="w" if overwrite else "w-", progress=True)
    typer.echo(cube_summary(ds))
    typer.echo(f"wrote {out}")


Out = Annotated[Path, typer.Option("--output", "-o", help="Zarr store to create.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace the store if it exists.")]


@ingest_app.command("geotiff")
@_friendly
def ingest_geotiff(
    files: Annotated[
        list[Path], typer.Argument(help="One multi-band GeoTIFF per date (with --stack band: one per band).")
    ],
    output: Out,
    times: Annotated[
        str | None,
        typer.Option(
            help="Comma-separated dates (YYYY-MM-DD), one per file; one date with --stack band (default: tags/names)."
        ),
    ] = None,
    stack: Annotated[
        str,
        typer.Option(help="time: one multi-band file per date; band: the files are the bands of one date."),
    ] = "time",
    nodata: Annotated[
        str | None,
        typer.Option(
            help="Fill value for files whose nodata tag is missing or wrong (e.g. 0 for Landsat): one number, or "
            "one per band comma-separated. Pixels where every band equals it are marked invalid."
        ),
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
    from geoarray.io.geotiff import from_geotiff, parse_nodata, read_labels

    if (classes or label_nodata is not None) and labels is None:
        raise typer.BadParameter(
            "--classes and --label-nodata need --labels (the label raster they describe)."
        )
    ds = from_geotiff(
        files,
        times=split_dates(times, "--times"),
        bands=split_list(bands, "--bands"),
        sensor=sensor,
        stack=stack,  # type: ignore[arg-type]  # from_geotiff refuses anything but "time"/"band"
        nodata=parse_nodata(nodata) if nodata is not None else None,
    )
    if labels is not None:
        ds["labels"] = read_labels(
            labels, ds, classes=split_list(classes, "--classes"), nodata=label_nodata
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
        try:
            parts = [float(v) for v in bbox.split(",")]
        except ValueError:
            raise STACError(f"--bbox {bbox!r} is not 4 numbers; expected minlon,minlat,maxlon,maxlat.") from None
        if len(parts) != 4:
            raise STACError(
                f"--bbox {bbox!r} has {len(parts)} numbers; expected minlon,minlat,maxlon,maxlat."
            )
        box = (parts[0], parts[1], parts[2], parts[3])
    if engine not in ("odc", "stackstac"):
        raise STACError(f"--engine {engine!r}; expected odc or stackstac.")
    ds = from_stac(
        items,
        bands=split_list(bands, "--bands") or [],
        resolution=resolution,
        crs=crs,
        bbox=box,
        engine=engine,  # type: ignore[arg-type]
    )
    _write(ds, output, overwrite)
