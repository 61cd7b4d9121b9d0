"""On-device reductions of one observed tensor, and exact running totals of them.

Every reduction writes its 0-dim result in place into a scratch cell and is added into the
layer's float64 totals on the device; nothing keeps a reference to the observed tensor, so memory
is O(layers), not O(activations).
Totals are plain sums (count, sum, sum of squares, counts of non-finite and saturated values),
so merging calls, and ranks of a distributed job, is exact; mean and std are derived from them
once, at collect time. Counts are exact while one call has fewer than 2^24 elements (a float32
scratch cell holds integers exactly up to there; the running totals are float64).

Speed notes (measured on the 2-core CPU this was tuned on, see benchmarks/overhead.py):
- `torch.var_mean` takes a slow Welford path on CPU (~7x a plain sum), and ops that produce bool
  tensors (`isfinite`, `>`) are ~10-20x slower than float arithmetic, so everything here is a
  chain of float ops ending in a sum.
- The sum of squares is accumulated in the tensor's own precision (float32 for float32
  activations, via `dot`), so the variance derived as E[y^2] - E[y]^2 loses about
  1e-7 * mean^2 / var of relative precision: negligible unless |mean| > ~300 std.
- Counting non-finite values needs a pass of its own. `sum(y)` is finite exactly when every
  element is (barring overflow, which only makes us count needlessly), so on CPU, where reading a
  0-dim result is no device sync, the count is computed only when the sum is not finite. On an
  accelerator it is always computed, on the device, to avoid a sync per call.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from probes.activations import DYING_FAMILIES
from probes.targets import SATURATION_BOUNDS

# Columns of the per-layer totals: every per-call reduction is written in place (`out=`) into a
# scratch cell and added into the layer's float64 totals, so a call creates no result tensors,
# nothing piles up between collects, and collect() reads all layers' totals as one tensor.
SUM, SUM_SQ, SATURATED, NONFINITE, GRAD_SUM_SQ, GRAD_NONFINITE = range(6)
COLUMNS = 6

# Distinct row-index lists a table keeps on its device (`CallTable.index_of`): a model has a few
# groups of same-shape layers; a cap keeps a model whose groups change every step bounded.
MAX_ROW_INDICES = 1024


@dataclass(slots=True)
class CallTable:
    """float64 totals [layers, COLUMNS] on one device, plus a scratch row in the compute dtype."""

    device: torch.device
    dtype: torch.dtype
    # On CPU a 0-dim result is read without any device sync, so rows keep their totals in Python
    # floats (float64, like the device totals): a call then costs its reductions and nothing else
    # (no in-place adds, ~2x fewer ops per call on small layers; see benchmarks/overhead.py W4).
    on_host: bool = False
    totals_buffer: torch.Tensor | None = None
    scratch: torch.Tensor | None = None
    cells: tuple[torch.Tensor, ...] = ()  # 0-dim views of scratch, one per column
    pair: torch.Tensor | None = None  # scratch[SUM:SUM_SQ + 1]
    rows: list["TableRow"] = field(default_factory=list)
    # Device copies of the row-index lists that batched reductions add into (probes/batched.py).
    row_indices: dict[tuple[int, ...], torch.Tensor] = field(default_factory=dict)

    def index_of(self, rows: tuple[int, ...]) -> torch.Tensor:
        """`rows` as an index tensor on the table's device, made once per distinct list.

        A list copied from the host at each call is a synchronous copy from pageable memory
        (the host waits for the GPU); the groups of a model are the same at every step, so
        each list is copied once, from pinned memory, without waiting.
        """
        index = self.row_indices.get(rows)
        if index is None:
            if len(self.row_indices) >= MAX_ROW_INDICES:
                self.row_indices.clear()  # group layouts that keep changing: stay bounded
            host = torch.tensor(rows, dtype=torch.int64)
            if self.device.type == "cuda":
                index = host.pin_memory().to(self.device, non_blocking=True)
            else:
                index = host.to(self.device)
            self.row_indices[rows] = index
        return index

    def add_row(self) -> "TableRow":
        if self.scratch is None:
            self.scratch = torch.zeros(COLUMNS, dtype=self.dtype, device=self.device)
            self.cells = tuple(self.scratch.unbind())
            self.pair = self.scratch[SUM:SUM_SQ + 1]
        if self.on_host:
            row = TableRow(table=self, index=len(self.rows), host=[0.0] * COLUMNS)
            self.rows.append(row)
            return row
        if self.totals_buffer is None or len(self.rows) == self.totals_buffer.shape[0]:
            capacity = max(16, 2 * len(self.rows))
            grown = torch.zeros((capacity, COLUMNS), dtype=torch.float64, device=self.device)
            if self.totals_buffer is not None:
                grown[: len(self.rows)].copy_(self.totals_buffer[: len(self.rows)])
            self.totals_buffer = grown
            for row in self.rows:
                row.bind(grown[row.index])
        row = TableRow(table=self, index=len(self.rows))
        row.bind(self.totals_buffer[row.index])
        self.rows.append(row)
        return row

    def totals(self) -> torch.Tensor:
        """[rows, COLUMNS] float64 totals (on the device)."""
        return self.totals_buffer[: len(self.rows)]


@dataclass(slots=True)
class TableRow:
    """A layer's totals in a CallTable, as views the per-call code adds into."""

    table: CallTable
    index: int
    pair: torch.Tensor | None = None  # totals[SUM:SUM_SQ + 1]
    columns: tuple[torch.Tensor, ...] = ()
    host: list[float] | None = None  # the totals themselves, for rows of an on-host table

    def bind(self, totals: torch.Tensor) -> None:
        self.pair = totals[SUM:SUM_SQ + 1]
        self.columns = tuple(totals.unbind())


def unit_dim(tensor: torch.Tensor, after_conv1d: bool) -> int:
    """The axis that indexes units: channels (dim 1) for conv maps, features (last dim) otherwise."""
    if tensor.dim() >= 4:
        return 1
    if tensor.dim() == 3 and after_conv1d:
        return 1
    return tensor.dim() - 1


def float_view(y: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`y` flattened, in the table's dtype (float16/bfloat16 outputs are summed in float32)."""
    flat = y.reshape(-1)
    return flat if flat.dtype == dtype else flat.to(dtype)


def _known_finite(total: torch.Tensor) -> bool:
    """True when `total` (a sum over a tensor) proves every element finite, without a device sync."""
    return total.device.type == "cpu" and math.isfinite(total.item())


def write_nonfinite_count(flat: torch.Tensor, cell: torch.Tensor) -> None:
    """Number of NaN/Inf elements into `cell`: y*0 is 0 for finite values and NaN otherwise."""
    torch.sum((flat * 0).nan_to_num_(1.0), 0, out=cell)


def write_saturated_count(flat: torch.Tensor, bounds: tuple[float, float, bool], cell: torch.Tensor) -> None:
    """Number of elements in the saturation band of `bounds` into `cell`; NaN never counts."""
    torch.sum(saturation_marks(flat, bounds), 0, out=cell)


def saturation_marks(flat: torch.Tensor, bounds: tuple[float, float, bool]) -> torch.Tensor:
    """Per-element 1.0/0.0 marks of the saturated elements (sum over the last dim counts them).

    Saturated means |y - c| > h (an exclusive band: the open tails of sigmoid/tanh), or >= h
    (an inclusive band: hard bounds reached exactly), with c and h the band's center and
    half-width. The comparison is done in place on a float tensor (a bool result is ~5x slower to
    sum on CPU), and NaN compares false: it never counts. `flat` may be one row or a batch of rows.
    """
    low, high, inclusive = bounds
    center = (low + high) / 2.0
    half = (high - low) / 2.0
    deviation = (flat - center).abs_() if center else flat.abs()
    return deviation.ge_(half) if inclusive else deviation.gt_(half)


def observe_activation(
    row: TableRow, y: torch.Tensor, bounds: tuple[float, float, bool] | None, total: torch.Tensor | None = None
) -> None:
    """Add the sum, sum of squares, nonfinite and saturated counts of one output to `row`.

    `total`: the sum of `y` when the caller already has it (0-dim, see `unit_sums`).
    """
    table = row.table
    flat = float_view(y, table.dtype)
    cells = table.cells
    host = row.host
    if host is not None:
        total = (flat.sum() if total is None else total).item()
        host[SUM] += total
        host[SUM_SQ] += torch.dot(flat, flat).item()
        finite = math.isfinite(total)
        if not finite:
            write_nonfinite_count(flat, cells[NONFINITE])
            host[NONFINITE] += cells[NONFINITE].item()
        if bounds is not None:
            write_saturated_count(flat, bounds, cells[SATURATED])
            host[SATURATED] += cells[SATURATED].item()
        return
    if total is None:
        torch.sum(flat, 0, out=cells[SUM])
    else:
        cells[SUM].copy_(total)
    torch.dot(flat, flat, out=cells[SUM_SQ])
    row.pair.add_(table.pair)
    finite = _known_finite(cells[SUM])
    if not finite:
        write_nonfinite_count(flat, cells[NONFINITE])
        row.columns[NONFINITE].add_(cells[NONFINITE])
    if bounds is not None:
        write_saturated_count(flat, bounds, cells[SATURATED])
        row.columns[SATURATED].add_(cells[SATURATED])


def observe_gradient(row: TableRow, grad: torch.Tensor) -> None:
    """Add the sum of squares and nonfinite count of one output gradient to `row`."""
    table = row.table
    flat = float_view(grad, table.dtype)
    cells = table.cells
    host = row.host
    if host is not None:
        total = torch.dot(flat, flat).item()
        host[GRAD_SUM_SQ] += total
        if not math.isfinite(total):
            write_nonfinite_count(flat, cells[GRAD_NONFINITE])
            host[GRAD_NONFINITE] += cells[GRAD_NONFINITE].item()
        return
    torch.dot(flat, flat, out=cells[GRAD_SUM_SQ])
    row.columns[GRAD_SUM_SQ].add_(cells[GRAD_SUM_SQ])
    if not _known_finite(cells[GRAD_SUM_SQ]):
        write_nonfinite_count(flat, cells[GRAD_NONFINITE])
        row.columns[GRAD_NONFINITE].add_(cells[GRAD_NONFINITE])


def unit_sums(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Sum of each unit over samples (and positions) of a non-negative output (relu, relu6).

    A sum of non-negative floats is 0 only when every term is, so a unit's sum is positive iff the
    unit fired (NaN stays NaN: counted alive, as a NaN maximum is): the sums stand in for the
    maxima of `AliveUnits`, and summed they give the output's total. One pass instead of a full
    `sum` plus an `amax`, and units along dim 1 of a conv map are reduced over their contiguous
    positions first (an `amax` over dims (0, 2, 3) walks the map with strides): on CPU about 2x
    less time for conv maps, 1.6x for a [256, 512] MLP output.
    """
    dtype = None if y.dtype in (torch.float32, torch.float64) else torch.float32
    if y.dim() == 1:
        return y.to(torch.float32) if dtype is not None else y.clone()
    if dim == y.dim() - 1:
        return y.reshape(-1, y.shape[-1]).sum(0, dtype=dtype)
    # [before, units, after]: reduce the contiguous trailing positions first, then the rest
    before = math.prod(y.shape[:dim])
    grid = y.reshape(before, y.shape[dim], -1)
    return grid.sum(2, dtype=dtype).sum(0)


@dataclass(slots=True)
class AliveUnits:
    """Per-unit maxima of a ReLU-family output: over the whole session, and the latest forward.

    A unit is alive when its maximum is positive. Maxima merge with `fmax` (NaN-ignoring), and
    the latest forward's maxima fold into the session's only when the next forward starts, so a
    call costs one reduction and one `fmax`. Any per-unit value that is positive exactly when the
    maximum is will do: the per-call path adds `unit_sums`, the batched one `amax`es.
    """

    earlier: torch.Tensor | None = None  # maxima over every forward before `forward`
    latest: torch.Tensor | None = None  # maxima over the calls of forward number `forward`
    forward: int = -1

    @property
    def units(self) -> int | None:
        return None if self.latest is None else int(self.latest.numel())

    def add_maxima(self, maxima: torch.Tensor, forward: int) -> None:
        """Fold one call's per-unit maxima (of forward number `forward`) in."""
        if self.latest is not None and self.latest.shape != maxima.shape:
            self.earlier = self.latest = None  # the unit count changed: start over
        if self.latest is None:
            self.latest, self.forward = maxima, forward
        elif forward == self.forward:
            self.latest = torch.fmax(self.latest, maxima)
        else:
            self.earlier = self.latest if self.earlier is None else torch.fmax(self.earlier, self.latest)
            self.latest, self.forward = maxima, forward

    def maxima(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(over the session, over the latest forward), or None before any call."""
        if self.latest is None:
            return None
        overall = self.latest if self.earlier is None else torch.fmax(self.earlier, self.latest)
        return overall, self.latest


def saturation_bounds(family: str | None, min_val: float | None = None, max_val: float | None = None):
    """Saturation band of a bounded family; hardtanh takes its own bounds when they are known."""
    if family is None or family not in SATURATION_BOUNDS:
        return None
    low, high, inclusive = SATURATION_BOUNDS[family]
    if family == "hardtanh" and min_val is not None and max_val is not None:
        return (float(min_val), float(max_val), True)
    return (low, high, inclusive)


def tracks_dead(family: str | None) -> bool:
    return family in DYING_FAMILIES
