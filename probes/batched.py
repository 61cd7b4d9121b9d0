"""Small outputs and output gradients held for one forward (or backward), then reduced in batches.

On small layers the fixed cost of a torch op (~5-9 us on a 2-core CPU) dominates: reducing a
64x64 output on its own takes ~8 ops, so a 60-layer MLP of width 64 spent most of its probed
step in those ops (benchmarks/overhead.py W4). Instead, an output of at most HOLD_MAX elements
is held (a detached alias, no copy) until its forward ends, and all held outputs of the same
shape, dtype, device and reduction kind are reduced together with a handful of ops on their
stack: the per-call cost becomes a list append, the per-forward cost a few ops per group.

Memory bound: the probes keep no activation beyond the current forward (gradients: beyond the
current backward); a held tensor has at most HOLD_MAX elements per layer call, and at most
HOLD_CAP_ITEMS tensors are held at once (reached, the pending list is reduced early): at most
HOLD_CAP_ITEMS * HOLD_MAX * 8 bytes = 64 MB in float64, 32 MB in float32, per list.

Exactness: a held alias would see a later in-place change of the layer's output (an in-place
ReLU, a residual `out += x`). The session reduces the pending list before any in-place op it can
see (in-place activation modules, in-place torch functions while the functional mode is on), and
every held tensor carries its version counter: a layer whose held output is found changed anyway
is reduced at once from then on (`LayerState.holds`), and its first call is always reduced at
once while its version is watched, so a layer whose output is changed in place on every call is
caught before anything is held. Results equal the per-call path up to float rounding: sums of
squares are squared row norms (`vector_norm` over the stacked rows is ~3x faster than a batched
dot on CPU, and squaring in float64 cannot overflow where a float32 dot could).
"""

from __future__ import annotations

import math
from collections import defaultdict

import torch

from probes.stats import (
    COLUMNS,
    GRAD_NONFINITE,
    GRAD_SUM_SQ,
    NONFINITE,
    SATURATED,
    SUM,
    SUM_SQ,
    saturation_marks,
)

# Largest output (elements) that is held for a batched reduction. Above it the per-element work
# dwarfs the ~8 per-call op overheads that batching saves, and stacking would only add a copy;
# 16384 = a 64x256 activation, covers every W4 layer (64x64) and keeps each hold <= 64 KB fp32.
HOLD_MAX = 16384

# Most tensors held at once (outputs and gradients each): a very deep model of small layers is
# reduced in several batches instead of holding more. A count, not bytes, so that holding costs
# one list append per call; 512 * HOLD_MAX float64 elements = 64 MB at most.
HOLD_CAP_ITEMS = 512

# A held output: (layer state, tensor, its _version when held, unit axis for dead units or -1,
# forward number, watch_only). Plain tuples: one is made per layer call. `watch_only` items were
# already reduced and are held only to learn whether the layer's output changes in place later.
# A held gradient: (layer state, the gradient as the engine passed it, its _version).
STATE, DATA, VERSION, DIM, FORWARD, WATCH_ONLY = range(6)


class Pending(list):
    """Held tensors of the current forward (or backward): a list with its cap."""

    def __init__(self) -> None:
        super().__init__()
        self.cap = HOLD_CAP_ITEMS  # read when made, so a test can lower the module's value

    def take(self) -> list[tuple]:
        items = list(self)
        self.clear()
        return items


def reduce_outputs(items: list[tuple]) -> None:
    """Add the sums, squares, nonfinite and saturated counts and unit maxima of held outputs."""
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for item in items:
        state, data = item[STATE], item[DATA]
        if data._version != item[VERSION]:
            state.holds = False  # changed after it was held: reduce this layer at once
        if item[WATCH_ONLY]:
            continue
        # One table per device, so the table's identity stands for the device (cheaper to read).
        groups[(id(state.row.table), data.shape, data.dtype, state.bounds, item[DIM])].append(item)
    with torch.no_grad():
        for (_, _, _, bounds, dim), group in groups.items():
            _reduce_output_group(group, bounds, dim)


def _reduce_output_group(group: list[tuple], bounds, dim: int) -> None:
    table = group[0][STATE].row.table
    n = len(group)
    stacked = torch.stack([item[DATA] for item in group])
    flat = stacked.reshape(n, -1)  # a view, but for channels_last maps (a copy then)
    if flat.dtype != table.dtype:
        flat = flat.to(table.dtype)
    sums = flat.sum(1)
    norms = torch.linalg.vector_norm(flat, dim=1)
    if table.on_host:
        pairs = torch.stack((sums, norms), 1).tolist()
        bad = [i for i, (total, _) in enumerate(pairs) if not math.isfinite(total)]
        nonfinite = _nonfinite_counts(flat, bad).tolist() if bad else []
        saturated = _saturated_counts(flat, bounds).tolist() if bounds is not None else None
        for i, item in enumerate(group):
            host = item[STATE].row.host
            total, norm = pairs[i]
            host[SUM] += total
            host[SUM_SQ] += norm * norm
            if saturated is not None:
                host[SATURATED] += saturated[i]
        for i, count in zip(bad, nonfinite):
            group[i][STATE].row.host[NONFINITE] += count
    else:  # accelerators: everything stays on the device (no sync), added by row index
        squares = norms.double().square_()
        columns = {SUM: sums, SUM_SQ: squares, NONFINITE: _nonfinite_counts(flat, None)}
        if bounds is not None:
            columns[SATURATED] = _saturated_counts(flat, bounds)
        _add_rows(table, group, columns)
    if dim >= 0:
        other = tuple(d for d in range(1, stacked.dim()) if d != dim + 1)
        maxima = stacked.amax(dim=other) if other else stacked
        for item, unit_maxima in zip(group, maxima.unbind()):
            item[STATE].alive.add_maxima(unit_maxima, item[FORWARD])


def reduce_gradients(items: list[tuple]) -> None:
    """Add the sums of squares and nonfinite counts of held output gradients."""
    groups: dict[tuple, list[tuple]] = defaultdict(list)
    for item in items:
        data = item[DATA]
        if data._version != item[VERSION]:
            item[STATE].holds_gradient = False
        groups[(id(item[STATE].row.table), data.shape, data.dtype)].append(item)
    with torch.no_grad():
        for group in groups.values():
            table = group[0][STATE].row.table
            n = len(group)
            flat = torch.stack([item[DATA] for item in group]).reshape(n, -1)
            if flat.dtype != table.dtype:
                flat = flat.to(table.dtype)
            norms = torch.linalg.vector_norm(flat, dim=1)
            if not table.on_host:
                squares = norms.double().square_()
                _add_rows(table, group, {GRAD_SUM_SQ: squares, GRAD_NONFINITE: _nonfinite_counts(flat, None)})
                continue
            values = norms.tolist()
            bad = [i for i, norm in enumerate(values) if not math.isfinite(norm)]
            for item, norm in zip(group, values):
                item[STATE].row.host[GRAD_SUM_SQ] += norm * norm
            if bad:
                for i, count in zip(bad, _nonfinite_counts(flat, bad).tolist()):
                    group[i][STATE].row.host[GRAD_NONFINITE] += count


def _nonfinite_counts(flat: torch.Tensor, rows: list[int] | None) -> torch.Tensor:
    """NaN/Inf count of each row (of `rows` only, when given): y*0 is 0 exactly when y is finite."""
    picked = flat if rows is None else flat[rows]
    return (picked * 0).nan_to_num_(1.0).sum(1)


def _saturated_counts(flat: torch.Tensor, bounds) -> torch.Tensor:
    return saturation_marks(flat, bounds).sum(1)


def _add_rows(table, group: list[tuple], columns: dict[int, torch.Tensor]) -> None:
    """Add per-row results into the device totals of each item's row (one index_add_)."""
    index = table.index_of(tuple(item[STATE].row.index for item in group))
    contribution = torch.zeros((len(group), COLUMNS), dtype=torch.float64, device=table.device)
    for column, values in columns.items():
        contribution[:, column] = values
    table.totals_buffer.index_add_(0, index, contribution)
