"""Rows gathered from every DDP rank, with gradients: what batch statistics of a global batch need (VICReg's
variance and covariance terms).

``torch.distributed.all_gather`` has no gradient. :class:`FullGather` (VICReg's ``FullGatherLayer``) sends
each rank's share of the gradient back with an all-reduce, which gloo supports (``torch.distributed.nn``'s
all-gather needs all-to-all or reduce-scatter in its backward, which gloo lacks). Ranks may hold different
numbers of rows (views skip samples): the rows are padded to the largest count and trimmed after.
"""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["gather_rows", "world_size"]


def world_size() -> int:
    """Ranks in the default process group, or 1 outside DDP."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return int(dist.get_world_size())
    return 1


class FullGather(torch.autograd.Function):
    """All-gather with a gradient: each rank gets every rank's tensor; in the backward pass each rank gets the
    sum over ranks of the gradients with respect to its own tensor."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        import torch.distributed as dist

        out = [torch.zeros_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(out, x.contiguous())
        return tuple(out)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        g = torch.stack([t.contiguous() for t in grads])
        dist.all_reduce(g)
        return g[dist.get_rank()]


def gather_rows(x: torch.Tensor) -> torch.Tensor:
    """``x (n_r, ...)`` of every rank, concatenated in rank order (with gradients to each rank's own rows);
    ``x`` itself outside DDP. Every rank must call it (a collective), with the same trailing shape."""
    import torch.distributed as dist

    world = world_size()
    if world == 1:
        return x
    n = torch.tensor([len(x)], dtype=torch.int64, device=x.device)
    sizes = [torch.zeros_like(n) for _ in range(world)]
    dist.all_gather(sizes, n)
    counts = [int(s.item()) for s in sizes]
    top = max(counts)
    if len(x) < top:
        x = torch.cat([x, x.new_zeros((top - len(x), *x.shape[1:]))])
    parts = FullGather.apply(x)
    return torch.cat([p[:c] for p, c in zip(parts, counts, strict=True)])
