"""Per-process model cache and the block kernels predict runs inside dask tasks.

This module is importable on every worker, so tasks reference these functions by name (never pickled by
value) and the model loads once per process, keyed by the checkpoint's sha256.
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from geoarray._block_write import _opened
from geoarray._output_parts import channels_of, split_parts
from geoarray._scale_check import check_scale
from geoarray._threads import torch_threads
from geoarray._tiles import tiled


@dataclass(frozen=True)
class RunSpec:
    """What every block task of one predict run shares: the checkpoint, the device and the outputs."""

    path: str
    sha256: str
    device: str
    kind: str  # "segmentation", "multilabel" or "features"
    input_kind: str  # "image", "sequence" or "pixels"
    outputs: tuple[str, ...]
    channels: int
    float_dtype: str
    mask_dtype: str
    nodata: int
    threshold: float
    batch_size: int | None
    norm: tuple[tuple[float, ...], tuple[float, ...], float]  # mean, std, scale
    bands: tuple[str, ...] = ()  # names, in input order (for messages)
    precision: str = "32"  # "32", or autocast to "bf16" / "16" (outputs are cast back to float32)
    ckpt_options: str = "{}"  # fsspec storage_options (JSON) when ``path`` is a URL
    # models with several outputs (output.parts): (name, first channel, end channel, has a channel dim, activation)
    parts: tuple[tuple[str, int, int, bool, str | None], ...] = ()
    halo: int = 0  # px of context around a block (a multiple of the stride)
    tile: int | None = None  # image models: run blocks larger than this in tiles of this side, each with the halo


@dataclass(frozen=True)
class BlockSpec:
    """One block task: where its window lies in the chunks it receives (or reads), and its dates."""

    run: RunSpec
    crop: tuple[int, int, int, int]  # the window inside the mosaic of received chunks
    inner: tuple[int, int, int, int]  # offset of the block inside the window, and its size
    run_times: tuple[bool, ...]  # dates the model runs on (others come out invalid)
    dates: tuple[float, ...]  # what sequence/pixel models receive as dates
    direct: dict[str, Any] | None = None  # store locations, when the task reads its own window


_LOCK = threading.Lock()
_MAX_MODELS = 4  # checkpoints kept loaded per process (GPU models hold device memory)
_MODELS: OrderedDict[tuple[str, str], Any] = OrderedDict()


def clear_caches() -> None:
    """Drop the models and open Zarr arrays predict keeps in this process (and free GPU memory they hold).

    predict loads a checkpoint once per process and keeps the last few (at most 4) for the next call; call
    this to release them at once. On a Dask cluster, run it on the workers: ``client.run(clear_caches)``.
    """
    with _LOCK:
        _MODELS.clear()
    _opened.cache_clear()
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


@functools.lru_cache(maxsize=16)
def on_device(spec: RunSpec) -> RunSpec:
    """A run planned under a distributed client with ``device="auto"`` or ``"cuda"``, as this worker runs it:
    ``"auto"`` on its GPU when it has one (whole blocks), else on its CPU (in tiles). The device and precision
    are checked here, on the worker (the client may have no GPU, or another one: bf16 needs Ampere or newer).
    """
    from geoarray._devices import check_precision, resolve_device
    from geoarray.errors import PredictError

    device = resolve_device(spec.device, PredictError)
    precision = check_precision(spec.precision, device, PredictError)
    return replace(spec, device=device, precision=precision, tile=spec.tile if device == "cpu" else None)


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any, limit: int) -> None:
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > limit:
        cache.popitem(last=False)


LOADS = 0  #: checkpoint loads by :func:`get_model` in this process (``client.run`` reads it per worker)


def get_model(path: str, sha256: str, device: str, options: str = "{}") -> Any:
    """The checkpoint's model, loaded once per process (and per device); the last few stay cached.

    ``options`` are the fsspec storage_options (JSON) of a checkpoint URL.
    """
    global LOADS
    key = (sha256, device)
    with _LOCK:
        model = _MODELS.get(key)
        if model is not None:
            _MODELS.move_to_end(key)
            return model
    from geoarray.checkpoint import load_checkpoint
    from geoarray.errors import CheckpointError

    with _LOAD_LOCK:  # one load per key, without holding the cache lock during the load
        with _LOCK:
            model = _MODELS.get(key)
        if model is not None:
            return model
        import json

        ck = load_checkpoint(path, device=device, storage_options=json.loads(options) or None)
        LOADS += 1
        if ck.sha256 != sha256:
            raise CheckpointError(
                f"the checkpoint {path!r} changed while predicting (its sha256 differs from the one predict "
                "started with); outputs would mix two models. Run predict again with overwrite=True."
            )
        model = _for_inference(ck.model)
        with _LOCK:
            _remember(_MODELS, key, model, _MAX_MODELS)
    return model


def _for_inference(model: Any) -> Any:
    import torch

    from geoarray.models.base import fuse_batchnorm

    fuse_batchnorm(model)  # inference only: one pass less over every feature map
    if getattr(model, "input_kind", "") in ("image", "sequence"):
        # NHWC convolutions are ~1.6x faster on CPU (oneDNN) and standard on GPU (tensor cores)
        model = model.to(memory_format=torch.channels_last)
    return model


def remember_model(spec: RunSpec, model: Any) -> None:
    """Keep the model predict loaded (on the CPU, to check the checkpoint) for its tasks in this process.

    Without a distributed client the tasks run here (threads), and would otherwise load the file again while
    the other threads wait. ``model`` must be the checkpoint ``spec.sha256`` names, freshly loaded (this
    folds its BatchNorm in place).
    """
    from geoarray._devices import remote_client

    if spec.device != "cpu" or remote_client():
        return
    key = (spec.sha256, spec.device)
    with _LOCK:
        if key in _MODELS:
            _MODELS.move_to_end(key)
            return
    model = _for_inference(model)
    with _LOCK:
        _remember(_MODELS, key, model, _MAX_MODELS)


_LOAD_LOCK = threading.Lock()


def assemble(neighbours: list[list[np.ndarray]], crop: tuple[int, int, int, int]) -> np.ndarray:
    """``[y0:y1, x0:x1]`` of the mosaic of a grid of neighbouring chunks ``(..., y, x)``.

    Only the cropped parts are copied, once, into the result (a block + halo is usually a small part of the
    chunks it touches); a window inside one chunk is a view of it.
    """
    y0, y1, x0, x1 = crop
    if len(neighbours) == 1 and len(neighbours[0]) == 1:
        return neighbours[0][0][..., y0:y1, x0:x1]
    first = neighbours[0][0]
    dtype = np.result_type(*(c for row in neighbours for c in row))
    out = np.empty((*first.shape[:-2], y1 - y0, x1 - x0), dtype=dtype)
    top = 0
    for row in neighbours:
        height = row[0].shape[-2]
        ry0, ry1 = max(y0, top), min(y1, top + height)
        left = 0
        for chunk in row:
            width = chunk.shape[-1]
            rx0, rx1 = max(x0, left), min(x1, left + width)
            if ry1 > ry0 and rx1 > rx0:
                out[..., ry0 - y0 : ry1 - y0, rx0 - x0 : rx1 - x0] = chunk[
                    ..., ry0 - top : ry1 - top, rx0 - left : rx1 - left
                ]
            left += width
        top += height
    return out


def _postprocess(logits: Any, kind: str, spec: RunSpec) -> list[np.ndarray]:
    """Model outputs ``(N, K, h, w)`` -> the float/mask arrays predict writes, in spec order.

    The activation and argmax run where the logits are (on a GPU, before the copy to the host: a mask crosses
    the bus as class ids, and the host, which sets the pace around a GPU, does not run softmax)."""
    import torch

    outs: list[np.ndarray] = []
    if kind == "segmentation":
        logits = logits.float()
        if logits.ndim == 4:  # argmax over channels is fast only where they are innermost (~10x)
            logits = logits.contiguous(memory_format=torch.channels_last)
        probs = torch.softmax(logits, dim=1) if "probabilities" in spec.outputs else None
        for name in spec.outputs:
            if probs is not None and name == "probabilities":
                outs.append(np.ascontiguousarray(probs.cpu().numpy(), dtype=spec.float_dtype))
            elif name == "mask":
                # softmax keeps the order of the logits, so this is the probabilities' argmax without them;
                # over the channel dim, innermost in the model's channels_last output (2x numpy's on probs)
                outs.append(logits.argmax(1).cpu().numpy().astype(spec.mask_dtype))
    elif kind == "multilabel":
        probs = torch.sigmoid(logits.float())
        for name in spec.outputs:
            if name == "probabilities":
                outs.append(probs.cpu().numpy().astype(spec.float_dtype, copy=False))
            elif name == "mask":
                outs.append((probs > spec.threshold).cpu().numpy().astype(spec.mask_dtype))
    elif spec.parts:  # slices of the channels, one per output
        outs.extend(split_parts(logits, spec))
    else:
        outs.append(logits.float().cpu().numpy().astype(spec.float_dtype, copy=False))
    return outs


def _mark_invalid(outs: list[np.ndarray], invalid: np.ndarray, spec: RunSpec, class_axis: int) -> None:
    """Invalid pixels: NaN for floats, the nodata value for masks. ``invalid`` has the outputs' leading dims."""
    if not invalid.any():
        return
    for arr in outs:
        fill = np.nan if arr.dtype.kind == "f" else spec.nodata
        if arr.ndim == invalid.ndim + 1:  # has a class/feature axis
            np.moveaxis(arr, class_axis, -1)[invalid] = fill
        else:
            arr[invalid] = fill


def run_block(
    neighbours: list[list[np.ndarray]] | None, valid_nb: list[list[np.ndarray]] | None, block: BlockSpec
) -> tuple[np.ndarray, ...]:
    """Predict one output block from its input chunk neighbourhood.

    ``neighbours`` are the raw input chunks ``(T, C, y, x)`` around the block, ``valid_nb`` the matching
    ``valid`` chunks (or None); or, with ``block.direct``, the task reads its window from the store itself.
    The window is normalised and filled like the training stream does, the model runs, and the outputs named
    in ``block.run.outputs`` come back cropped to the block.
    """
    from geoarray._preprocess import normalize_fill

    if block.run.device != "cpu":  # "auto" or a GPU: decided and checked on this worker (cached)
        block = replace(block, run=on_device(block.run))
    spec = block.run
    mean, std, scale = spec.norm
    direct = block.direct
    if direct is not None:  # untouched store variables: read block + halo with zarr in this task
        from geoarray._source import read

        (t0, t1), (wy0, wy1, wx0, wx1) = direct["t"], direct["win"]
        space = (slice(wy0, wy1), slice(wx0, wx1))
        store, name = direct["img"]
        raw = read(store, name, (slice(t0, t1), direct["bands"], *space))
        vwin = None
        if direct["valid"]:
            vstore, vname = direct["valid"]
            vwin = read(vstore, vname, (slice(t0, t1), *space))
    else:
        assert neighbours is not None  # the graph passes chunks whenever it does not pass "direct"
        raw = assemble(neighbours, block.crop)
        vwin = assemble(valid_nb, block.crop) if valid_nb is not None else None
    window, ok = normalize_fill(raw, vwin, mean, std, scale)
    check_scale(window, ok, spec.norm, spec.bands)
    model = get_model(spec.path, spec.sha256, spec.device, spec.ckpt_options)
    with torch_threads():
        return _run_window(model, window, ok, block)


def _run_window(model: Any, window: np.ndarray, ok: np.ndarray, block: BlockSpec) -> tuple[np.ndarray, ...]:
    import torch

    spec = block.run
    oy, ox, by, bx = block.inner  # offset of the block inside the window, and its size
    valid = ok[..., oy : oy + by, ox : ox + bx]
    kind, input_kind = spec.kind, spec.input_kind
    run = np.asarray(block.run_times, dtype=bool)
    t = window.shape[0]
    device = spec.device
    from geoarray._devices import autocast

    with torch.inference_mode(), autocast(device, spec.precision):
        if input_kind == "pixels":
            return _run_pixels(model, window[..., oy : oy + by, ox : ox + bx], valid, block)
        shape_k = spec.channels
        outs_full: list[np.ndarray] | None = None
        if input_kind == "image":
            idx = np.flatnonzero(run)
            results: list[list[np.ndarray]] = []
            bs = spec.batch_size or max(1, len(idx))
            for s in range(0, len(idx), bs):
                logits = tiled(model, window[idx[s : s + bs]], block)
                results.append(_postprocess(logits, kind, spec))
            outs_full = _scatter(results, idx, t, spec, shape_k, by, bx)
        else:  # sequence: the whole series of run dates (not another sensor's) at once, output per frame
            idx = np.flatnonzero(run)
            x = torch.from_numpy(np.ascontiguousarray(window[idx]))[None].to(device)
            dates = torch.as_tensor(np.asarray(block.dates, dtype=np.float32)[idx])[None].to(device)
            res = [model(x, dates=dates)[0][..., oy : oy + by, ox : ox + bx]] if len(idx) else []
            outs_full = _scatter([_postprocess(r, kind, spec) for r in res], idx, t, spec, shape_k, by, bx)
    invalid = ~valid | ~run[:, None, None]
    _mark_invalid(outs_full, invalid, spec, class_axis=1)
    return tuple(outs_full)


def _scatter(
    results: list[list[np.ndarray]], idx: np.ndarray, t: int, spec: RunSpec, k: int, by: int, bx: int
) -> list[np.ndarray]:
    """Put per-batch results for the run dates into full ``(T, ...)`` arrays (skipped dates stay invalid)."""
    if len(results) == 1 and len(idx) == t:  # one batch of every date (the usual case): no copy
        return [np.ascontiguousarray(r) for r in results[0]]
    outs = []
    for j, name in enumerate(spec.outputs):
        dtype = spec.mask_dtype if name == "mask" else spec.float_dtype
        k = channels_of(spec, name)
        shape = (t, k, by, bx) if k else (t, by, bx)
        full = np.zeros(shape, dtype=dtype)
        if results:
            full[idx] = np.concatenate([r[j] for r in results], axis=0)
        outs.append(full)
    return outs


def _run_pixels(
    model: Any, window: np.ndarray, valid: np.ndarray, block: BlockSpec
) -> tuple[np.ndarray, ...]:
    """Pixel time-series models: every pixel's ``(T, C)`` series -> one vector; no time dim in the output."""
    import torch

    spec = block.run
    t, c, h, w = window.shape
    run = np.asarray(block.run_times, dtype=bool)
    ok = valid & run[:, None, None]  # (T, h, w)
    series = np.ascontiguousarray(window.transpose(2, 3, 0, 1).reshape(h * w, t, c))
    vmask = np.ascontiguousarray(ok.transpose(1, 2, 0).reshape(h * w, t))
    doy = np.broadcast_to(np.asarray(block.dates, dtype=np.float32), (h * w, t))
    bs = spec.batch_size or 65536
    chunks = []
    for s in range(0, h * w, bs):
        x = torch.from_numpy(series[s : s + bs]).to(spec.device)
        d = torch.from_numpy(np.ascontiguousarray(doy[s : s + bs])).to(spec.device)
        v = torch.from_numpy(vmask[s : s + bs]).to(spec.device)
        chunks.append(model(x, d, v).cpu())
    out = torch.cat(chunks, 0) if chunks else torch.zeros(0, spec.channels)
    logits = out.T.reshape(1, -1, h, w)  # (1, K, h, w)
    outs = [o[0] for o in _postprocess(logits, spec.kind, spec)]
    invalid = ~ok.any(0)
    _mark_invalid(outs, invalid, spec, class_axis=0)
    return tuple(outs)
