"""The chip grid, its dask graph (one task per block of chips) and the per-task kernel of :func:`geoarray.predict_chips`.

A chip grid cuts a cube into ``chip_size`` squares every ``stride`` pixels, starting at the cube's first row and
column (chips that would cross the far edge are left out). Its own georeferencing gives each chip one cell: the
``stride x stride`` square around the chip's centre, so with ``stride == chip_size`` (the default) the cells are
the chips themselves and the grid's corner is the cube's corner.

Kernels here run inside dask tasks; this module is importable on every worker, so tasks reference them by name
and models come from :mod:`geoarray._inference`'s per-process cache.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class ChipGrid:
    """``ny x nx`` chips of ``chip_size`` px, every ``stride`` px, from pixel (0, 0) of the cube."""

    chip_size: int
    stride: int
    ny: int
    nx: int

    def pixels(self, n: int) -> int:
        """Pixels that ``n`` consecutive chips span along one axis."""
        return (n - 1) * self.stride + self.chip_size if n else 0


def chip_grid(shape: tuple[int, int], chip_size: int, stride: int) -> ChipGrid:
    ny, nx = shape
    return ChipGrid(chip_size, stride, (ny - chip_size) // stride + 1, (nx - chip_size) // stride + 1)


def grid_coords(y: np.ndarray, x: np.ndarray, grid: ChipGrid) -> tuple[np.ndarray, np.ndarray, Any]:
    """Chip-centre ``y``/``x`` coordinates and the chip grid's affine transform, from the cube's pixel centres."""
    from affine import Affine

    y, x = np.asarray(y, np.float64), np.asarray(x, np.float64)
    dy = float(y[1] - y[0]) if y.size > 1 else float("nan")
    dx = float(x[1] - x[0]) if x.size > 1 else float("nan")
    y_edge, x_edge = y[0] - dy / 2, x[0] - dx / 2  # outer corner of the cube's first pixel
    c, s = grid.chip_size, grid.stride
    cy = y_edge + (np.arange(grid.ny) * s + c / 2) * dy
    cx = x_edge + (np.arange(grid.nx) * s + c / 2) * dx
    # each chip's cell is the stride-square around its centre: corner inset by (chip - stride) / 2 px
    inset = (c - s) / 2
    transform = Affine(s * dx, 0.0, x_edge + inset * dx, 0.0, s * dy, y_edge + inset * dy)
    return cy, cx, transform


def cut_chips(a: np.ndarray, grid: ChipGrid, nr: int, nc: int) -> np.ndarray:
    """``(..., h, w)`` window -> ``(nr, nc, ..., chip, chip)`` views of its chips (no copy)."""
    c, s = grid.chip_size, grid.stride
    win = np.lib.stride_tricks.sliding_window_view(a, (c, c), axis=(-2, -1))[..., ::s, ::s, :, :]
    win = win[..., :nr, :nc, :, :]
    lead = a.ndim - 2
    return np.moveaxis(win, (lead, lead + 1), (0, 1))


def embed(model: Any, chips: np.ndarray, batch_size: int, device: str = "cpu") -> np.ndarray:
    """The model's pooled embedding (``embed`` of a classifier, else the output) of ``(N, C, h, w)`` chips."""
    import torch

    fn = getattr(model, "embed", model)
    out = []
    with torch.inference_mode():
        for s in range(0, len(chips), batch_size):
            x = torch.from_numpy(np.ascontiguousarray(chips[s : s + batch_size])).to(device)
            out.append(fn(x).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


@dataclass(frozen=True)
class ChipSpec:
    """What every task of one predict_chips run shares."""

    path: str
    sha256: str
    device: str
    kind: str  # "classification" or "features"
    outputs: tuple[str, ...]
    channels: int
    float_dtype: str
    mask_dtype: str
    nodata: int
    batch_size: int
    min_valid: float
    norm: tuple[tuple[float, ...], tuple[float, ...], float]  # mean, std, scale
    grid: ChipGrid


def run_chips(
    raw: np.ndarray, valid: np.ndarray | None, run_times: tuple[bool, ...], spec: ChipSpec, nr: int, nc: int
) -> tuple[np.ndarray, ...]:
    """One block of chips: the window ``(T, C, h, w)`` holding ``nr x nc`` chips -> each output ``(T, [K,] nr, nc)``.

    The window is normalised and filled exactly as the training stream does (``normalize_fill``); chips whose
    valid fraction is below ``spec.min_valid``, and dates not in ``run_times``, come out NaN / nodata.
    """
    import torch

    from geoarray._inference import get_model
    from geoarray._preprocess import normalize_fill
    from geoarray._threads import torch_threads

    mean, std, scale = spec.norm
    z, ok = normalize_fill(np.asarray(raw), None if valid is None else np.asarray(valid), mean, std, scale)
    t = z.shape[0]
    chips = cut_chips(z, spec.grid, nr, nc)  # (nr, nc, T, C, c, c)
    frac = cut_chips(ok, spec.grid, nr, nc).mean(axis=(-2, -1))  # (nr, nc, T)
    use = (frac >= spec.min_valid) & np.asarray(run_times, bool)[None, None, :]
    use &= frac > 0
    flat = np.moveaxis(chips, 2, 0).reshape(t * nr * nc, *chips.shape[3:])  # (T*nr*nc, C, c, c) date-major
    pick = np.flatnonzero(np.moveaxis(use, 2, 0).ravel())
    k = spec.channels
    res = np.zeros((t * nr * nc, k), np.float32)
    if pick.size:
        from geoarray._devices import resolve_device
        from geoarray.errors import PredictError

        device = resolve_device(spec.device, PredictError)  # "auto" (a distributed run's): this worker's GPU or CPU
        model = get_model(spec.path, spec.sha256, device)
        with torch_threads(), torch.inference_mode():
            for s in range(0, pick.size, spec.batch_size):
                idx = pick[s : s + spec.batch_size]
                x = torch.from_numpy(np.ascontiguousarray(flat[idx])).to(device)
                y = model(x).float()
                if spec.kind == "classification":
                    y = torch.softmax(y, dim=1)
                res[idx] = y.cpu().numpy()
    bad = np.ones(t * nr * nc, bool)
    bad[pick] = False
    res[bad] = np.nan
    res = res.reshape(t, nr, nc, k).transpose(0, 3, 1, 2)  # (T, K, nr, nc)
    outs: list[np.ndarray] = []
    for name in spec.outputs:
        if name == "mask":
            m = np.nan_to_num(res, nan=0.0).argmax(1).astype(spec.mask_dtype)
            m[bad.reshape(t, nr, nc)] = spec.nodata
            outs.append(m)
        else:
            outs.append(res.astype(spec.float_dtype))
    return tuple(outs)


def build_graph(cube: Any, var: str, bands: list[str], spec: ChipSpec, run_times: np.ndarray) -> list[Any]:
    """One task per block of chips and date chunk; the outputs are dask arrays ``(T, [K,] ny, nx)``."""
    import dask
    import dask.array as dsa

    from geoarray.cube import DEFAULT_CHUNK

    img = cube[var].sel(band=bands).data
    if not isinstance(img, dsa.Array):
        img = dsa.from_array(img, chunks=(1, -1, DEFAULT_CHUNK, DEFAULT_CHUNK))
    valid = None
    if "valid" in cube.data_vars:
        valid = dsa.asarray(cube["valid"].transpose("time", "y", "x").data)
    grid: ChipGrid = spec.grid
    # a block holds about one input chunk of chips, so each chunk is read about once
    per_y = max(1, img.chunks[2][0] // grid.stride)
    per_x = max(1, img.chunks[3][0] // grid.stride)
    ybl = [(r, min(r + per_y, grid.ny)) for r in range(0, grid.ny, per_y)]
    xbl = [(c, min(c + per_x, grid.nx)) for c in range(0, grid.nx, per_x)]
    tb = np.cumsum((0, *img.chunks[0]))
    k = spec.channels
    blocks: dict[str, list[Any]] = {o: [] for o in spec.outputs}
    for ti in range(len(tb) - 1):
        t0, t1 = int(tb[ti]), int(tb[ti + 1])
        rows: dict[str, list[Any]] = {o: [] for o in spec.outputs}
        for r0, r1 in ybl:
            cols: dict[str, list[Any]] = {o: [] for o in spec.outputs}
            py0 = r0 * grid.stride
            py1 = py0 + grid.pixels(r1 - r0)
            for c0, c1 in xbl:
                px0 = c0 * grid.stride
                px1 = px0 + grid.pixels(c1 - c0)
                win = img[t0:t1, :, py0:py1, px0:px1]
                vwin = None if valid is None else valid[t0:t1, py0:py1, px0:px1]
                run = tuple(bool(v) for v in run_times[t0:t1])
                task = dask.delayed(run_chips, pure=True, nout=len(spec.outputs))(
                    win, vwin, run, spec, r1 - r0, c1 - c0
                )
                for j, o in enumerate(spec.outputs):
                    shape: tuple[int, ...] = (t1 - t0, r1 - r0, c1 - c0)
                    dt = spec.mask_dtype if o == "mask" else spec.float_dtype
                    if o != "mask":
                        shape = (t1 - t0, k, r1 - r0, c1 - c0)
                    cols[o].append(dsa.from_delayed(task[j], shape, dtype=np.dtype(dt)))
            for o in spec.outputs:
                rows[o].append(cols[o])
        for o in spec.outputs:
            blocks[o].append(rows[o])
    out = []
    for o in spec.outputs:
        nested = blocks[o]  # [time][row][col]
        if o == "mask":
            out.append(dsa.block([[[c for c in row] for row in t] for t in nested]))
        else:
            out.append(dsa.block([[[[c for c in row] for row in t]] for t in nested]))
    return out
