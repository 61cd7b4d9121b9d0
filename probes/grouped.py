"""Sums and norms of many tensors at once: small same-shape tensors as rows of one stack.

On CPU every torch op costs a few microseconds of dispatch whatever its size, and the
`_foreach_*` ops fall back to one op per tensor there: a 60-layer MLP of width 64 paid ~0.5 ms
per `_foreach_norm` of its 120 parameters, several times a step (weights at collect, update
ratios, parameter gradients; benchmarks/overhead.py W4). Small tensors of the same shape, dtype
and device (the layers of a uniform stack, their biases) are instead measured as the rows of one
stacked copy: one copy and one reduction per shape, whatever the depth. Tensors above STACK_MAX
elements, and shapes that occur once, keep the fused per-tensor path, where a copy would cost
more than the ops it saves.

Results come in *layout order* (`Layout.order`: the stacked groups one after the other, then the
rest), so callers index them by position instead of paying a device gather to restore the
original order.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# Largest tensor (elements) that is stacked with others of its shape; 16384 = 64 KB in float32,
# the size probes/batched.py holds for the same reason.
STACK_MAX = 16384

_EXACT_DTYPES = (torch.float32, torch.float64)

# Dense CPU tensors from this many elements are measured with a dot of their own (`_fused`);
# 65536 = 256 KB in float32, where a tensor's pass outweighs the per-op cost a fused call saves.
DOT_ABOVE = 65536


@dataclass(frozen=True, slots=True)
class Layout:
    """How a list of tensors is measured: stacked groups (>= 2 positions each), then singles."""

    groups: tuple[tuple[int, ...], ...]
    singles: tuple[int, ...]

    @property
    def order(self) -> tuple[int, ...]:
        """Position in the original list of each result, in result order."""
        return tuple(i for group in self.groups for i in group) + self.singles


def plan(tensors: list[torch.Tensor]) -> Layout:
    """Group the small same-shape dense tensors; sparse ones (Embedding(sparse=True) gradients)
    and large ones are singles."""
    by_key: dict[tuple, list[int]] = {}
    singles: list[int] = []
    for i, tensor in enumerate(tensors):
        if tensor.layout != torch.strided or tensor.numel() > STACK_MAX or tensor.numel() == 0:
            singles.append(i)
        else:
            by_key.setdefault((tuple(tensor.shape), tensor.dtype, tensor.device), []).append(i)
    groups = []
    for positions in by_key.values():
        if len(positions) >= 2:
            groups.append(tuple(positions))
        else:
            singles.extend(positions)
    return Layout(groups=tuple(groups), singles=tuple(sorted(singles)))


def stack_rows(tensors: list[torch.Tensor]) -> torch.Tensor:
    """[n, numel] copy of same-shape tensors, in float32 or float64 (call under no_grad)."""
    rows = torch.stack(tensors).reshape(len(tensors), -1)  # channels_last: a copy
    return rows if rows.dtype in _EXACT_DTYPES else rows.float()


def row_norms(stacked: torch.Tensor) -> torch.Tensor:
    """L2 norm of each entry of a stack (of its rows), accumulated in float32 at least."""
    rows = stacked.reshape(stacked.shape[0], -1)
    dtype = None if rows.dtype in _EXACT_DTYPES else torch.float32
    return torch.linalg.vector_norm(rows, dim=1, dtype=dtype)


def norms(tensors: list[torch.Tensor], layout: Layout) -> torch.Tensor:
    """float64 L2 norm of each tensor, dense or sparse, in layout order."""
    return _measure(tensors, layout, with_sums=False)[1]


def norm_of(tensor: torch.Tensor) -> torch.Tensor:
    """L2 norm of one tensor, dense or sparse (0-dim, float32 at least): of a sparse one, the
    norm of its stored values once duplicates are summed (`_foreach_norm` has no sparse kernel)."""
    with torch.no_grad():
        if tensor.layout != torch.strided:  # a sparse gradient (Embedding(sparse=True)): its values
            tensor = tensor.coalesce().values() if tensor.layout == torch.sparse_coo else tensor.values()
        flat = _as_exact(tensor).reshape(-1)
        return torch.dot(flat, flat).sqrt_()


def sums_and_norms(tensors: list[torch.Tensor], layout: Layout) -> tuple[torch.Tensor, torch.Tensor]:
    """float64 (sum, L2 norm) of each tensor, in layout order."""
    return _measure(tensors, layout, with_sums=True)


def _measure(tensors, layout: Layout, with_sums: bool):
    norm_parts: list[torch.Tensor] = []
    sum_parts: list[torch.Tensor] = []
    with torch.no_grad():
        for group in layout.groups:
            rows = stack_rows([tensors[i] for i in group])
            norm_parts.append(row_norms(rows))
            if with_sums:
                sum_parts.append(rows.sum(1))
        if layout.singles:
            singles = [_as_exact(tensors[i]) for i in layout.singles]
            device = singles[0].device
            in_foreach = [_fused(t) for t in singles]
            if all(in_foreach):
                single_norms = torch._foreach_norm(singles)
            else:  # sparse and large contiguous CPU tensors on their own, the rest fused
                fused_ones = [t for t, fused in zip(singles, in_foreach) if fused]
                fused = iter(torch._foreach_norm(fused_ones)) if fused_ones else iter(())
                single_norms = [next(fused) if f else norm_of(t) for t, f in zip(singles, in_foreach)]
            norm_parts.append(torch.stack([n.to(device) for n in single_norms]))
            if with_sums:
                sum_parts.append(torch.stack([t.sum().to(device) for t in singles]))
        result_norms = _cat_double(norm_parts)
        result_sums = _cat_double(sum_parts) if with_sums else None
    return result_sums, result_norms


def _fused(tensor: torch.Tensor) -> bool:
    """Measured by the one `_foreach_norm`, rather than on its own by `norm_of`.

    Sparse tensors have no `_foreach_norm` kernel. Large dense ones on CPU are faster on their
    own: there `_foreach_norm` runs `vector_norm` per tensor, which accumulates in float64 and
    reads a cold 1 MB gradient at half the speed of a BLAS dot (the nine weight gradients of W1
    in benchmarks/overhead.py: 0.52 ms against 0.24 ms a backward, 2 threads). Only contiguous
    ones: `norm_of` flattens with a reshape, which would copy a channels_last conv gradient.
    """
    if tensor.layout != torch.strided:
        return False
    return tensor.device.type != "cpu" or tensor.numel() < DOT_ABOVE or not tensor.is_contiguous()


def _cat_double(parts: list[torch.Tensor]) -> torch.Tensor:
    if len(parts) == 1:
        return parts[0].double()
    device = parts[0].device
    return torch.cat([p.to(device=device, dtype=torch.float64) for p in parts])


def _as_exact(t: torch.Tensor) -> torch.Tensor:
    return t if t.dtype in _EXACT_DTYPES else t.float()
