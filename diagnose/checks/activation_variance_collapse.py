"""Activation variance collapses with depth.

## What it detects
Along a plain stack of linear/conv layers (no normalisation between them), the standard deviation
of the layers' outputs shrinks by orders of magnitude from the first layer to the last.

## Why it matters
If each layer passes on a bit less variance than it receives (Xavier init under ReLU halves it),
the signal reaching the top of a deep stack is a faint copy of the input, dominated by the biases:
the network's output hardly depends on its input and the gradients shrink in step.

## How it is detected
Runs are maximal sequences of consecutive linear/conv layers with no normalisation, attention or
recurrent layer between them; a layer that feeds a norm ends its run. For each run of at least
`min_layers` layers with measured outputs, the check compares the output std of the last layer with
the first, both as a plain ratio and from a log-linear fit, and fires when both are below `ratio`
(default 1e-2: two orders of magnitude). It is an error below `ratio_error` (1e-4).

Severity: warning, error from `ratio_error` (the signal that reaches the head is noise-sized).

## Example
He et al.'s 30-layer ReLU network with Xavier init: the output std falls ~1e-5x from the first
layer to the last.

## Fixes
`he-init` (ReLU-like), `glorot-init` (tanh/sigmoid), `lecun-init` (SELU), `batch-norm`,
`residual-connections`.

## Options
`ratio`, `ratio_error`, `min_layers`.

## References
- He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", 2015 (30-layer ReLU net, Xavier vs He).
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (activation std outside [0.5, 2]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import (
    VERY_DEEP,
    AdviceContext,
    Choice,
    target,
    weighted_of,
)
from diagnose.checks._model import Measure
from diagnose.checks._trends import (
    activation_trend_measure,
    at_or_below,
    variance_trend_advice,
    variance_trend_findings,
)
from diagnose.findings import Finding

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "activation-variance-collapse"
# Two orders of magnitude over one plain run. A default-init 3-layer ReLU MLP loses ~6x (PyTorch's
# default gain is sqrt(1/3) under ReLU's halving), a Glorot tanh stack ~2x; He's 30-layer
# Xavier ReLU net loses 1e5x. TheDeepChecker's per-layer std band [0.5, 2] would flag the healthy
# small MLPs, so we judge the trend instead.
RATIO = 1e-2
# Four orders: the top of the stack no longer sees the input at float32 precision in practice.
RATIO_ERROR = 1e-4
# Three layers is the shortest stack in which a trend (not one odd layer) can be read.
MIN_LAYERS = 3

THRESHOLDS: dict[str, float] = {"ratio": RATIO, "ratio_error": RATIO_ERROR, "min_layers": MIN_LAYERS}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    return variance_trend_findings(
        evidence, thresholds, check_id=ID, title="Activation variance collapses with depth", verb="falls",
        fires=at_or_below,
    )


# A signal that collapses over depth carries nothing to learn from whatever the rate.
STOPS_LEARNING = True
# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("he-init", "glorot-init", "lecun-init", "batch-norm", "residual-connections")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    run = weighted_of(context, finding)
    choices = variance_trend_advice(run, context)
    if len(run) >= VERY_DEEP:
        choices.append(Choice("residual-connections", target(context, [r.name for r in run]),
                              f"The plain run is {len(run)} layers deep."))
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return activation_trend_measure(evidence, min)
