"""The loss does not decrease over the short run.

## What it detects
Over the short training run (the same batch at every step, by default), the loss never goes
meaningfully below where it started.

## Why it matters
A network that cannot lower its loss on the single batch it keeps seeing will not learn a dataset
either: this is Karpathy's "overfit one batch" test. Usual causes are a learning rate far off,
gradients that do not reach the weights (vanishing, detached, dead units), a loss wired to the wrong
output, or an optimizer that stalls.

## How it is detected
Needs at least `min_steps` (10) steps. Fires when the best loss after the first step is less than
`min_decrease` (0.5 % for a 20-step run, proportionally less for shorter runs) below the initial
loss. A run whose loss diverges or turns NaN is
`lr-too-high`'s finding and is not repeated here. With a fresh batch per step (`fixed_batch` false)
the bar is the same but noise makes it weaker evidence; the message says so.

Severity: warning: the short run is short; a cause found by another check comes first.

## Example
A deep sigmoid network whose gradients vanish, or any model with lr=1e-7.

## Fixes
`higher-lr` when updates are tiny, `lower-lr` when they are large, `change-optimizer`,
`lr-schedule`, `normalize-inputs` when inputs are unscaled.

## Options
`min_steps`, `min_decrease`.

## References
- Karpathy, "A Recipe for Training Neural Networks", 2019 (overfit one batch).
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (< 5 % decrease per window of 5).
- AWS SageMaker Debugger, LossNotDecreasing (diff_percent 0.1 %).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import (
    ANY_THAT_STOPS_LEARNING,
    AdviceContext,
    Choice,
    choose,
    target,
)
from diagnose.checks._signal import (
    loss_ratio_metric,
    relative_loss_change,
    update_ratios,
)
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "loss-not-decreasing"
# Fewer steps than this say little about a trend: 5 plain-SGD steps at lr=0.01 move a healthy
# tiny GPT-2 or BERT by under 0.5 %.
MIN_STEPS = 10
# MIN_DECREASE is calibrated on runs of this many steps; shorter runs (down to MIN_STEPS) need
# proportionally less, since the first steps of a healthy run lower the loss about linearly.
REFERENCE_STEPS = 20
# On a single repeated batch, 20 plain-SGD steps at lr=0.01 remove 1.5 % (LSTM classifier) to 50 %
# (SELU stack) of the loss in our healthy zoo; a network whose gradients vanish or whose units are all
# dead moves < 0.5 %. (TheDeepChecker asks 5 % per window of 5, over a much longer run.)
MIN_DECREASE = 0.005

THRESHOLDS: dict[str, float] = {"min_steps": MIN_STEPS, "min_decrease": MIN_DECREASE}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    run = evidence.run
    if run.steps == 0 or run.steps < thresholds["min_steps"] or evidence.loss is None:
        return []
    history = evidence.loss.history
    if evidence.nonfinite_loss_step is not None or any(not math.isfinite(v) for v in history):
        return []  # divergence: lr-too-high
    change = relative_loss_change(history)
    required = thresholds["min_decrease"] * min(1.0, run.steps / REFERENCE_STEPS)
    if change is None or change >= required:
        return []
    if history[-1] >= 2.0 * min(history) and history[-1] > history[0]:
        return []  # diverging: lr-too-high
    ratios = update_ratios(evidence.run_layers)
    largest = max((v for _, v in ratios), default=None)
    note = "" if run.fixed_batch else " (fresh batch per step: noisy)"
    return [Finding(
        id=ID, severity=Severity.WARNING, title="The loss does not decrease",
        message=(f"the loss went from {history[0]:.4g} to {history[-1]:.4g} in {run.steps} steps "
                 f"(best {min(history):.4g}, {change:.2%} lower; {run.optimizer}, lr={run.lr:g}){note}"),
        evidence={"initial_loss": history[0], "final_loss": history[-1], "decrease": change,
                  "max_update_ratio": largest, "lr": run.lr, "optimizer": run.optimizer, "steps": run.steps},
    )]


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("higher-lr", "lower-lr", "change-optimizer", "lr-schedule", "normalize-inputs")
# A stalled loss says little of its own when the network is already broken in a way that stops
# learning: the structural error is the cause, named on the finding.
ROOT_CAUSES = ANY_THAT_STOPS_LEARNING
# Mean update/weight ratios below this during the run mean the steps are too small to matter...
SMALL_UPDATE = 1e-3
# ... and above this they are large enough to be the problem.
LARGE_UPDATE = 1e-1


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    update = finding.evidence.get("max_update_ratio")
    choices: list[Choice] = []
    if isinstance(update, float) and update < SMALL_UPDATE:
        choices.append(Choice("higher-lr", target(context), f"Weights moved at most {update:.1e} of their norm per step."))
    elif isinstance(update, float) and update > LARGE_UPDATE:
        choices.append(Choice("lower-lr", target(context), f"Weights moved up to {update:.2g} of their norm per step."))
    elif isinstance(update, float) and context.optimizer == "sgd":
        # Healthy-sized steps that do not lower the loss: plain SGD zig-zagging across a ravine,
        # the case momentum was made for (a rate change would not help: the steps are not too small).
        choices.append(Choice("change-optimizer", target(context),
                              f"Weights move {update:.1e} of their norm per step, a healthy size, yet the loss "
                              "barely moves: plain SGD zig-zags across a ravine instead of following it."))
    choices += choose(context, ("change-optimizer", "lr-schedule"))
    if context.inputs_unscaled:
        choices.append(Choice("normalize-inputs", target(context), "The real inputs are not standardised."))
    return choices


# The loss itself is what this check judges.
metric = loss_ratio_metric
