"""``geoarray info``, ``evaluate``, ``export`` and ``demo``: look at a cube, score it, export it, the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from geoarray.cli._app import Store, _friendly, app, cube_summary


@app.command()
@_friendly
def info(store: Store, var: Annotated[str, typer.Option(help="Imagery variable.")] = "imagery") -> None:
    """Print a cube's dims, bands, dates, CRS, chunking and variables."""
    from geoarray.cube import open_cube

    ds = open_cube(store, var=var)
    typer.echo(f"store            : {store}")
    typer.echo(cube_summary(ds, var=var))


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
    from geoarray.demo import run_demo

    res = run_demo(out, epochs=epochs, echo=typer.echo)
    typer.echo("held-out tiles (never seen in training):")
    typer.echo(_score_table(res.held_out))
    typer.echo(f"whole scene: mean IoU {res.whole['mean_iou']:.3f}, accuracy {res.whole['accuracy']:.3f}")
    typer.echo(f"wrote {res.overlay} and {res.curves}")
    typer.echo(f"done in {res.seconds:.1f} s")
