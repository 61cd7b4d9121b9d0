"""Reduce a session's sums across the ranks of a torch.distributed job, so global stats are exact.

Counts, sums and sums of squares add up across ranks, so the global mean, std, nonfinite count
and saturated share follow exactly; per-unit maxima combine with MAX, so a unit is alive when it
fired on any rank. Every rank must hold the same layers in the same order (the same model code
on each rank gives that).
"""

from __future__ import annotations

import torch


def world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def reduce_host_sums(values: list[float], device: torch.device) -> list[float]:
    """Sum a host vector of totals over ranks (one copy to the device and back)."""
    import torch.distributed as dist

    if not values:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device(device))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()


def reduce_max_list(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Element-wise MAX over ranks of each tensor (one collective for all of them)."""
    import torch.distributed as dist

    device = _collective_device(tensors[0].device)
    flat = torch.cat([t.reshape(-1).to(device, torch.float64) for t in tensors])
    dist.all_reduce(flat, op=dist.ReduceOp.MAX)
    out, start = [], 0
    for t in tensors:
        out.append(flat[start:start + t.numel()])
        start += t.numel()
    return out


def _collective_device(device: torch.device) -> torch.device:
    # NCCL only takes CUDA tensors, gloo takes both; follow the backend's default device.
    import torch.distributed as dist

    if dist.get_backend() == "nccl" and device.type != "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return device
