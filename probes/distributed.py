"""Reduce a session's sums across the ranks of a torch.distributed job, so global stats are exact."""

from __future__ import annotations

import torch


def world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_sums(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (counts, sums, sums of squares: the global moments follow exactly)."""
    import torch.distributed as dist

    reduced = tensor.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.SUM)
    return reduced


def reduce_any(mask: torch.Tensor) -> torch.Tensor:
    """Logical OR over ranks of a 0/1 float mask (a unit is alive if it fired on any rank)."""
    import torch.distributed as dist

    reduced = mask.clone()
    dist.all_reduce(reduced, op=dist.ReduceOp.MAX)
    return reduced
