"""Blockwise, seamless inference: ``geoarray.predict(cube, ckpt)``.

Each output block is one dask task. It receives the normalised input chunks around it (the block and its
neighbours), stitches block + halo, runs the model, and crops the halo away. Block edges sit on multiples of
the model's stride and the halo is a multiple of the stride, so the pooling grid inside every window lines
up with the grid of the whole image: with ``halo >= receptive field`` the result equals whole-image
inference. At image borders the window stops at the border, exactly where whole-image inference does.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import dask.array as dsa
import numpy as np
import xarray as xr

from geoarray._blocks import MIN_BLOCK, TINY, aligned, build_graph, direct_sources, grouped
from geoarray._constants import MASK_NODATA, MASK_NODATA_WIDE
from geoarray._devices import run_device
from geoarray._inference import RunSpec, clear_caches, remember_model
from geoarray._outputs import layout, wrap
from geoarray._predict_checks import _check_dates, _check_options, _outputs, warn_small_halo
from geoarray._preprocess import date_features, declared_valid
from geoarray._storage import is_url, location
from geoarray._tiles import tile_for
from geoarray._writer import WriteReport, dim_clashes, partial_outputs, write_to_store
from geoarray.checkpoint import load_checkpoint
from geoarray.cube import DEFAULT_CHUNK, conform_cube
from geoarray.errors import BandError, PredictError

__all__ = ["clear_caches", "partial_outputs", "predict"]

log = logging.getLogger(__name__)


def predict(
    cube: xr.Dataset,
    ckpt: str | os.PathLike[str],
    *,
    var: str = "imagery",
    halo: int | Literal["auto"] = "auto",
    batch_size: int | None = None,
    device: str = "auto",
    outputs: Sequence[str] | None = None,
    prefix: str = "",
    store: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    dtype: Literal["float32", "float16"] = "float32",
    threshold: float = 0.5,
    progress: bool = False,
    precision: Literal["32", "bf16", "16"] = "32",
    storage_options: dict[str, Any] | None = None,
) -> xr.Dataset:
    """Apply a checkpoint to a cube blockwise, with a halo; return the cube plus new output variables.

    Parameters
    ----------
    cube
        A cube (see :func:`geoarray.validate_cube`), typically from :func:`geoarray.open_cube`; its dask
        chunks are the blocks. An in-memory cube is chunked ``(time=1, y=512, x=512)``.
    ckpt
        A checkpoint written by :func:`geoarray.save_checkpoint` or ``geoarray fit``. Bands are matched by
        name and normalised with the checkpoint's statistics.
    var
        The imagery variable.
    halo
        Pixels read around each block. ``"auto"`` uses the checkpoint's receptive field, which makes the
        output seamless; a smaller halo is faster and differs near block edges (a GeoArrayWarning says so when
        the cube spans more than one block). Rounded up to the stride.
    batch_size
        Dates per forward pass for image models (default: all dates of a block), pixels per pass for
        time-series models (default 65536).
    device
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    outputs
        Which outputs to make: for segmentation ``["probabilities", "mask"]`` (default both), for feature
        models ``["features"]`` (multi-output models: any of their names, e.g. ``["arrow_of_time"]``).
    prefix
        Prefix of the output names and of their class/feature dim, e.g. ``"change_"`` gives
        ``change_probabilities(time, change_class, y, x)``, so models with other classes or feature sizes
        write side by side in one store.
    store
        A Zarr cube to write the outputs into, chunk by chunk. Only the new variables are written; a run that
        was killed resumes where it stopped when called again. Until it finishes, the outputs' attr
        ``geoarray_complete`` is False (see :func:`partial_outputs`) and unwritten chunks read as nodata/NaN.
    overwrite
        Replace output variables that a previous predict wrote in ``store`` (never other variables).
    dtype
        Float dtype of probabilities/features (``"float16"`` halves storage).
    threshold
        Sigmoid threshold of multi-label masks.
    progress
        Show a progress bar while writing to ``store``.
    precision
        ``"32"``, or the model under autocast: ``"bf16"`` (GPU; CPUs with AVX512-BF16/AMX, elsewhere emulated
        and slower, with a warning) or ``"16"`` (GPU only). Recorded in the outputs' ``precision`` attr.
    storage_options
        fsspec options (credentials, ``client_kwargs``) for ``store`` and ``ckpt`` given as URLs (``s3://…``).

    Returns
    -------
    xarray.Dataset
        ``cube`` with the outputs (lazy), or with ``store`` the store reopened (outputs read from disk).
        Segmentation: ``probabilities(time, class, y, x)`` and ``mask(time, y, x)`` (``mask(time, class, y, x)``
        for multi-label models; nodata 255, or 65535 for uint16 masks of 255+ classes). Feature models:
        ``features(time, feature, y, x)``. With ``prefix``, names and the class/feature dim are prefixed.
        Models that consume the whole series drop ``time``. Invalid input pixels give NaN / nodata. Attrs
        record the checkpoint sha256, model and geoarray version. A model with several outputs (the
        checkpoint's ``output.parts``, e.g. ``task="invariants"``) writes each as its own variable with its
        own dim: ``features(time, feature, y, x)``, ``features_<head>(time, feature_<head>, y, x)``,
        ``features_pca(time, feature_pca, y, x)`` and the map ``arrow_of_time(time, y, x)`` (the probability
        that the previous date was taken before this one; NaN on the first date). It reads the whole series
        (time in one chunk: ``cube.chunk(time=-1)``); with a ``sensor``, only that sensor's dates.

    Raises
    ------
    BandError
        The cube lacks a band the checkpoint needs.
    PredictError
        Chunks that don't fit the model (time chunked for a time-series model, chunks smaller than the halo),
        a chip model (run it with :func:`predict_chips`), a model built for another number of dates
        (``num_timesteps``), or outputs whose class/feature dim clashes with the cube's (pass ``prefix``).
    StoreError
        ``store`` is missing, not writable, on another grid, holds the outputs already (without
        ``overwrite=True``), or a dim of the same name with another size (pass ``prefix``). Checked before
        anything is written.
    CheckpointError
        ``ckpt`` is not a geoarray checkpoint.

    Notes
    -----
    A block's task reads every input chunk its window (block + halo) touches. Blocks are the dask chunks,
    realigned to the model stride when needed; chunks under 32 px are grouped into blocks of at least 256 px,
    and other chunks must be at least the halo (smaller blocks would spend most of their work on the halo).

    Examples
    --------
    >>> out = geoarray.predict(geoarray.open_cube("site.zarr"), "model.safetensors", store="site.zarr")  # doctest: +SKIP
    >>> out.mask.isel(time=0).plot()  # doctest: +SKIP
    """
    return _predict(
        cube,
        ckpt,
        var=var,
        halo=halo,
        batch_size=batch_size,
        device=device,
        outputs=outputs,
        prefix=prefix,
        store=store,
        overwrite=overwrite,
        dtype=dtype,
        threshold=threshold,
        progress=progress,
        precision=precision,
        storage_options=storage_options,
    )[0]


def _predict(
    cube: xr.Dataset,
    ckpt: str | os.PathLike[str],
    *,
    store: str | os.PathLike[str] | None,
    overwrite: bool,
    progress: bool,
    reopen: bool = True,
    storage_options: dict[str, Any] | None = None,
    **opts: Any,
) -> tuple[xr.Dataset, WriteReport | None]:
    """:func:`predict`, plus what it wrote into ``store``: :func:`plan_predict`, then :func:`run_planned`."""
    planned = plan_predict(cube, ckpt, storage_options=storage_options, **opts)
    return run_planned(
        planned, store, overwrite=overwrite, progress=progress, reopen=reopen, storage_options=storage_options
    )


@dataclass(frozen=True)
class Planned:
    """A checked predict: the lazy outputs and the block tasks that compute (and may write) them."""

    cube: xr.Dataset
    var: str
    new: dict[str, xr.DataArray]
    arrays: list[dsa.Array]
    blocks: list[tuple[Any, list[Any]]]
    sha: str


def plan_predict(
    cube: xr.Dataset,
    ckpt: str | os.PathLike[str],
    *,
    var: str,
    halo: int | Literal["auto"],
    batch_size: int | None,
    device: str,
    outputs: Sequence[str] | None,
    prefix: str,
    dtype: Literal["float32", "float16"],
    threshold: float,
    rechunk_time: bool = False,
    precision: str = "32",
    storage_options: dict[str, Any] | None = None,
) -> Planned:
    """Every check of :func:`predict` and its task graph, before anything is read or written. ``rechunk_time``
    (the CLI's; its user cannot rechunk) makes time one chunk for whole-series models, lazily: a task then holds
    dates x bands x (block + halo)² x 4 B.
    """
    cube = conform_cube(cube, var=var)  # dims by name: another order is transposed (lazily)
    _check_options(batch_size, dtype, threshold, prefix)
    dtype = np.dtype(dtype).name  # type: ignore[assignment]  # np.float16, "f2", ... -> "float16"
    threshold = float(threshold)
    device, precision = run_device(device, precision, PredictError)
    path, ck_options = (str(ckpt), storage_options) if is_url(ckpt) else (str(Path(ckpt).resolve()), None)
    ck = load_checkpoint(path, storage_options=ck_options)  # checks meta, weights, checksum now, not in tasks
    meta, sha = ck.meta, ck.sha256
    out_spec, in_spec = meta["output"], meta["input"]
    kind = out_spec["kind"]
    if in_spec.get("kind") == "chip":  # one value per chip: another grid than the cube's, so its own function
        chip = meta.get("training", {}).get("chip_size") or "N"
        what = "chip classifier" if kind == "classification" else "chip encoder"
        raise PredictError(
            f"{Path(path).name} is a {what} (task {meta['task']!r}): it gives one "
            f"{'label' if kind == 'classification' else 'embedding'} per chip of {chip} px, and predict writes "
            "per-pixel maps on the cube's grid. Run it on a grid of chips with `geoarray.predict_chips(cube, "
            "ckpt)` (store='site.zarr' writes it into the group 'chips'). For per-pixel maps, train "
            "task='segmentation' instead."
        )
    input_kind = in_spec.get("kind", "image")
    _check_dates(meta, input_kind, cube, Path(path).name)
    stride = int(meta.get("stride", 1))
    h = _resolve_halo(halo, meta, stride, input_kind)

    needed = list(in_spec["bands"])
    present = [str(b) for b in cube["band"].values]
    missing = [b for b in needed if b not in present]
    if missing:
        raise BandError(
            f"the cube lacks band(s) {missing} that {Path(path).name} needs; it needs {needed} and the cube has "
            f"{present}. Add or rename bands (e.g. `ds.assign_coords(band=[...])`) so the names match."
        )
    wanted = _outputs(kind, out_spec, outputs)

    # all bands in order: no selection, which would add a getitem task per chunk to the graph
    img = cube[var] if needed == present else cube[var].sel(band=needed)
    if not isinstance(img.data, dsa.Array):
        whole_series = input_kind in ("sequence", "pixels")
        img = img.chunk(
            {"time": -1 if whole_series else 1, "band": -1, "y": DEFAULT_CHUNK, "x": DEFAULT_CHUNK}
        )
    chunks = img.data.chunks
    if input_kind in ("sequence", "pixels") and len(chunks[0]) > 1 and rechunk_time:
        img = img.chunk({"time": -1})  # tasks read every date of their block; direct store reads stay direct
        chunks = img.data.chunks
    if input_kind in ("sequence", "pixels") and len(chunks[0]) > 1:
        raise PredictError(
            f"{meta['model']['name']!r} consumes the whole time series, but the cube's time is chunked "
            f"{chunks[0]}. Rechunk it: `cube = cube.chunk(time=-1)`."
        )
    ny, nx = img.sizes["y"], img.sizes["x"]
    ych = aligned(chunks[2], stride, ny)
    xch = aligned(chunks[3], stride, nx)
    # Small chunks: one task covers several, so per-task overhead is paid once per MIN_BLOCK² pixels rather
    # than once per chunk. Direct (halo-free) store reads fetch a group in one zarr call at no extra cost, so
    # every chunk under MIN_BLOCK is grouped; dask chunks are merged only when tiny (a rechunk copies them,
    # and the block grid the user chose is otherwise kept).
    # a nodata attr without a valid variable (as rioxarray leaves it): validity is computed, so reads go through dask
    declared = None if "valid" in cube.data_vars else declared_valid(cube[var], needed)
    direct = direct_sources(cube, var, needed, present) if h == 0 and declared is None else None
    below = MIN_BLOCK if direct is not None else TINY
    ych, xch = grouped(ych, ny, below), grouped(xch, nx, below)
    for dim, ch in (("y", ych), ("x", xch)):
        if len(ch) > 1 and min(ch[:-1]) < h:
            need = int(math.ceil(h / stride) * stride)
            raise PredictError(
                f"{dim} chunks {ch[:3]}... are smaller than the halo ({h} px) the model needs; expected chunks of "
                f"at least {need}. Rechunk: `cube = cube.chunk(y={max(need, DEFAULT_CHUNK)}, x={max(need, DEFAULT_CHUNK)})`, "
                "or pass a smaller `halo=` (not seamless)."
            )

    tile = tile_for("cpu" if device == "auto" else device, stride, h) if input_kind == "image" else None
    warn_small_halo(halo, h, int(meta.get("halo", 0)), (ny, nx), (len(ych), len(xch)), tile)

    # Tasks read their own window only without a halo: with one, neighbouring tasks would each decode the
    # chunks they share, where the chunk-neighbour graph decodes every chunk once.
    # Blocks take the source chunks that intersect their window as they are (no rechunk layer in between):
    # a block may span several small chunks or start inside a chunk that was realigned to the stride.
    data = img.data.rechunk({1: -1})
    valid = None
    if "valid" in cube.data_vars:
        valid = dsa.asarray(cube["valid"].data).rechunk((data.chunks[0], data.chunks[2], data.chunks[3]))
    elif declared is not None:
        valid = dsa.asarray(declared.data).rechunk((data.chunks[0], data.chunks[2], data.chunks[3]))

    times = cube["time"].values
    run_times = np.ones(len(times), dtype=bool)
    sensor = in_spec.get("sensor")
    if sensor and "sensor" in cube.coords:
        run_times = np.asarray([str(s) == sensor for s in cube["sensor"].values])
        if not run_times.any():
            log.warning("no date of the cube has sensor %r; every output will be invalid", sensor)
    dates = date_features(times, in_spec.get("date_encoding"))

    n_classes = len(out_spec.get("classes", []))
    spec = RunSpec(
        path=path,
        sha256=sha,
        device=device,
        kind=kind,
        input_kind=input_kind,
        outputs=tuple(wanted),
        channels=int(out_spec.get("feature_dim") or n_classes),
        float_dtype=dtype,
        mask_dtype="uint8" if n_classes < 255 else "uint16",
        nodata=MASK_NODATA if n_classes < 255 else MASK_NODATA_WIDE,
        threshold=threshold,
        batch_size=None if batch_size is None else int(batch_size),
        norm=(tuple(in_spec["mean"]), tuple(in_spec["std"]), float(in_spec.get("scale", 1.0))),
        bands=tuple(needed),
        precision=precision,
        ckpt_options=location(path, ck_options).options_json,
        parts=layout(out_spec),
        halo=h,
        tile=tile,
    )
    arrays, blocks = build_graph(data, valid, (ych, xch), spec, h, run_times, dates, direct=direct)
    new = wrap(arrays, cube, wanted, spec, meta, prefix, Path(path).name)
    remember_model(spec, ck.model)  # tasks in this process (threads) take it, rather than load it again
    return Planned(cube, var, new, arrays, blocks, sha)


def run_planned(
    planned: Planned,
    store: str | os.PathLike[str] | None,
    *,
    overwrite: bool,
    progress: bool,
    reopen: bool = True,
    storage_options: dict[str, Any] | None = None,
) -> tuple[xr.Dataset, WriteReport | None]:
    """The cube with the planned outputs (lazy), or, with ``store``, the outputs written into it."""
    p = planned
    if store is None:
        return _assign(p.cube, p.new), None
    so = {"storage_options": storage_options} if is_url(store) else {}
    report = write_to_store(p.new, p.arrays, p.blocks, store, p.sha, overwrite=overwrite, progress=progress, **so)
    if not reopen:
        return p.cube, report
    from geoarray._zarr_open import _open_zarr
    from geoarray.cube import open_cube

    written = _open_zarr(store, **so)  # a store of outputs only (no `var`, e.g. a grid) is returned as it is
    return (open_cube(store, var=p.var, **so) if p.var in written.data_vars else written), report


def _assign(cube: xr.Dataset, new: dict[str, xr.DataArray]) -> xr.Dataset:
    """``cube`` with the outputs; outputs it already has are replaced, with their class/feature dim."""
    replaced = [n for n in new if n in cube.variables]
    problems, rewrite = dim_clashes(cube, new, replaced)
    if problems:  # xarray would align the new outputs to the old labels: all-NaN outputs, no error
        raise PredictError(
            f"the cube already has outputs on other labels: {'; '.join(problems)}. Pass prefix= (e.g. "
            "prefix='change_'): the outputs then get their own dims ('change_class', 'change_feature')."
        )
    return cube.drop_vars([*replaced, *(d for d in rewrite if d in cube.variables)]).assign(new)


def _resolve_halo(halo: int | str, meta: dict[str, Any], stride: int, input_kind: str) -> int:
    if input_kind == "pixels":
        return 0
    if halo == "auto":
        return int(meta.get("halo", 0))
    if not isinstance(halo, (int, np.integer)) or isinstance(halo, bool) or halo < 0:
        raise PredictError(f"halo={halo!r}; expected 'auto' or a non-negative int (pixels).")
    return int(math.ceil(int(halo) / stride) * stride)
