"""The variables predict makes: each output's dims, coordinates and attrs around its dask array.

Outputs keep the cube's ``y``/``x`` (and ``time``) coordinates and ``spatial_ref``. A model with several
outputs (``output.parts`` of its checkpoint, see :mod:`geoarray._output_parts`) gives each part its own
variable and its own feature dim.
"""

from __future__ import annotations

from typing import Any

import dask.array as dsa
import numpy as np
import xarray as xr

from geoarray._inference import RunSpec
from geoarray._output_parts import channels_of

__all__ = ["layout", "wrap"]

_PART_NAMES = {
    "arrow_of_time": "probability that the previous date was taken before this one (arrow of time; NaN on "
    "the first date)",
    "features_pca": "principal components of the features (PCA fitted at the end of training)",
}


def layout(out_spec: dict[str, Any]) -> tuple[tuple[str, int, int, bool, str | None], ...]:
    """``output.parts`` as channel slices: ``(name, start, stop, has a dim, activation)``."""
    out, start = [], 0
    for p in out_spec.get("parts") or ():
        out.append((p["name"], start, start + p["channels"], p["dim"] is not None, p["activation"]))
        start += p["channels"]
    return tuple(out)


def wrap(
    arrays: list[dsa.Array],
    cube: xr.Dataset,
    wanted: list[str],
    spec: RunSpec,
    meta: dict[str, Any],
    prefix: str,
    ckpt_name: str,
) -> dict[str, xr.DataArray]:
    from geoarray._version import __version__

    out_spec = meta["output"]
    has_time = spec.input_kind != "pixels"
    coords: dict[str, Any] = {"y": cube["y"], "x": cube["x"]}
    if has_time:
        coords["time"] = cube["time"]
    if "spatial_ref" in cube.coords:
        coords["spatial_ref"] = cube["spatial_ref"]
    provenance = {
        "checkpoint": ckpt_name,
        "checkpoint_sha256": spec.sha256,
        "model": meta["model"]["name"],
        "task": meta["task"],
        "geoarray_version": __version__,
        "precision": spec.precision,
        # what else shapes the values: a resumed run must use the same (see _writer._check_resumable)
        "halo": int(spec.halo),
    }
    result = {}
    part_dims = {p["name"]: p["dim"] for p in out_spec.get("parts") or ()}
    for arr, out in zip(arrays, wanted, strict=True):
        k = channels_of(spec, out)
        has_k = k > 0
        # prefixed outputs get their own dim: models with other class lists / feature sizes sit side by side
        kdim = prefix + (part_dims.get(out) or ("feature" if out == "features" else "class"))
        dims = (("time",) if has_time else ()) + ((kdim,) if has_k else ()) + ("y", "x")
        c = dict(coords)
        if has_k:
            c[kdim] = (
                np.asarray(out_spec["classes"], dtype=object)
                if spec.kind != "features"
                else np.arange(k)
            )
        attrs = dict(provenance)
        if out == "mask":
            attrs.update(nodata=spec.nodata, classes=list(out_spec["classes"]), long_name="predicted class")
            if spec.kind == "multilabel":
                attrs.update(threshold=float(spec.threshold))
        elif out == "probabilities":
            attrs.update(classes=list(out_spec["classes"]), long_name="class probability")
        elif out in _PART_NAMES:
            attrs.update(long_name=_PART_NAMES[out])
        elif not has_k:
            attrs.update(long_name=f"{out} (a map)")
        else:
            attrs.update(long_name="learned features" + (f" ({out})" if out != "features" else ""))
        da = xr.DataArray(arr, dims=dims, coords=c, attrs=attrs)
        result[f"{prefix}{out}"] = da
    return result
