"""``geoarray info``, ``evaluate``, ``export``, ``probe`` and ``demo``: look at a cube, score it (or an encoder's
features), export it, the demo."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from geoarray.cli._app import Store, _friendly, app, cube_summary


def _not_a_file(where: str | Path) -> None:
    """A file given where a Zarr store (a directory) is expected: say how to make a cube from it. (A URL is
    checked where it is opened.)"""
    from geoarray._storage import is_url
    from geoarray.errors import StoreError

    if is_url(where):
        return
    store = Path(where)
    if store.is_file():
        hint = (
            " To make a cube of GeoTIFFs: geoarray ingest geotiff FILES -o CUBE.zarr."
            if store.suffix.lower() in (".tif", ".tiff")
            else ""
        )
        raise StoreError(f"{str(store)!r} is a file; expected a Zarr store (a directory).{hint}")


@app.command()
@_friendly
def info(store: Store, var: Annotated[str, typer.Option(help="Imagery variable.")] = "imagery") -> None:
    """Print a cube's dims, bands, dates, CRS, chunking and variables."""
    from geoarray.cube import open_cube

    _not_a_file(store)
    ds = open_cube(store, var=var)
    typer.echo(f"store            : {store}")
    typer.echo(cube_summary(ds, var=var))


AllowPartial = Annotated[
    bool,
    typer.Option(
        "--allow-partial",
        help="Use an output whose predict run did not finish (its missing chunks are nodata).",
    ),
]


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
    allow_partial: AllowPartial = False,
) -> None:
    """Export one variable (one date) as a Cloud-Optimized GeoTIFF with its georeferencing."""
    from geoarray._atomic import check_file_path
    from geoarray.cube import _open_zarr
    from geoarray.errors import RasterError
    from geoarray.io.geotiff import export_geotiff, select_time
    from geoarray.metrics import require_complete

    _not_a_file(store)
    check_file_path(output, "a Cloud-Optimized GeoTIFF", (".tif", ".tiff"))  # before the store is read
    ds = _open_zarr(store)
    if variable not in ds.data_vars:
        raise RasterError(f"no variable {variable!r} in {store}; it has {sorted(map(str, ds.data_vars))}.")
    da = ds[variable]
    require_complete(
        da,
        f"{variable!r} in {store}",
        allow_partial=allow_partial,
        error=RasterError,
        use="export",
        flag="--allow-partial",
    )
    if "time" in da.dims:
        da = select_time(da, time_index)
    elif time_index is not None:
        raise RasterError(
            f"{variable!r} has no time dim (dims {tuple(map(str, da.dims))}: a whole-series model's output); "
            "drop --time."
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
    allow_partial: AllowPartial = False,
) -> None:
    """Score a predicted mask against the truth: per-class IoU, Dice, precision, recall, F1.

    Both must be integer class maps. When both name their classes (the `classes` attr), prediction ids are
    matched to truth classes by name; a predicted class the truth does not name is an error.
    """
    import json

    from geoarray._atomic import atomic_write, check_file_path
    from geoarray.cube import open_cube
    from geoarray.errors import CubeError
    from geoarray.metrics import evaluate as score

    _not_a_file(store)
    if json_out:
        check_file_path(json_out, "a JSON", example="scores.json")  # before the scoring pass, not after it
    ds = open_cube(store)
    for v in (pred, truth):
        if v not in ds.data_vars:
            raise CubeError(f"no variable {v!r} in {store}; it has {sorted(map(str, ds.data_vars))}.")
    valid = ds["valid"] if "valid" in ds.data_vars else None
    p, t = ds[pred], ds[truth]
    s = score(p, t, valid=valid, allow_partial=allow_partial)
    if p.attrs.get("geoarray_complete") is False:
        typer.secho(f"warning: {pred!r} is partial; scores cover only its written chunks", err=True)
    p_names, t_names = p.attrs.get("classes"), t.attrs.get("classes")
    if p_names is not None and t_names is not None and list(p_names) != list(t_names):
        typer.echo(f"classes matched by name: {pred} {list(p_names)} -> {truth} {list(t_names)}")
    typer.echo(_score_table(s))
    if json_out:
        atomic_write(json_out, lambda tmp: tmp.write_text(json.dumps(s, indent=2)))  # makes missing folders
        typer.echo(f"wrote {json_out}")


@app.command()
@_friendly
def probe(
    store: Store,
    ckpt: Annotated[
        Path,
        typer.Option("--ckpt", "-c", help="Encoder checkpoint, e.g. from geoarray fit --task barlow_twins."),
    ],
    labels: Annotated[str, typer.Option(help="Label variable in the cube.")] = "labels",
    protocols: Annotated[str, typer.Option(help="Comma-separated protocols: linear, knn.")] = "linear,knn",
    label_fractions: Annotated[
        str, typer.Option(help="Comma-separated fractions of the training pixels each protocol learns from.")
    ] = "0.01,0.1,1",
    seed: Annotated[int, typer.Option(help="Seed of the sample, the split and the random-init encoder.")] = 0,
    regions: Annotated[
        Path | None, typer.Option(help="Vector regions (GeoPackage, GeoJSON, ...) instead of --labels.")
    ] = None,
    region_property: Annotated[
        str | None, typer.Option(help="The regions' property that holds the class (with --regions).")
    ] = None,
) -> None:
    """Score an encoder's features with linear and kNN probes on a spatial split, beside the same protocols on a
    random-init encoder (random_init) and on the raw inputs (raw): top-1 and top-5 accuracy on held-out tiles."""
    from geoarray.cli._app import split_list
    from geoarray.cube import open_cube
    from geoarray.errors import ProbeError
    from geoarray.probe import probe as run_probe

    _not_a_file(store)
    fractions = []
    for f in split_list(label_fractions, "--label-fractions") or []:
        try:
            fractions.append(float(f))
        except ValueError:
            raise ProbeError(
                f"--label-fractions: {f!r} is not a number; expected fractions in (0, 1] such as 0.01,0.1,1."
            ) from None
    df = run_probe(
        open_cube(store),
        ckpt,
        labels=labels,
        protocols=split_list(protocols, "--protocols") or [],
        label_fractions=fractions,
        seed=seed,
        regions=None if regions is None else str(regions),
        region_property=region_property,
    )
    typer.echo(df.to_string(index=False, float_format="{:.4f}".format))


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
