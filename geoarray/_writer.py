"""Writing predict's outputs into a Zarr cube chunk by chunk, resumably.

Variables are created first with ``geoarray_complete = False``; each block's task writes its chunks; the flag
turns True when every chunk is there. A run that is killed and started again writes only the missing chunks.
"""

from __future__ import annotations

import logging
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import dask.array as dsa
import xarray as xr
from dask.delayed import Delayed
from dask.highlevelgraph import HighLevelGraph, MaterializedLayer

from geoarray import _inference
from geoarray._progress import compute_with_progress
from geoarray.cube import _grid_mismatch, _open_zarr
from geoarray.errors import StoreError, StoreExistsError, StoreNotFoundError

__all__ = ["COMPLETE", "write_to_store"]

log = logging.getLogger(__name__)

COMPLETE = "geoarray_complete"


# ------------------------------------------------------------------------------------------------------
def write_to_store(
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
            elif not attrs.get(COMPLETE, True) and same:
                resume.append(name)
            elif attrs.get(COMPLETE, True):
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
            ds[n].attrs[COMPLETE] = False
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
        zarr.open_array(str(root / n), mode="r+").attrs.update({COMPLETE: True})


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
