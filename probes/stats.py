"""On-device reductions of one observed tensor, and exact running totals of them.

Every reduction returns 0-dim device tensors; nothing keeps a reference to the observed tensor,
so memory is O(layers), not O(activations). Totals are plain sums (count, sum, sum of squares,
counts of non-finite and saturated values), so merging calls, and ranks of a distributed job, is
exact; mean and std are derived from them once, at collect time.

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

from probes.targets import DEAD_CAPABLE, SATURATION_BOUNDS

# Pending per-call 0-dim results are folded into one running total once this many have piled
# up, so a session attached for thousands of steps still holds O(layers) tensors.
FOLD_EVERY = 64


@dataclass(slots=True)
class Sum:
    """An exact float64 total of 0-dim device tensors, added without any host sync."""

    pending: list[torch.Tensor] = field(default_factory=list)
    folded: torch.Tensor | None = None

    def add(self, value: torch.Tensor) -> None:
        self.pending.append(value)
        if len(self.pending) >= FOLD_EVERY:
            total = torch.stack(self.pending).double().sum()
            self.folded = total if self.folded is None else self.folded + total
            self.pending = []

    def parts(self) -> list[torch.Tensor]:
        """The 0-dim tensors whose sum is the total (for one batched transfer at collect)."""
        return self.pending if self.folded is None else [self.folded, *self.pending]


def unit_dim(tensor: torch.Tensor, after_conv1d: bool) -> int:
    """The axis that indexes units: channels (dim 1) for conv maps, features (last dim) otherwise."""
    if tensor.dim() >= 4:
        return 1
    if tensor.dim() == 3 and after_conv1d:
        return 1
    return tensor.dim() - 1


def _float_view(y: torch.Tensor) -> torch.Tensor:
    flat = y.reshape(-1)
    return flat if flat.dtype in (torch.float32, torch.float64) else flat.float()


def _known_finite(total: torch.Tensor) -> bool:
    """True when `total` (a sum over a tensor) proves every element finite, without a device sync."""
    return total.device.type == "cpu" and math.isfinite(total.item())


def nonfinite_count(flat: torch.Tensor) -> torch.Tensor:
    """Number of NaN/Inf elements: y*0 is 0 for finite values and NaN otherwise."""
    return (flat * 0).nan_to_num_(1.0).sum(dtype=torch.float64)


def saturated_count(
    flat: torch.Tensor, bounds: tuple[float, float, bool], finite: bool
) -> torch.Tensor:
    """Number of elements in the saturation band of `bounds`; NaN never counts as saturated.

    Float-only: sign(max(|y - c| - h, 0)) is 1 strictly outside the band's inner interval.
    """
    low, high, inclusive = bounds
    center = (low + high) / 2.0
    half = (high - low) / 2.0
    deviation = (flat - center).abs_() if center else flat.abs()
    if not inclusive:  # saturated when |y - c| > h
        marks = deviation.sub_(half).clamp_(min=0.0).sign_()
        if not finite:
            marks.nan_to_num_(0.0)
        return marks.sum(dtype=torch.float64)
    # Inclusive bands (hard bounds reached exactly): count the strict inside and subtract.
    inside = deviation.neg_().add_(half).clamp_(min=0.0).sign_()
    if not finite:
        inside.nan_to_num_(1.0)
    return flat.numel() - inside.sum(dtype=torch.float64)


def unit_max(y: torch.Tensor, dim: int) -> torch.Tensor:
    """Largest value of each unit over samples (and positions): positive iff the unit fired."""
    other = tuple(d for d in range(y.dim()) if d != dim)
    return y.amax(dim=other) if other else y.clone()


@dataclass(slots=True)
class ActivationAccumulator:
    """Running totals of one layer's outputs over every call."""

    count: int = 0  # elements observed (a Python int: counting never touches the device)
    total: Sum = field(default_factory=Sum)
    total_sq: Sum = field(default_factory=Sum)
    nonfinite: Sum = field(default_factory=Sum)
    saturated: Sum = field(default_factory=Sum)

    def add(self, y: torch.Tensor, bounds: tuple[float, float, bool] | None) -> None:
        flat = _float_view(y)
        s1 = flat.sum()
        self.count += flat.numel()
        self.total.add(s1)
        self.total_sq.add(torch.dot(flat, flat))
        finite = _known_finite(s1)
        if not finite:
            self.nonfinite.add(nonfinite_count(flat))
        if bounds is not None:
            self.saturated.add(saturated_count(flat, bounds, finite))


@dataclass(slots=True)
class GradientAccumulator:
    """Running totals of the gradient with respect to one layer's outputs."""

    count: int = 0
    calls: int = 0
    total_sq: Sum = field(default_factory=Sum)
    nonfinite: Sum = field(default_factory=Sum)

    def add(self, grad: torch.Tensor) -> None:
        flat = _float_view(grad)
        s2 = torch.dot(flat, flat)
        self.count += flat.numel()
        self.calls += 1
        self.total_sq.add(s2)
        if not _known_finite(s2):
            self.nonfinite.add(nonfinite_count(flat))


@dataclass(slots=True)
class AliveUnits:
    """Per-unit maxima of a ReLU-family output: over the whole session, and the latest forward.

    A unit is alive when its maximum is positive. Maxima merge with `fmax` (NaN-ignoring), and
    the latest forward's maxima fold into the session's only when the next forward starts, so a
    call costs one `amax` and one `fmax`.
    """

    earlier: torch.Tensor | None = None  # maxima over every forward before `forward`
    latest: torch.Tensor | None = None  # maxima over the calls of forward number `forward`
    forward: int = -1

    @property
    def units(self) -> int | None:
        return None if self.latest is None else int(self.latest.numel())

    def add(self, y: torch.Tensor, dim: int, forward: int) -> None:
        maxima = unit_max(y, dim)
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
    return family in DEAD_CAPABLE
