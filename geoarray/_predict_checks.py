"""predict's option checks against the checkpoint: every one raises a PredictError before anything is read."""

from __future__ import annotations

import numbers
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
import xarray as xr

from geoarray.errors import PredictError


def check_float_dtype(dtype: Any) -> None:
    """The float dtype of stored probabilities/features: float32, or float16 (half the storage)."""
    try:
        ok = np.dtype(dtype).name in ("float32", "float16")
    except TypeError:
        ok = False
    if not ok:
        raise PredictError(f"dtype={dtype!r}; expected 'float32' or 'float16' (half the storage).")


def _check_options(batch_size: Any, dtype: Any, threshold: Any, prefix: Any) -> None:
    if batch_size is not None and (
        not isinstance(batch_size, (int, np.integer)) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise PredictError(f"batch_size={batch_size!r}; expected None (automatic) or a positive int.")
    check_float_dtype(dtype)
    if not isinstance(threshold, numbers.Real) or not 0.0 < float(threshold) < 1.0:
        raise PredictError(f"threshold={threshold!r}; expected a probability strictly between 0 and 1.")
    if not isinstance(prefix, str) or (prefix and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", prefix)):
        raise PredictError(
            f"prefix={prefix!r}; expected a string of ASCII letters, digits, '_', '.' or '-' that starts with a "
            "letter or digit, such as 's2_' (it starts variable and dim names in a Zarr store)."
        )


def _check_dates(meta: dict[str, Any], input_kind: str, cube: xr.Dataset, name: str) -> None:
    """A model built for a fixed number of dates (pixel_mlp's ``num_timesteps``) refuses a cube with others."""
    want, n = meta["model"]["hparams"].get("num_timesteps"), cube.sizes["time"]
    if input_kind in ("pixels", "sequence") and want is not None and int(want) != n:
        model = meta["model"]["name"]
        raise PredictError(
            f"{name} holds a {model!r} model built for {want} dates (num_timesteps={want}); the cube has {n}. "
            f"Select {want} dates (`cube.isel(time=slice(0, {want}))`; in the CLI, a store of {want} dates), or train "
            "a model that takes any number of dates (pixel_cnn, pixel_transformer) on this cube."
        )


def _outputs(kind: str, out_spec: dict[str, Any], outputs: Sequence[str] | None) -> list[str]:
    available = list(out_spec["variables"])
    if outputs is None:
        return available
    wanted = [str(o) for o in outputs]
    bad = [o for o in wanted if o not in available]
    if bad or not wanted:
        raise PredictError(f"outputs={wanted}; a {kind} checkpoint makes {available}.")
    return [o for o in available if o in wanted]


def warn_small_halo(
    halo: Any, h: int, receptive: int, shape: tuple[int, int], blocks: tuple[int, int], tile: int | None
) -> None:
    """A halo the caller chose below the model's receptive field: outputs near block (and CPU tile) edges differ
    from whole-image inference. Silent when the image is one block that runs whole (no larger than the tile; on
    GPUs, ``tile`` None, blocks always run whole)."""
    import warnings

    from geoarray.errors import GeoArrayWarning

    if halo == "auto" or h >= receptive or (blocks == (1, 1) and (tile is None or max(shape) <= tile)):
        return
    warnings.warn(
        f"halo={halo!r} is smaller than the model's receptive field ({receptive} px, the checkpoint's halo): "
        f"outputs within {receptive} px of the edges of the {blocks[0]} x {blocks[1]} blocks differ from "
        "whole-image inference, so seams can show. Pass halo='auto' for a seamless output (or keep the "
        "smaller halo knowingly, for speed).",
        GeoArrayWarning,
        stacklevel=4,
    )
