"""``geoarray stac-features``: STAC items -> cube -> predict -> outputs in a Zarr store, in one command."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from geoarray.cli._app import _friendly, app, split_list


def parse_bbox(bbox: str | None, flag: str = "--bbox") -> tuple[float, float, float, float] | None:
    from geoarray.errors import STACError

    if not bbox:
        return None
    try:
        parts = [float(v) for v in bbox.split(",")]
    except ValueError:
        raise STACError(f"{flag} {bbox!r} is not 4 numbers; expected minlon,minlat,maxlon,maxlat.") from None
    if len(parts) != 4:
        raise STACError(f"{flag} {bbox!r} has {len(parts)} numbers; expected minlon,minlat,maxlon,maxlat.")
    return (parts[0], parts[1], parts[2], parts[3])


def parse_range(value: str | None) -> tuple[str | None, str | None] | None:
    """``START/END`` (ISO dates; either side may be empty or ``..``, as in STAC API datetime ranges)."""
    from geoarray.errors import STACError

    if value is None:
        return None
    parts = value.split("/")
    if len(parts) != 2:
        raise STACError(f"--time {value!r}; expected START/END, e.g. 2021-05-01/2021-09-30 (or 2021-05-01/..).")
    start, end = (None if p.strip() in ("", "..") else p.strip() for p in parts)
    return start, end


@app.command("stac-features")
@_friendly
def stac_features(
    items: Annotated[
        Path,
        typer.Argument(
            help="ItemCollection / FeatureCollection JSON (e.g. a STAC API search saved to disk), Item JSON, "
            "or a local catalog."
        ),
    ],
    ckpt: Annotated[
        str, typer.Option("--ckpt", "-c", help="Checkpoint (.safetensors) from geoarray fit, a path or an s3:// URL.")
    ],
    output: Annotated[
        str, typer.Option("--output", "-o", help="Zarr store to write (created; an interrupted run resumes).")
    ],
    bands: Annotated[
        str | None,
        typer.Option(help="The items' names for the checkpoint's bands, in its order (default: the same names)."),
    ] = None,
    bbox: Annotated[str | None, typer.Option(help="minlon,minlat,maxlon,maxlat")] = None,
    crs: Annotated[str | None, typer.Option(help="Output CRS, e.g. EPSG:32633 (needed for items in several CRSs).")] = None,
    resolution: Annotated[float | None, typer.Option(help="Pixel size in CRS units.")] = None,
    chunk: Annotated[int, typer.Option(help="Block size in pixels (dask and Zarr chunks).")] = 1024,
    time_range: Annotated[
        str | None, typer.Option("--time", help="START/END, ISO dates, ends included; '..' leaves a side open.")
    ] = None,
    engine: Annotated[str, typer.Option(help="odc (default) or stackstac.")] = "odc",
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a running Dask scheduler, e.g. tcp://10.0.0.5:8786.")
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help="Start a local Dask cluster of N worker processes for the run.")
    ] = None,
    precision: Annotated[
        str, typer.Option(help="32, bf16 or 16: the model under autocast (16 needs a GPU).")
    ] = "32",
    outputs: Annotated[
        str | None,
        typer.Option(help="Outputs to write, e.g. mask (default: all the checkpoint makes, e.g. probabilities,mask)."),
    ] = None,
    device: Annotated[
        str, typer.Option(help="auto, cpu or cuda (auto: a GPU where the blocks run, when there is one).")
    ] = "auto",
    overwrite: Annotated[bool, typer.Option(help="Replace outputs a previous run wrote.")] = False,
) -> None:
    """Run a checkpoint over STAC items and write its outputs (features, probabilities, mask) into Zarr.

    The imagery is read from the items' COGs block by block and never stored; only the outputs are written.
    Kill it and run the same command again: it finishes the missing chunks.
    """
    from geoarray.cli._model import _quiet_dask
    from geoarray.errors import STACError
    from geoarray.stac_features import stac_features as run

    if engine not in ("odc", "stackstac"):
        raise STACError(f"--engine {engine!r}; expected odc or stackstac.")
    if chunk < 1:  # --chunk 0 died in a ZeroDivisionError after the items were read
        raise STACError(
            f"--chunk {chunk}; expected a whole number of pixels >= 1 (the block size in y and x), e.g. --chunk 1024 "
            "(the default)."
        )
    t0 = time.perf_counter()
    with _quiet_dask():
        ds = run(
            items,
            ckpt,
            output,
            bands=split_list(bands, "--bands"),
            bbox=parse_bbox(bbox),
            crs=crs,
            resolution=resolution,
            chunk=chunk,
            time=parse_range(time_range),
            engine=engine,  # type: ignore[arg-type]
            scheduler=scheduler,
            workers=workers,
            precision=precision,  # type: ignore[arg-type]
            outputs=split_list(outputs, "--outputs"),
            device=device,
            overwrite=overwrite,
            progress=True,
        )
    outs = [str(n) for n, v in ds.data_vars.items() if "checkpoint_sha256" in v.attrs]
    dt = time.perf_counter() - t0
    px = ds.sizes.get("time", 1) * ds.sizes["y"] * ds.sizes["x"]
    typer.echo(
        f"wrote {', '.join(sorted(outs))} ({ds.sizes.get('time', 1)} dates x {ds.sizes['y']} x {ds.sizes['x']}, "
        f"{ds.rio.crs}) to {output} in {dt:.1f} s ({px / dt / 1e6:.3g} Mpx/s)"
    )
