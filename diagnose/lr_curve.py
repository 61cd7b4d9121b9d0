"""Reading an LR range test's curve: smoothing, when to stop, the suggested LR, and the rules of others.

Plain floats in, plain floats out (no torch): the sweep in `diagnose/range_test.py` feeds it one loss
per step, and the accuracy benchmark reads the same curves with the reference rules.

The suggestion rule (`suggest`): the LR at the minimum of the smoothed loss, divided by
EDGE_OVERSHOOT. Why: on one fixed batch the loss falls at every step while the LR is below the
edge of stability (2/λ_max for SGD on a quadratic: past it a step no longer shrinks the sharpest
direction), and the best LR for a short run sits at or just below that edge (on linear regression,
where the edge is known exactly, the best 20-step LR was 0.8-1.0x of 2/λ_max). Past the edge the
sharpest direction grows again, but from the small residual the earlier steps left, so the loss
turns up only several steps later, and an exponential sweep has by then raised the LR a few times
over. The minimum therefore sits past the edge, and dividing it by the largest overshoot measured
gives an LR at or below the edge: a safe proposal, which the verifying short runs then move up
(×3, ×9, ×27) as far as training improves. Steepest-slope rules instead land where the loss falls
fastest, which on a plateau-then-cliff curve can be anywhere on the cliff.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

# The smoothing window, in decades of LR. On one fixed batch the loss has no sampling noise, only
# the wobble of the dynamics, so the EMA can be far shorter than fastai's beta=0.98 (50 steps, for
# minibatch noise): a quarter of a decade evens out one-step wobbles while lagging the turn of the
# curve by a step or two. Expressed in decades, so a denser sweep does not smooth over a wider range.
SMOOTHING_DECADES = 0.25
# Stop when the smoothed loss exceeds this multiple of its minimum: what fastai (`stop_div`) and
# Lightning (`early_stop_threshold`) use. Past it the model is wrecked and the rest would be noise.
DIVERGENCE_FACTOR = 4.0
# The loss "decreased" when its smoothed minimum is at least this share below the starting loss;
# less is within the wobble of a model whose loss does not depend on the weights.
MIN_DECREASE = 0.01
# How far past the edge of stability the smoothed minimum lies. Measured with the sweep's defaults
# (12 steps per decade) and with 5 per decade: on five linear-regression problems (condition numbers
# 4 to 2e4, edge 2/λ_max from numpy) 2.4-5.8x; on an MLP, a CNN with batch norm and a 2-layer GPT-2
# with SGD, momentum and Adam (benchmarks/lr_find_accuracy.py), 0.7-6.5x above the best 20-step LR.
# Dividing by the top of that range puts the suggestion at or below the edge on every quadratic and
# at or below the best 20-step LR on every network measured: a proposal that errs low, because an LR
# past the edge diverges in a long run however well its first steps went, and because the verifying
# runs climb from it (×3, ×9, ×27) as far as training improves, while nothing climbs back down a
# proposal that overshoots into divergence.
EDGE_OVERSHOOT = 6.0
# torch-lr-finder's and Lightning's defaults for the reference steepest-slope rules: the first ten
# and last few points are skipped (the start is flat, the end is divergence).
STEEPEST_SKIP_START = 10
STEEPEST_SKIP_END = 5
# torch-lr-finder's `smooth_f`: the weight of each new loss in its running smoothing.
TORCH_LR_FINDER_SMOOTH_F = 0.05
# fastai smooths with beta=0.98 before `valley`, and drops the first tenth and last five points.
FASTAI_BETA = 0.98


@dataclass(frozen=True, slots=True, kw_only=True)
class Suggestion:
    lr: float
    minimum_lr: float  # the LR at the smoothed loss's minimum
    overshoot: float  # what it was divided by
    still_falling: bool  # the minimum is the last point swept: the loss had not turned up yet
    rule: str


def steps_per_decade(lrs: Sequence[float]) -> float:
    if len(lrs) < 2 or lrs[-1] <= lrs[0]:
        return 1.0
    return (len(lrs) - 1) / math.log10(lrs[-1] / lrs[0])


def smoothing_beta(per_decade: float) -> float:
    """The EMA factor whose time constant (1 / (1 - beta) steps) spans SMOOTHING_DECADES."""
    window = SMOOTHING_DECADES * per_decade
    return 0.0 if window <= 1.0 else 1.0 - 1.0 / window


class Smoother:
    """An exponential moving average with bias correction (fastai's and torch-lr-finder's smoothing),
    fed one loss at a time so the sweep can stop on it."""

    def __init__(self, beta: float) -> None:
        self.beta = beta
        self._average = 0.0
        self._count = 0
        self.best = math.inf

    def add(self, loss: float) -> float:
        self._count += 1
        self._average = self.beta * self._average + (1.0 - self.beta) * loss
        smoothed = self._average / (1.0 - self.beta**self._count)
        self.best = min(self.best, smoothed)
        return smoothed

    def diverged(self, smoothed: float) -> bool:
        return not math.isfinite(smoothed) or smoothed > DIVERGENCE_FACTOR * self.best


def smooth(losses: Sequence[float], beta: float) -> list[float]:
    smoother = Smoother(beta)
    return [smoother.add(loss) for loss in losses]


def loss_decreased(initial: float, smoothed: Sequence[float]) -> bool:
    finite = [s for s in smoothed if math.isfinite(s)]
    if not finite or not math.isfinite(initial):
        return bool(finite)  # from a non-finite start any finite loss is a decrease
    return min(finite) < initial - MIN_DECREASE * abs(initial)


def suggest(lrs: Sequence[float], smoothed: Sequence[float], initial: float) -> Suggestion | None:
    """The suggested LR for this curve, or None when the loss never decreased."""
    if not loss_decreased(initial, smoothed):
        return None
    finite = [(s, i) for i, s in enumerate(smoothed) if math.isfinite(s)]
    _, index = min(finite)
    return Suggestion(
        lr=max(lrs[index] / EDGE_OVERSHOOT, lrs[0]), minimum_lr=lrs[index], overshoot=EDGE_OVERSHOOT,
        still_falling=index == len(smoothed) - 1,
        rule=(
            f"the smoothed loss's minimum (lr {lrs[index]:.3g}) / {EDGE_OVERSHOOT:g}: the loss turns up only "
            "some steps past the edge of stability, and this lands at or below the edge"
        ),
    )


# ---------------------------------------------------------------------------------------------
# The rules of other LR finders, for comparison (benchmarks/lr_find_accuracy.py)


def steepest_slope(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """torch-lr-finder's suggestion (`plot(suggest_lr=True)`): its smoothing of the raw losses (each
    point 0.05 of the new loss plus 0.95 of the previous smoothed one), then the steepest fall per
    sweep step (`np.gradient` with index spacing, i.e. per log-LR step), skipping the first ten and
    last five points."""
    smoothed: list[float] = []
    for loss in losses:
        smoothed.append(loss if not smoothed else TORCH_LR_FINDER_SMOOTH_F * loss
                        + (1 - TORCH_LR_FINDER_SMOOTH_F) * smoothed[-1])
    points = list(zip(lrs, smoothed))[STEEPEST_SKIP_START:-STEEPEST_SKIP_END or None]
    points = [(lr, s) for lr, s in points if math.isfinite(s)]
    if len(points) < 2:
        return None
    slopes = _gradient([s for _, s in points])
    return points[min(range(len(slopes)), key=slopes.__getitem__)][0]


def valley(lrs: Sequence[float], losses: Sequence[float]) -> float | None:
    """fastai's default `valley`: the longest decreasing run of the smoothed loss (beta 0.98), and
    the point about halfway along it (fastai/callback/schedule.py), on the sweep without its first
    tenth and its last five points."""
    start = len(lrs) // 10
    points = [(lr, s) for lr, s in zip(lrs, smooth(losses, FASTAI_BETA)) if math.isfinite(s)][start:-5]
    if len(points) < 2:
        return None
    values = [s for _, s in points]
    n = len(values)
    # longest decreasing subsequence ending at each i (fastai's O(n^2) dynamic programme)
    run = [1] * n
    max_start, max_end = 0, 0
    for i in range(1, n):
        for j in range(i):
            if values[i] < values[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
            if run[max_end] < run[i]:
                max_end = i
                max_start = max_end - run[max_end]
    sections = (max_end - max_start) / 3
    return points[max_start + int(sections) + int(sections / 2)][0]


def _gradient(values: Sequence[float]) -> list[float]:
    """`numpy.gradient` with unit spacing: one-sided at the ends, central inside."""
    n = len(values)
    if n < 2:
        return [0.0] * n
    inner = [(values[i + 1] - values[i - 1]) / 2 for i in range(1, n - 1)]
    return [values[1] - values[0], *inner, values[-1] - values[-2]]
