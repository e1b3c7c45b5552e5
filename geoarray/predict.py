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
import numbers
import operator
import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import dask.array as dsa
import numpy as np
import xarray as xr
from dask.base import tokenize
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from geoarray import _inference
from geoarray._progress import compute_with_progress
from geoarray.checkpoint import file_sha256, read_metadata
from geoarray.cube import DEFAULT_CHUNK, _grid_mismatch, _open_zarr, validate_cube
from geoarray.errors import BandError, PredictError, StoreError, StoreExistsError, StoreNotFoundError

__all__ = ["predict"]

log = logging.getLogger(__name__)

MASK_NODATA = 255
_COMPLETE = "geoarray_complete"


def _device(device: str) -> str:
    from geoarray._devices import resolve_device

    return resolve_device(device, PredictError, check_cuda=not _remote_client())


def _remote_client() -> bool:
    """A distributed client is active: its workers, not this process, decide which devices exist."""
    try:
        from distributed import get_client

        get_client()
        return True
    except (ImportError, ValueError):
        return False


def _check_options(batch_size: Any, dtype: Any, threshold: Any, prefix: Any) -> None:
    if batch_size is not None and (
        not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise PredictError(f"batch_size={batch_size!r}; expected None (automatic) or a positive int.")
    try:
        ok_dtype = np.dtype(dtype).name in ("float32", "float16")
    except TypeError:
        ok_dtype = False
    if not ok_dtype:
        raise PredictError(f"dtype={dtype!r}; expected 'float32' or 'float16' (half the storage).")
    if not isinstance(threshold, numbers.Real) or not 0.0 < float(threshold) < 1.0:
        raise PredictError(f"threshold={threshold!r}; expected a probability strictly between 0 and 1.")
    if not isinstance(prefix, str):
        raise PredictError(f"prefix={prefix!r}; expected a string such as 's2_'.")


def _aligned(chunks: tuple[int, ...], stride: int, size: int) -> tuple[int, ...]:
    """Chunks whose inner edges fall on multiples of ``stride`` (the last chunk takes the remainder)."""
    if all(c % stride == 0 for c in chunks[:-1]):
        return chunks
    c = int(math.ceil(chunks[0] / stride) * stride)
    return dsa.core.normalize_chunks(c, (size,))[0]


MIN_BLOCK = 256
TINY = 32


def _grouped(chunks: tuple[int, ...], size: int, below: int) -> tuple[int, ...]:
    """Chunks under ``below`` px grouped into whole multiples of the chunk size of at least MIN_BLOCK px."""
    c = chunks[0]
    if c >= below or len(chunks) == 1:
        return chunks
    return dsa.core.normalize_chunks(math.ceil(MIN_BLOCK / c) * c, (size,))[0]


def _dates_in_days(times: np.ndarray, encoding: str | None) -> np.ndarray:
    t = np.asarray(times).astype("datetime64[D]")
    if encoding == "days":
        return (t - np.datetime64("1970-01-01", "D")).astype(np.float32)
    year_start = t.astype("datetime64[Y]").astype("datetime64[D]")
    return (t - year_start).astype(np.float32) + 1.0  # day of year, 1-based


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
        output seamless; a smaller halo is faster and differs near block edges. Rounded up to the stride.
    batch_size
        Dates per forward pass for image models (default: all dates of a block), pixels per pass for
        time-series models (default 65536).
    device
        ``"auto"`` (CUDA if available), ``"cpu"`` or ``"cuda"``.
    outputs
        Which outputs to make: for segmentation ``["probabilities", "mask"]`` (default both), for feature
        models ``["features"]``.
    prefix
        Prefix of the output names, e.g. ``"s2_"`` so per-sensor checkpoints write side by side.
    store
        A Zarr cube to write the outputs into, chunk by chunk. Only the new variables are written; a run that
        was killed resumes where it stopped when called again.
    overwrite
        Replace output variables that already exist in ``store``.
    dtype
        Float dtype of probabilities/features (``"float16"`` halves storage).
    threshold
        Sigmoid threshold of multi-label masks.
    progress
        Show a progress bar while writing to ``store``.

    Returns
    -------
    xarray.Dataset
        ``cube`` with the outputs (lazy), or with ``store`` the store reopened (outputs read from disk).
        Segmentation: ``probabilities(time, class, y, x)`` and ``mask(time, y, x)`` (``mask(time, class, y, x)``
        for multi-label models; nodata 255). Feature models: ``features(time, feature, y, x)``. Models that
        consume the whole series drop ``time``. Invalid input pixels give NaN / nodata. Attrs record the
        checkpoint sha256, model and geoarray version.

    Raises
    ------
    BandError
        The cube lacks a band the checkpoint needs.
    PredictError
        Chunks that don't fit the model (time chunked for a time-series model, chunks smaller than the halo),
        a chip classifier, or outputs that exist in ``store`` without ``overwrite=True``.
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
    validate_cube(cube, var=var)
    _check_options(batch_size, dtype, threshold, prefix)
    dtype = np.dtype(dtype).name  # type: ignore[assignment]  # np.float16, "f2", ... -> "float16"
    threshold = float(threshold)
    device = _device(device)
    path = str(Path(ckpt).resolve())
    meta = read_metadata(path)
    sha = file_sha256(path)
    out_spec, in_spec = meta["output"], meta["input"]
    kind = out_spec["kind"]
    if kind == "classification":
        raise PredictError(
            f"{Path(path).name} is a chip classifier (task {meta['task']!r}): it gives one label per chip, not per "
            "pixel. Use geoarray.chips to classify chips, or a segmentation/feature checkpoint for predict."
        )
    input_kind = in_spec.get("kind", "image")
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

    img = cube[var].sel(band=needed)
    if not isinstance(img.data, dsa.Array):
        whole_series = input_kind in ("sequence", "pixels")
        img = img.chunk(
            {"time": -1 if whole_series else 1, "band": -1, "y": DEFAULT_CHUNK, "x": DEFAULT_CHUNK}
        )
    chunks = img.data.chunks
    if input_kind in ("sequence", "pixels") and len(chunks[0]) > 1:
        raise PredictError(
            f"{meta['model']['name']!r} consumes the whole time series, but the cube's time is chunked "
            f"{chunks[0]}. Rechunk it: `cube = cube.chunk(time=-1)`."
        )
    ny, nx = img.sizes["y"], img.sizes["x"]
    ych = _aligned(chunks[2], stride, ny)
    xch = _aligned(chunks[3], stride, nx)
    # Small chunks: one task covers several, so per-task overhead is paid once per MIN_BLOCK² pixels rather
    # than once per chunk. Direct (halo-free) store reads fetch a group in one zarr call at no extra cost, so
    # every chunk under MIN_BLOCK is grouped; dask chunks are merged only when tiny (a rechunk copies them,
    # and the block grid the user chose is otherwise kept).
    direct = _direct_sources(cube, var, needed, present) if h == 0 else None
    below = MIN_BLOCK if direct is not None else TINY
    ych, xch = _grouped(ych, ny, below), _grouped(xch, nx, below)
    for dim, ch in (("y", ych), ("x", xch)):
        if len(ch) > 1 and min(ch[:-1]) < h:
            need = int(math.ceil(h / stride) * stride)
            raise PredictError(
                f"{dim} chunks {ch[:3]}... are smaller than the halo ({h} px) the model needs; expected chunks of "
                f"at least {need}. Rechunk: `cube = cube.chunk(y={max(need, DEFAULT_CHUNK)}, x={max(need, DEFAULT_CHUNK)})`, "
                "or pass a smaller `halo=` (not seamless)."
            )

    # Tasks read their own window only without a halo: with one, neighbouring tasks would each decode the
    # chunks they share, where the chunk-neighbour graph decodes every chunk once.
    # Blocks take the source chunks that intersect their window as they are (no rechunk layer in between):
    # a block may span several small chunks or start inside a chunk that was realigned to the stride.
    data = img.data.rechunk({1: -1})
    valid = None
    if "valid" in cube.data_vars:
        valid = dsa.asarray(cube["valid"].data).rechunk((data.chunks[0], data.chunks[2], data.chunks[3]))

    times = cube["time"].values
    run_times = np.ones(len(times), dtype=bool)
    sensor = in_spec.get("sensor")
    if sensor and "sensor" in cube.coords:
        run_times = np.asarray([str(s) == sensor for s in cube["sensor"].values])
        if not run_times.any():
            log.warning("no date of the cube has sensor %r; every output will be invalid", sensor)
    dates = _dates_in_days(times, in_spec.get("date_encoding"))

    spec = {
        "path": path,
        "sha256": sha,
        "device": device,
        "kind": kind,
        "input_kind": input_kind,
        "outputs": wanted,
        "channels": int(out_spec.get("feature_dim") or len(out_spec.get("classes", []))),
        "float_dtype": dtype,
        "mask_dtype": "uint8" if len(out_spec.get("classes", [])) < 255 else "uint16",
        "nodata": MASK_NODATA if len(out_spec.get("classes", [])) < 255 else 65535,
        "threshold": threshold,
        "batch_size": batch_size,
    }
    spec["norm"] = (in_spec["mean"], in_spec["std"], float(in_spec.get("scale", 1.0)))
    arrays, blocks = _build_graph(data, valid, (ych, xch), spec, h, run_times, dates, direct=direct)
    new = _wrap(arrays, cube, wanted, spec, meta, prefix, Path(path).name)
    if store is None:
        return cube.assign(new)
    _write_to_store(new, arrays, blocks, store, sha, overwrite=overwrite, progress=progress)
    from geoarray.cube import open_cube

    return open_cube(store, var=var)


def _direct_sources(
    cube: xr.Dataset, var: str, needed: list[str], present: list[str]
) -> dict[str, Any] | None:
    """Store locations when imagery (and valid) are untouched store variables: tasks then read their own windows."""
    from geoarray._source import source_of

    img = source_of(cube[var])
    if img is None:
        return None
    valid = None
    if "valid" in cube.data_vars:
        valid = source_of(cube["valid"])
        if valid is None:
            return None
    idx = [present.index(b) for b in needed]
    bands: Any = slice(None) if idx == list(range(len(present))) else idx
    return {"img": img, "valid": valid, "bands": bands}


def _resolve_halo(halo: int | str, meta: dict[str, Any], stride: int, input_kind: str) -> int:
    if input_kind == "pixels":
        return 0
    if halo == "auto":
        return int(meta.get("halo", 0))
    if not isinstance(halo, (int, np.integer)) or isinstance(halo, bool) or halo < 0:
        raise PredictError(f"halo={halo!r}; expected 'auto' or a non-negative int (pixels).")
    return int(math.ceil(int(halo) / stride) * stride)


def _outputs(kind: str, out_spec: dict[str, Any], outputs: Sequence[str] | None) -> list[str]:
    available = list(out_spec["variables"])
    if outputs is None:
        return available
    wanted = [str(o) for o in outputs]
    bad = [o for o in wanted if o not in available]
    if bad or not wanted:
        raise PredictError(f"outputs={wanted}; a {kind} checkpoint makes {available}.")
    return [o for o in available if o in wanted]


def _build_graph(
    x: dsa.Array,
    valid: dsa.Array | None,
    blocks: tuple[tuple[int, ...], tuple[int, ...]],
    spec: dict[str, Any],
    h: int,
    run_times: np.ndarray,
    dates: np.ndarray,
    *,
    direct: dict[str, Any] | None = None,
) -> tuple[list[dsa.Array], list[tuple[Any, list[Any]]]]:
    """One task per output block (``blocks``: the y and x block sizes); outputs are getitem views of it.

    A block's task receives the grid of source chunks of ``x`` (and ``valid``) that intersect its window
    (block + halo). Returns the output arrays and, per block, its task key and the key of each output's chunk.
    """
    tch = x.chunks[0]
    ych, xch = blocks
    ybounds, xbounds = np.cumsum((0, *ych)), np.cumsum((0, *xch))
    ysrc, xsrc = np.cumsum((0, *x.chunks[2])), np.cumsum((0, *x.chunks[3]))
    ny, nx = int(ybounds[-1]), int(xbounds[-1])
    input_kind = spec["input_kind"]
    name = "geoarray-predict-" + tokenize(x.name, valid.name if valid is not None else None, spec, h, direct)
    dsk: dict[Any, Any] = {}
    tbounds = np.cumsum((0, *tch))
    for ti in range(len(tch)):
        t0, t1 = int(tbounds[ti]), int(tbounds[ti + 1])
        for yi in range(len(ych)):
            y0, y1 = int(ybounds[yi]), int(ybounds[yi + 1])
            wy0, wy1 = max(0, y0 - h), min(ny, y1 + h)
            ys = _covering(ysrc, wy0, wy1)
            for xi in range(len(xch)):
                x0, x1 = int(xbounds[xi]), int(xbounds[xi + 1])
                wx0, wx1 = max(0, x0 - h), min(nx, x1 + h)
                xs = _covering(xsrc, wx0, wx1)
                base_y, base_x = int(ysrc[ys[0]]), int(xsrc[xs[0]])
                block_spec = dict(
                    spec,
                    crop=(wy0 - base_y, wy1 - base_y, wx0 - base_x, wx1 - base_x),
                    inner=(y0 - wy0, x0 - wx0, y1 - y0, x1 - x0),
                    run_times=run_times[t0:t1].tolist(),
                    dates=dates[t0:t1].tolist(),
                )
                if direct is not None:
                    block_spec["direct"] = dict(direct, t=(t0, t1), win=(wy0, wy1, wx0, wx1))
                    dsk[(name, ti, yi, xi)] = (_inference.run_block, None, None, block_spec)
                    continue
                keys = [[(x.name, ti, 0, yj, xj) for xj in xs] for yj in ys]
                vkeys = None if valid is None else [[(valid.name, ti, yj, xj) for xj in xs] for yj in ys]
                dsk[(name, ti, yi, xi)] = (_inference.run_block, keys, vkeys, block_spec)
    deps = [] if direct is not None else [x] if valid is None else [x, valid]
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=deps)  # type: ignore[arg-type]

    arrays = []
    out_keys: dict[Any, list[Any]] = {key: [] for key in dsk}
    k = spec["channels"]
    for j, out in enumerate(spec["outputs"]):
        dtype = np.dtype(spec["mask_dtype"] if out == "mask" else spec["float_dtype"])
        has_k = out != "mask" or spec["kind"] == "multilabel"
        oname = f"{name}-{out}"
        layer: dict[Any, Any] = {}
        for key in dsk:
            _, ti, yi, xi = key
            lead = () if input_kind == "pixels" else (ti,)
            okey = (oname, *lead, *((0,) if has_k else ()), yi, xi)
            layer[okey] = (operator.getitem, key, j)
            out_keys[key].append(okey)
        g = HighLevelGraph(
            {**graph.layers, oname: MaterializedLayer(layer)}, {**graph.dependencies, oname: {name}}
        )
        lead_chunks: tuple[tuple[int, ...], ...] = () if input_kind == "pixels" else (tch,)
        chunks = (*lead_chunks, *(((k,),) if has_k else ()), ych, xch)
        arrays.append(
            dsa.Array(g, oname, chunks, dtype=dtype, meta=np.empty((0,) * len(chunks), dtype=dtype))
        )
    return arrays, list(out_keys.items())


def _covering(bounds: np.ndarray, lo: int, hi: int) -> list[int]:
    """Indices of the chunks (edges ``bounds``) that intersect ``[lo, hi)``."""
    first = int(np.searchsorted(bounds, lo, side="right")) - 1
    last = int(np.searchsorted(bounds, hi, side="left")) - 1
    return list(range(first, last + 1))


def _wrap(
    arrays: list[dsa.Array],
    cube: xr.Dataset,
    wanted: list[str],
    spec: dict[str, Any],
    meta: dict[str, Any],
    prefix: str,
    ckpt_name: str,
) -> dict[str, xr.DataArray]:
    import geoarray

    out_spec = meta["output"]
    has_time = spec["input_kind"] != "pixels"
    coords: dict[str, Any] = {"y": cube["y"], "x": cube["x"]}
    if has_time:
        coords["time"] = cube["time"]
    if "spatial_ref" in cube.coords:
        coords["spatial_ref"] = cube["spatial_ref"]
    provenance = {
        "checkpoint": ckpt_name,
        "checkpoint_sha256": spec["sha256"],
        "model": meta["model"]["name"],
        "task": meta["task"],
        "geoarray_version": geoarray.__version__,
    }
    result = {}
    for arr, out in zip(arrays, wanted, strict=True):
        has_k = out != "mask" or spec["kind"] == "multilabel"
        kdim = "feature" if out == "features" else "class"
        dims = (("time",) if has_time else ()) + ((kdim,) if has_k else ()) + ("y", "x")
        c = dict(coords)
        if has_k:
            c[kdim] = (
                np.asarray(out_spec["classes"], dtype=object)
                if kdim == "class"
                else np.arange(spec["channels"])
            )
        attrs = dict(provenance)
        if out == "mask":
            attrs.update(
                nodata=spec["nodata"], classes=list(out_spec["classes"]), long_name="predicted class"
            )
        elif out == "probabilities":
            attrs.update(classes=list(out_spec["classes"]), long_name="class probability")
        else:
            attrs.update(long_name="learned features")
        da = xr.DataArray(arr, dims=dims, coords=c, attrs=attrs)
        result[f"{prefix}{out}"] = da
    return result


# ------------------------------------------------------------------------------------------------------
# Writing into a store, resumably
# ------------------------------------------------------------------------------------------------------
def _write_to_store(
    new: dict[str, xr.DataArray],
    arrays: list[dsa.Array],
    blocks: list[tuple[Any, list[Any]]],
    store: str | os.PathLike[str],
    sha: str,
    *,
    overwrite: bool,
    progress: bool,
) -> None:
    import zarr

    root = Path(store)
    if not root.exists():
        raise StoreNotFoundError(
            f"no Zarr store at {str(root)!r}; predict(store=...) adds outputs to an existing cube."
        )
    existing = _open_zarr(root)
    problem = _grid_mismatch(existing, xr.Dataset(new))
    if problem:
        raise StoreError(
            f"cannot write outputs into {str(root)!r}: {problem}. Predict on the cube opened from it."
        )
    _check_writable(root)

    to_create, resume = [], []
    for name in new:
        if name in existing.variables:
            attrs = existing[name].attrs
            same = attrs.get("checkpoint_sha256") == sha
            if overwrite:
                shutil.rmtree(root / name)
                to_create.append(name)
            elif not attrs.get(_COMPLETE, True) and same:
                resume.append(name)
            elif attrs.get(_COMPLETE, True):
                raise StoreExistsError(
                    f"{name!r} already exists in {str(root)!r}; pass overwrite=True to replace it, or prefix= to "
                    "write beside it."
                )
            else:
                raise StoreExistsError(
                    f"{name!r} in {str(root)!r} is a partial output of another checkpoint; pass overwrite=True."
                )
        else:
            to_create.append(name)
    if to_create:
        ds = xr.Dataset({n: new[n] for n in to_create})
        for n in to_create:
            ds[n].attrs[_COMPLETE] = False
            ds[n].encoding = {"chunks": tuple(c[0] for c in ds[n].data.chunks)}
            if "spatial_ref" in ds.coords:
                ds[n].encoding["grid_mapping"] = "spatial_ref"
        ds = ds.drop_vars([c for c in ds.coords if c in existing.variables])
        ds.attrs = dict(existing.attrs)  # xarray rewrites the group attrs: keep them byte-identical
        # compute=False writes only the metadata now; the chunks are written by our own tasks below
        ds.to_zarr(root, mode="a", zarr_format=3, consolidated=False, compute=False)
    if resume:
        log.info("resuming %s in %s", resume, root)

    names = list(new)
    token = uuid.uuid4().hex
    zarrays = {n: zarr.open_array(str(root / n), mode="r") for n in names}
    write_name = "geoarray-write-" + token
    dsk: dict[Any, Any] = {}
    skipped = 0
    for run_key, okeys in blocks:
        targets, done = [], True
        for n, arr, okey in zip(names, arrays, okeys, strict=True):
            region = tuple(
                slice(int(sum(c[:i])), int(sum(c[: i + 1])))
                for i, c in zip(okey[1:], arr.chunks, strict=True)
            )
            done = done and _chunk_exists(zarrays[n], root / n, tuple(okey[1:]))
            targets.append((str(root / n), token, region))
        if done:
            skipped += 1
            continue
        dsk[(write_name, *run_key[1:])] = (_inference.write_block, run_key, targets)
    if skipped:
        log.info("%d blocks already written; computing the other %d", skipped, len(dsk))
    if dsk:
        dsk[write_name] = (_inference.count, *list(dsk))
        run_layer = arrays[0].dask  # holds the run_block layer and everything it reads
        g = HighLevelGraph(
            {**run_layer.layers, write_name: MaterializedLayer(dsk)},
            {**run_layer.dependencies, write_name: {run_key[0] for run_key, _ in blocks[:1]}},
        )
        compute_with_progress(Delayed(write_name, g), enabled=progress, desc="predict")
    for n in names:
        zarr.open_array(str(root / n), mode="r+").attrs.update({_COMPLETE: True})


def _check_writable(root: Path) -> None:
    """Probe with a real file: permission bits alone miss read-only mounts, immutable dirs and root's bypass."""
    probe = root / f".geoarray-write-probe-{uuid.uuid4().hex}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise StoreError(
            f"the store {str(root)!r} is not writable ({e.strerror or e}); predict(store=...) writes its outputs "
            "there. Fix the permissions, or pass store= a writable copy (geoarray predict --output NEW.zarr)."
        ) from None


def _chunk_exists(z: Any, folder: Path, coords: tuple[int, ...]) -> bool:
    key = z.metadata.encode_chunk_key(coords)
    return (folder / key).exists()
