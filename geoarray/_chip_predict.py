"""Chip-level inference: ``geoarray.predict_chips(cube, ckpt)``, one class or embedding per chip.

Chip models (``resnet18``/``resnet50`` classifiers, VICReg encoders) give one vector per chip, not a map, so
their outputs live on a grid of their own (:mod:`geoarray._chip_kernel`): its ``y``/``x`` are the chip centres
and its transform has a pixel of ``stride`` cube pixels. That grid cannot share the cube's ``y``/``x``, so
:func:`predict_chips` returns its own Dataset and writes it into its own Zarr group (or store), where
:func:`geoarray.predict` adds variables on the cube's grid.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import xarray as xr

from geoarray._chip_kernel import ChipSpec, build_graph, chip_grid, grid_coords
from geoarray._constants import MASK_NODATA, MASK_NODATA_WIDE
from geoarray._predict_checks import check_float_dtype
from geoarray.errors import BandError, PredictError, StoreError, StoreExistsError

__all__ = ["predict_chips"]

CHIP_GRID = "geoarray_chip_grid"  # group attr: written by predict_chips (overwrite replaces only those)
_VARIABLES = {"classification": ("probabilities", "mask"), "features": ("features",)}


def predict_chips(
    cube: xr.Dataset,
    ckpt: str | os.PathLike[str],
    *,
    chip_size: int | None = None,
    stride: int | None = None,
    times: Sequence[int | str] | None = None,
    var: str = "imagery",
    outputs: Sequence[str] | None = None,
    min_valid: float = 0.5,
    batch_size: int = 64,
    device: str = "auto",
    store: str | os.PathLike[str] | None = None,
    group: str | None = "chips",
    overwrite: bool = False,
    dtype: Literal["float32", "float16"] = "float32",
    progress: bool = False,
) -> xr.Dataset:
    """Apply a chip model to a whole cube: one class or one embedding per chip, on a georeferenced chip grid.

    The cube is cut into ``chip_size`` squares every ``stride`` pixels from its first row and column; chips that
    would cross the far edge are left out, so the grid covers the cube truncated to whole chips. Each chip is
    normalised exactly as training does (the checkpoint's bands, ``scale``, mean and std; invalid pixels set to
    0) and run through the model, per date.

    Parameters
    ----------
    cube
        A cube (see :func:`geoarray.validate_cube`), lazy or in memory.
    ckpt
        A checkpoint of a chip model: a chip classifier (``task="classification"``, ``"finetune"``, ...) or a
        chip encoder (``task="vicreg"``).
    chip_size
        Chip size in pixels; default: the checkpoint's training chip size.
    stride
        Step between chips in pixels (default ``chip_size``: chips tile the cube).
    times
        Dates to run (indices, or dates such as ``"2021-05-01"``); default every date.
    var
        The imagery variable.
    outputs
        Classifiers: ``["probabilities", "mask"]`` (default both); encoders: ``["features"]``.
    min_valid
        Fraction of valid pixels a chip needs (as ``fit``'s filter); other chips come out NaN / nodata.
    batch_size
        Chips per forward pass.
    device
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    store, group
        A Zarr store to write the chip grid into, as the group ``group`` (default ``"chips"``, beside a cube's
        variables in the cube's own store), or at the root of a new store with ``group=None``. The store is
        created if it does not exist. Written chunk by chunk (one chunk per block of chips), in bounded memory.
    overwrite
        Replace the group if it exists (never anything else in the store).
    dtype
        Float dtype of probabilities/features.
    progress
        Show a progress bar while writing to ``store``.

    Returns
    -------
    xarray.Dataset
        Lazy (dask), or read back from ``store``. Classifiers: ``probabilities(time, class, y, x)`` and
        ``mask(time, y, x)`` (nodata 255); encoders: ``features(time, feature, y, x)``. ``y``/``x`` are the chip
        centres; ``ds.rio.transform()`` has a pixel of ``stride x res`` and, with ``stride == chip_size``, the
        cube's corner; the CRS is the cube's. :func:`geoarray.export_geotiff` writes any of them as a GeoTIFF.

    Raises
    ------
    PredictError
        A checkpoint that is not a chip model (use :func:`geoarray.predict`), chip size or stride that do not fit
        the cube, unknown outputs or dates, or bad options.
    BandError
        The cube lacks a band the checkpoint needs.
    StoreError
        ``store`` is not a Zarr directory, ``group`` exists already (without ``overwrite=True``), or the root
        of an existing store was named (``group=None``).

    Notes
    -----
    With ``stride < chip_size`` chips overlap and each output cell is the ``stride x stride`` square around its
    chip's centre, so the grid is inset by ``(chip_size - stride) / 2`` pixels from the cube's corner.

    Examples
    --------
    >>> chips = geoarray.predict_chips(cube, "resnet.safetensors", store="site.zarr")  # doctest: +SKIP
    >>> geoarray.export_geotiff(chips["mask"].isel(time=0), "chip_classes.tif")  # doctest: +SKIP
    """
    from geoarray._devices import run_device
    from geoarray._progress import compute_with_progress
    from geoarray.checkpoint import load_checkpoint
    from geoarray.cube import conform_cube

    cube = conform_cube(cube, var=var)
    _check_options(batch_size, min_valid, dtype, group)
    dtype = np.dtype(dtype).name  # type: ignore[assignment]
    device, _ = run_device(device, "32", PredictError)  # chips run in float32
    path = str(Path(ckpt).resolve())
    ck = load_checkpoint(path)
    meta = ck.meta
    name = Path(path).name
    in_spec, out_spec = meta["input"], meta["output"]
    if in_spec.get("kind") != "chip":
        raise PredictError(
            f"{name} holds a {meta['model']['name']!r} model of {in_spec.get('kind')!r} inputs (task "
            f"{meta['task']!r}), which makes per-pixel outputs; predict_chips runs chip models (one class or "
            "embedding per chip, e.g. resnet18). Use geoarray.predict(cube, ckpt) for it."
        )
    kind = out_spec["kind"]
    wanted = _outputs(kind, outputs)
    ny, nx = cube.sizes["y"], cube.sizes["x"]
    trained = meta.get("training", {}).get("chip_size")
    size = _size("chip_size", chip_size if chip_size is not None else trained, ny, nx, name)
    step = _size("stride", stride if stride is not None else size, ny, nx, name)
    needed = list(in_spec["bands"])
    present = [str(b) for b in cube["band"].values]
    missing = [b for b in needed if b not in present]
    if missing:
        raise BandError(
            f"the cube lacks band(s) {missing} that {name} needs; it needs {needed} and the cube has {present}. "
            "Add or rename bands (e.g. `ds.assign_coords(band=[...])`) so the names match."
        )
    tidx = _times(cube, times)
    cube = cube.isel(time=tidx)
    grid = chip_grid((ny, nx), size, step)
    if kind == "features":
        channels = int(out_spec.get("feature_dim") or 0) or int(getattr(ck.model, "feature_dim", 0))
    else:
        channels = len(out_spec["classes"])
    wide = channels >= 255
    spec = ChipSpec(
        path=path,
        sha256=ck.sha256,
        device=device,
        kind=kind,
        outputs=wanted,
        channels=channels,
        float_dtype=dtype,
        mask_dtype="uint16" if wide else "uint8",
        nodata=MASK_NODATA_WIDE if wide else MASK_NODATA,
        batch_size=int(batch_size),
        min_valid=float(min_valid),
        norm=(tuple(in_spec["mean"]), tuple(in_spec["std"]), float(in_spec.get("scale", 1.0))),
        grid=grid,
    )
    run_times = np.ones(cube.sizes["time"], bool)
    sensor = in_spec.get("sensor")
    if sensor and "sensor" in cube.coords:
        run_times = np.asarray([str(s) == sensor for s in cube["sensor"].values])
    arrays = build_graph(cube, var, needed, spec, run_times)
    ds = _dataset(arrays, cube, spec, meta, name, out_spec)
    if store is None:
        return ds
    root, target = _target(store, group, overwrite)
    for v in ds.data_vars.values():
        v.encoding = {"chunks": tuple(c[0] for c in v.data.chunks)}
        if v.dtype.kind != "f":
            v.encoding["fill_value"] = v.dtype.type(v.attrs["nodata"])
    if target.exists():  # overwrite=True (checked): replace this group only
        shutil.rmtree(target)
    job = ds.to_zarr(
        root,
        group=group,
        mode="w-" if group is None else "a",
        zarr_format=3,
        consolidated=False,
        compute=False,
    )
    compute_with_progress(job, enabled=progress, desc="predict_chips")
    back = xr.open_zarr(root, group=group, consolidated=False, decode_coords="all")
    if "class" in back.coords:  # StringDType on the way back: plain object strings, as on the cube
        back = back.assign_coords({"class": np.asarray([str(c) for c in back["class"].values], dtype=object)})
    return back


def _check_options(batch_size: Any, min_valid: Any, dtype: Any, group: Any) -> None:
    if not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1:
        raise PredictError(f"batch_size={batch_size!r}; expected a positive int (chips per forward pass).")
    if isinstance(min_valid, bool) or not isinstance(min_valid, (int, float)) or not 0 <= min_valid <= 1:
        raise PredictError(f"min_valid={min_valid!r}; expected a fraction between 0 and 1 (default 0.5).")
    check_float_dtype(dtype)
    if group is not None and (
        not isinstance(group, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", group)
    ):
        raise PredictError(
            f"group={group!r}; expected None (the store's root) or a name of ASCII letters, digits, '_', '.' "
            "or '-' that starts with a letter or digit, such as 'chips'."
        )


def _outputs(kind: str, outputs: Sequence[str] | None) -> tuple[str, ...]:
    available = _VARIABLES.get(kind)
    if available is None:
        raise PredictError(f"a chip model with {kind!r} outputs; expected a classifier or a feature encoder.")
    if outputs is None:
        return available
    if isinstance(outputs, str):  # "features": one output, not its letters
        outputs = [outputs]
    wanted = [str(o) for o in outputs]
    if not wanted or any(o not in available for o in wanted):
        raise PredictError(f"outputs={wanted}; a chip {kind} checkpoint makes {list(available)}.")
    return tuple(o for o in available if o in wanted)


def _size(what: str, value: Any, ny: int, nx: int, name: str) -> int:
    if value is None:
        raise PredictError(
            f"{name} does not record the chip size it was trained on; pass chip_size= (pixels), e.g. 64."
        )
    if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or not 0 < value <= min(ny, nx):
        raise PredictError(
            f"{what}={value!r} does not fit the cube ({ny} x {nx} px); expected a whole number of pixels from 1 "
            f"to {min(ny, nx)}."
        )
    return int(value)


def _times(cube: xr.Dataset, times: Sequence[int | str] | None) -> list[int]:
    import pandas as pd

    from geoarray._preprocess import date_hits

    n = cube.sizes["time"]
    if times is None:
        return list(range(n))
    if isinstance(times, (str, int)) or not isinstance(times, Sequence) or not times:
        raise PredictError(
            f"times={times!r}; expected a non-empty list of date indices or dates, e.g. [0, 2]."
        )
    index = pd.DatetimeIndex(cube["time"].values)
    out = []
    for t in times:
        if isinstance(t, (int, np.integer)) and not isinstance(t, bool):
            if not -n <= t < n:
                raise PredictError(f"time index {t} is out of range for a cube of {n} dates.")
            out.append(int(t) % n)
            continue
        try:
            hits = date_hits(index, t)
        except (ValueError, TypeError):
            hits = np.array([], int)
        if hits.size != 1:
            shown = [str(d.date()) for d in index]
            raise PredictError(f"times: {t!r} matches {hits.size} dates of the cube; it has {shown}.")
        out.append(int(hits[0]))
    if len(set(out)) < len(out):
        shown = [str(d.date()) for d in index[out]]
        raise PredictError(
            f"times={list(times)!r} names a date twice ({shown}); expected each date once (the output's time "
            "coordinate must be unique)."
        )
    return out


def _dataset(
    arrays: list[Any],
    cube: xr.Dataset,
    spec: ChipSpec,
    meta: dict[str, Any],
    name: str,
    out_spec: dict[str, Any],
) -> xr.Dataset:
    from geoarray._version import __version__

    cy, cx, transform = grid_coords(cube["y"].values, cube["x"].values, spec.grid)
    coords: dict[str, Any] = {"time": cube["time"].values, "y": cy, "x": cx}
    attrs = {
        "checkpoint": name,
        "checkpoint_sha256": spec.sha256,
        "model": meta["model"]["name"],
        "task": meta["task"],
        "geoarray_version": __version__,
        "chip_size": spec.grid.chip_size,
        "stride": spec.grid.stride,
    }
    data: dict[str, xr.DataArray] = {}
    for arr, o in zip(arrays, spec.outputs, strict=True):
        a = dict(attrs)
        if o == "mask":
            a.update(
                nodata=spec.nodata, classes=list(out_spec["classes"]), long_name="predicted class per chip"
            )
            data[o] = xr.DataArray(arr, dims=("time", "y", "x"), attrs=a)
        elif o == "probabilities":
            a.update(classes=list(out_spec["classes"]), long_name="class probability per chip")
            c = {"class": np.asarray(out_spec["classes"], dtype=object)}
            data[o] = xr.DataArray(arr, dims=("time", "class", "y", "x"), coords=c, attrs=a)
        else:
            a.update(long_name="learned features per chip")
            c = {"feature": np.arange(spec.channels)}
            data[o] = xr.DataArray(arr, dims=("time", "feature", "y", "x"), coords=c, attrs=a)
    grid_attrs = {CHIP_GRID: True, "chip_size": spec.grid.chip_size, "stride": spec.grid.stride}
    ds = xr.Dataset(data, coords=coords, attrs=grid_attrs)
    if "sensor" in cube.coords and cube["sensor"].dims == ("time",):
        ds = ds.assign_coords(sensor=("time", cube["sensor"].values))
    if cube.rio.crs is not None:
        ds = ds.rio.write_crs(cube.rio.crs)
    return ds.rio.write_transform(transform)


def _target(store: str | os.PathLike[str], group: str | None, overwrite: bool) -> tuple[Path, Path]:
    """The store's root and the group's folder; refuses what would clobber other data (nothing changes here)."""
    from geoarray.cube import _is_zarr

    root = Path(store)
    if root.exists() and not root.is_dir():
        raise StoreError(f"store={str(root)!r} is a file; expected a Zarr store (a directory) or a new path.")
    if root.exists() and any(root.iterdir()) and not _is_zarr(root):
        raise StoreError(
            f"store={str(root)!r} is a non-empty directory but not a Zarr store; expected a Zarr store (the "
            "cube's own, to write the chip grid beside it) or a new path."
        )
    if group is None:
        if root.exists() and any(root.iterdir()):
            raise StoreError(
                f"store={str(root)!r} exists, and group=None would write the chip grid over its root; pass "
                "group='chips' (the chip grid's own group in that store) or a new store path."
            )
        return root, root
    target = root / group
    if target.exists() and not overwrite:
        raise StoreExistsError(
            f"{str(root)!r} already holds a group or variable {group!r}; pass overwrite=True to replace it, or "
            "another group=."
        )
    if target.exists():
        import json

        try:
            doc = json.loads((target / "zarr.json").read_text())
        except (OSError, ValueError):
            doc = {}
        if doc.get("node_type") != "group" or not doc.get("attributes", {}).get(CHIP_GRID):
            raise StoreExistsError(
                f"{group!r} in {str(root)!r} was not written by predict_chips (a variable of the cube, or another "
                "group); overwrite=True replaces only chip grids. Pass another group=."
            )
    return root, target
