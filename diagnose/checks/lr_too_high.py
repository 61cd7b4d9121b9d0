"""The learning rate is too high.

## What it detects
During the short training run the loss diverges (it ends well above its best value and above where
it started) or turns NaN/Inf, or the weight updates are a large share of the weights themselves.

## Why it matters
With too large a step, gradient descent overshoots the valley it is in: the loss bounces up,
ReLU units get knocked into the dead zone, and floats overflow to Inf and NaN. Updates that are more
than a tenth of the weights at each step mean the network is being rewritten, not tuned.

## How it is detected
Needs `--steps` > 0. Error: a non-finite loss at some step after the first (a loss that is
already NaN at initialisation is `non-finite`'s finding), or a final loss at least
`divergence` (2x, TheDeepChecker's bound) times the lowest loss seen and above the initial one.
Warning: the largest mean update ratio ||dW||/||W|| over linear/conv/recurrent/attention layers
above `update_ratio` (0.1, the upper bound of DeepDiagnosis and TheDeepChecker). Layers whose
output feeds a normalisation layer are left out of the warning: their weights are scale-invariant,
so a large relative step grows the weight norm and shrinks the next step by itself (Arora, Li &
Lyu 2019), and the recipes of batch-norm nets run at update ratios above 0.1 in their first steps.
A layer initialised below the scale of its init scheme (a zero-initialised head or gate, a head
drawn small like torchvision's ResNet `fc`, 0.4x Glorot) has its ratio measured against the
scheme's scale instead of its own young norm: its first steps grow it toward that scale, and a
ratio against a norm still growing from (near) zero is large by construction.
A diverging loss is judged for every network alike.

Severity: error when the loss diverges or turns NaN (the network will not train as configured);
warning for large update ratios alone (it trains, worse than it should), and info when the short
run nonetheless trains normally (the loss falls at least 10 %, for cross-entropy below chance and
below the loss of predicting the batch's label frequencies, and keeps at least half of its gain).

## Example
An MLP trained with SGD at lr=10: the loss goes to NaN within a few steps.

## Fixes
`lower-lr`, `lr-warmup`, `gradient-clipping`, `lr-schedule`.

## Options
`divergence`, `update_ratio`.

## References
- Arora, Li & Lyu, "Theoretical Analysis of Auto Rate-Tuning by Batch Normalization", ICLR 2019.
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (diverging loss >= 2x the minimum; update
  log10 in [-4, -1]).
- Wardat et al., "DeepDiagnosis", ICSE 2022 (effective LR ratio > 1e-1).
- Karpathy, CS231n notes (update/weight ratio ~1e-3 is healthy).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, choose
from diagnose.checks._model import Measure
from diagnose.checks._signal import (
    relaxed_when_trained,
    std_ratio,
    update_ratio_metric,
    update_ratios,
)
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "lr-too-high"
# TheDeepChecker calls a loss diverging when it reaches twice its minimum.
DIVERGENCE = 2.0
# Updates above a tenth of the weights per step: DeepDiagnosis's and TheDeepChecker's upper bound.
# Healthy SGD/Adam runs sit near 1e-3.
UPDATE_RATIO = 0.1

THRESHOLDS: dict[str, float] = {"divergence": DIVERGENCE, "update_ratio": UPDATE_RATIO}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    run = evidence.run
    if run.steps == 0:
        return []
    history = evidence.loss.history if evidence.loss is not None else ()
    numbers = {"lr": run.lr, "optimizer": run.optimizer, "steps": run.steps}
    nonfinite_step = evidence.nonfinite_loss_step
    if nonfinite_step is None:
        nonfinite_step = next((i for i, v in enumerate(history) if not math.isfinite(v)), None)
    if nonfinite_step == 0:
        return []  # already non-finite before any step: the non-finite check's finding, not the LR's
    if nonfinite_step is not None:
        return [Finding(
            id=ID, severity=Severity.ERROR, title="The loss diverges",
            message=f"the loss became NaN/Inf at step {nonfinite_step} of {run.steps} ({run.optimizer}, lr={run.lr:g})",
            evidence={**numbers, "nonfinite_step": nonfinite_step},
        )]
    if len(history) >= 2:
        best, final, initial = min(history), history[-1], history[0]
        if best > 0 and final >= thresholds["divergence"] * best and final > initial:
            return [Finding(
                id=ID, severity=Severity.ERROR, title="The loss diverges",
                message=(f"the loss rose from {initial:.3g} to {final:.3g} in {run.steps} steps "
                         f"(best {best:.3g}; {run.optimizer}, lr={run.lr:g})"),
                evidence={**numbers, "initial_loss": initial, "final_loss": final, "best_loss": best},
            )]
    # Weights that feed a normalisation layer are scale-invariant: the loss does not change when
    # they are scaled, their gradient is orthogonal to them and shrinks as 1/||W||, so a large step
    # grows ||W|| and shrinks the next relative step (Arora et al. 2019, "auto rate-tuning"). Their
    # update ratio says nothing about the LR being too high; ResNets train at lr 0.1 with ratios ~0.3.
    init = {r.name: r for r in evidence.layers}
    ratios = [
        (r, against_scheme_scale(v, init.get(r.name))) for r, v in update_ratios(evidence.run_layers)
        if not _scale_invariant(r)
    ]
    high = [(r, v) for r, v in ratios if v > thresholds["update_ratio"]]
    if not high:
        return []
    worst, value = max(high, key=lambda item: item[1])
    # Large relative steps that the loss takes in its stride (it falls, below chance, and keeps
    # its gains) are a fact worth knowing, not a fault: ResNet-50's head moves ~0.2 of its norm per
    # step at lr 0.01 and the loss falls from 2.3 to 0.1.
    return [relaxed_when_trained(evidence, Finding(
        id=ID, severity=Severity.WARNING, title="Weight updates are too large",
        message=(f"each step changes {worst.name} by {value:.2g} of its norm on average "
                 f"({run.optimizer}, lr={run.lr:g}); ~1e-3 is typical"),
        layers=tuple(r.name for r, _ in high),
        evidence={**numbers, "max_update_ratio": value},
    ))]


def against_scheme_scale(ratio: float, initial) -> float:
    """The update ratio measured against the larger of the weight's scale and its init scheme's.

    A weight initialised below the scale its scheme gives (a zero-initialised head or gate, or a
    classifier head drawn small, like torchvision's ResNet `fc` at 0.4x Glorot) is still growing
    toward it: a step against its young norm is large by construction (infinite from zero),
    though it moves the layer's output no more than the same step would at the scheme's scale.
    """
    scale = std_ratio(initial) if initial is not None else None
    if scale is None or scale >= 1.0:
        return ratio
    return ratio * scale


def _scale_invariant(record) -> bool:
    return record.weight is not None and record.weight.normalized


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("lower-lr", "lr-warmup", "gradient-clipping", "lr-schedule")
# A diverging loss is the learning rate's fault unless the network already blows up at init: with
# one of these errors present, the finding names it as the likely cause, to fix first.
ROOT_CAUSES = (
    "non-finite", "output-loss-mismatch", "residual-stream-growth", "exploding-gradients",
    "activation-variance-explosion", "poor-initialization",
)


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    return choose(context, FIXES)


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return update_ratio_metric(finding, evidence)
