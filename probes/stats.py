"""On-device reductions of one observed tensor, and merging them into exact totals.

Every function here runs under `torch.no_grad()` and returns device tensors: nothing is synced
with the host, nothing keeps a reference to the observed tensor. Per call we keep only a handful
of scalars (and, for ReLU outputs, one boolean per unit), so memory is O(layers), not O(activations).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from probes.targets import DEAD_CAPABLE, SATURATION_BOUNDS

# Lists of per-call scalars are folded into one running total once they reach this length, so a
# session attached for thousands of steps still holds O(layers) tensors.
FOLD_EVERY = 64


def unit_dim(tensor: torch.Tensor, after_conv1d: bool) -> int:
    """The axis that indexes units: channels (dim 1) for conv maps, features (last dim) otherwise."""
    if tensor.dim() >= 4:
        return 1
    if tensor.dim() == 3 and after_conv1d:
        return 1
    return tensor.dim() - 1


@dataclass(slots=True)
class MomentAccumulator:
    """Exact count, sum and sum of squares (float64) of everything observed, built lazily.

    Each call contributes (n, n*mean, n*(var + mean^2)) from one fused `var_mean`; totals are sums,
    so merging calls, and ranks in a distributed job, is exact up to float64 rounding.
    """

    parts: list[torch.Tensor] = field(default_factory=list)
    count: int = 0  # elements observed; a Python int so that counting never touches the device

    def add(self, part: torch.Tensor, count: int) -> None:
        self.count += count
        self.parts.append(part)
        if len(self.parts) >= FOLD_EVERY:
            self.parts = [torch.stack(self.parts).sum(0)]

    def total(self, width: int, device: torch.device | None) -> torch.Tensor:
        if not self.parts:
            return torch.zeros(width, dtype=torch.float64, device=device)
        return torch.stack(self.parts).sum(0)


def activation_part(y: torch.Tensor, bounds: tuple[float, float, bool] | None) -> torch.Tensor:
    """[sum, sum of squares, finite count, saturated count] of one output, as float64."""
    n = y.numel()
    var, mean = torch.var_mean(y, correction=0)
    finite = torch.isfinite(y).sum()
    if bounds is not None:
        low, high, inclusive = bounds
        center = (low + high) / 2.0
        half = (high - low) / 2.0
        deviation = (y - center).abs_() if center else y.abs()
        saturated = (deviation >= half if inclusive else deviation > half).sum()
    else:
        saturated = finite.new_zeros(())
    mean64 = mean.double()
    return torch.stack(
        (
            mean64 * n,
            (var.double() + mean64 * mean64) * n,
            finite.double(),
            saturated.double(),
        )
    )


ACTIVATION_WIDTH = 4


def alive_units(y: torch.Tensor, dim: int) -> torch.Tensor:
    """One bool per unit: did it output a positive value for any sample (and position)?"""
    positive = y > 0
    other = tuple(d for d in range(y.dim()) if d != dim)
    return positive.any(dim=other) if other else positive


def gradient_part(g: torch.Tensor) -> torch.Tensor:
    """[sum of squares, finite count] of one gradient, as float64."""
    flat = g.reshape(-1)
    return torch.stack(
        (
            torch.dot(flat, flat).double() if flat.is_floating_point() else flat.double().square().sum(),
            torch.isfinite(flat).sum().double(),
        )
    )


GRADIENT_WIDTH = 2


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
