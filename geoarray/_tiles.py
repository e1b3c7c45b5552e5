"""How predict's kernel cuts a block into the tiles the model runs on.

A block is the unit of reading and writing (the dask/Zarr chunk: large, so tasks and files stay few); a tile is
the unit the model runs on. On a GPU a block runs whole. On a CPU, blocks larger than the tile run tile by tile,
each tile with the halo around it; the tile side is :func:`tile_for`'s trade between the halo's share (it falls
as the tile grows) and the cost per pixel of large feature maps (glibc unmaps and the kernel zeroes again every
freed block over 32 MiB, so each large map costs page faults on every pass).
"""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np

__all__ = ["CPU_TILE", "CPU_TILE_MAX", "TILE_PER_HALO", "tile_for", "tiled"]

CPU_TILE = 512
"""The smallest tile side on CPUs. Measured on the B1 UNet (depth 3, width 8, halo 24; 2 dask threads of one torch
thread): a 1024² block + halo ran at 0.63 of the raw 512²-tile loop, 512² tiles + halo at 0.94-1.01."""
CPU_TILE_MAX = 1024
"""The largest tile side on CPUs (a 1216² input of the default UNet, depth 5 width 32, takes ~1.2 GB per thread)."""
TILE_PER_HALO = 16
"""The tile side in halos, between the two bounds: a halo of h px costs (16/18)² ~ 0.79 of the pixels. Measured
(one torch thread, per output pixel): the default UNet (halo 96) at 512² tiles 6775 ns, 768² 5998, 1024² 4941,
1536² 5490; depth 4 width 32 (halo 48) 4692, 4495 at 768², 4423 at 1024²; the B1 UNet (halo 24) is best at 512²."""


def tile_for(device: str, stride: int, halo: int = 0) -> int | None:
    """The tile side for image models on ``device``: None (whole blocks) on GPUs; on CPUs
    ``TILE_PER_HALO * halo`` within ``[CPU_TILE, CPU_TILE_MAX]``, rounded up to the model's stride."""
    if not str(device).startswith("cpu"):
        return None
    side = min(max(CPU_TILE, TILE_PER_HALO * int(halo)), max(CPU_TILE, CPU_TILE_MAX))
    return int(math.ceil(side / stride) * stride)


def tiled(model: Any, window: np.ndarray, block: Any) -> Any:
    """The model's output on the block inside ``window`` (N, C, h, w): in one pass, or, for a block larger than
    ``spec.tile``, tile by tile, each tile with the halo around it (from the window, so seams stay exact: tile
    edges fall on multiples of the stride like block edges). The tile side is :func:`tile_for`'s."""
    import torch

    spec = block.run
    oy, ox, by, bx = block.inner
    tile, h = spec.tile, spec.halo

    def run(part: np.ndarray) -> Any:
        x = torch.from_numpy(part).to(spec.device).contiguous(memory_format=torch.channels_last)
        return model(x)

    if tile is None or (by <= tile and bx <= tile):
        return run(window)[..., oy : oy + by, ox : ox + bx]  # on the device: predict's postprocess runs there
    wy, wx = window.shape[-2:]
    out = None
    for ty, ty1 in _spans(by, tile):
        for tx, tx1 in _spans(bx, tile):
            y0, x0 = max(0, oy + ty - h), max(0, ox + tx - h)  # the tile + halo, inside the window
            y1, x1 = min(wy, oy + ty1 + h), min(wx, ox + tx1 + h)
            res = run(np.ascontiguousarray(window[..., y0:y1, x0:x1]))
            part = res[..., oy + ty - y0 : oy + ty1 - y0, ox + tx - x0 : ox + tx1 - x0].cpu()
            if out is None:
                fmt = torch.channels_last if part.ndim == 4 else torch.contiguous_format  # as the model's own
                out = torch.empty((*part.shape[:-2], by, bx), dtype=part.dtype, memory_format=fmt)
            out[..., ty:ty1, tx:tx1] = part
    return out


def _spans(n: int, tile: int) -> list[tuple[int, int]]:
    """``[0, n)`` in tiles of ``tile`` px starting at multiples of it; a last tile under half a tile joins the one
    before (no sliver that pays a whole halo for a few rows)."""
    edges = [*range(0, n, tile), n]
    if len(edges) > 2 and n - edges[-2] < tile // 2:
        del edges[-2]
    return list(itertools.pairwise(edges))
