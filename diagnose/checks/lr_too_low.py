"""The learning rate is too low.

## What it detects
During the short training run every layer's weight updates are a negligible share of its weights
and the loss does not move.

## Why it matters
With too small a step the network is, in effect, not training: it will take orders of magnitude
more steps (and GPU-hours) to get anywhere, and it is easy to mistake for a model that "cannot
learn".

## How it is detected
Needs `--steps` > 0. The largest mean update ratio ||dW||/||W|| over linear/conv/recurrent/
attention layers is below `update_ratio` (1e-4, TheDeepChecker's lower bound log10 = -4), and the
loss fell by less than `loss_change` (1 %) of its initial value. Both must hold: a small update on
a large, well-trained weight can be fine. A model with a fully dead ReLU layer is left to
`dead-relu`: no learning rate moves weights whose gradient is zero.

Severity: warning: it trains, too slowly.

## Example
An MLP trained with SGD at lr=1e-7.

## Fixes
`higher-lr`, `lr-schedule` (a range test or 1cycle finds the scale), `change-optimizer`.

## Options
`update_ratio`, `loss_change`.

## References
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (update log10 in [-4, -1]).
- Wardat et al., "DeepDiagnosis", ICSE 2022 (effective LR ratio < 1e-5).
- Smith, "Cyclical Learning Rates for Training Neural Networks", 2017 (LR range test).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import (
    ANY_THAT_STOPS_LEARNING,
    AdviceContext,
    Choice,
    choose,
    target,
)
from diagnose.checks._model import Measure
from diagnose.checks._signal import (
    relative_loss_change,
    update_ratio_metric,
    update_ratios,
)
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "lr-too-low"
# TheDeepChecker's lower bound for log10 of the update size; DeepDiagnosis uses 1e-5. We take the
# larger so that a run moving no layer by more than 0.01 % per step is flagged.
UPDATE_RATIO = 1e-4
# A loss that moved less than 1 % in the whole short run on a fixed batch has not started learning.
LOSS_CHANGE = 0.01

# Fully dead ReLU layers zero the gradient whatever the learning rate: dead-relu explains the stall.
FULLY_DEAD = 0.99

THRESHOLDS: dict[str, float] = {"update_ratio": UPDATE_RATIO, "loss_change": LOSS_CHANGE}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    run = evidence.run
    if run.steps == 0:
        return []
    if any((r.activation.dead_fraction or 0.0) >= FULLY_DEAD for r in evidence.layers):
        return []
    ratios = update_ratios(evidence.run_layers)
    if not ratios:
        return []
    largest = max(v for _, v in ratios)
    if largest >= thresholds["update_ratio"]:
        return []
    change = relative_loss_change(evidence.loss.history) if evidence.loss is not None else None
    if change is None or change >= thresholds["loss_change"]:
        return []
    return [Finding(
        id=ID, severity=Severity.WARNING, title="The learning rate is too low",
        message=(f"no layer's weights change by more than {largest:.1e} of their norm per step and the loss "
                 f"moved {change:.2%} in {run.steps} steps ({run.optimizer}, lr={run.lr:g})"),
        layers=tuple(r.name for r, _ in ratios),
        evidence={"max_update_ratio": largest, "loss_change": change, "lr": run.lr,
                  "optimizer": run.optimizer, "steps": run.steps},
    )]


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("higher-lr", "lr-schedule", "change-optimizer")
# Tiny updates say little of their own when the network is already broken in a way that stops
# learning: the structural error is the cause, named on the finding.
ROOT_CAUSES = ANY_THAT_STOPS_LEARNING


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    choices = choose(context, ("higher-lr", "lr-schedule"))
    if context.optimizer in ("sgd", "adagrad"):
        choices.append(Choice("change-optimizer", target(context), f"{context.optimizer} does not adapt its step size."))
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return update_ratio_metric(finding, evidence)
