"""Activation variance explodes with depth.

## What it detects
Along a plain stack of linear/conv layers (no normalisation between them), the standard deviation
of the layers' outputs grows by orders of magnitude from the first layer to the last.

## Why it matters
Weights that are too large for their activation multiply the signal's scale at every layer. The
top layers see huge pre-activations: logits that make the initial loss enormous, softmax and
sigmoid outputs pinned at 0 or 1, float overflow to Inf and NaN, and gradients that grow in step.

## How it is detected
The same runs as `activation-variance-collapse`; the check fires when both the last/first output
std ratio and its log-linear fit exceed `ratio` (default 100: two orders of magnitude), and reports
an error from `ratio_error` (1e4).

Severity: warning, error from `ratio_error` (the head sees numbers that overflow its
nonlinearities and the loss).

## Example
Ten `Linear(32, 32)` + `ReLU` layers at 3x the He std: the output std grows ~5e4x.

## Fixes
`he-init` / `glorot-init` / `lecun-init` (the scheme the activation needs), `batch-norm`,
`gradient-clipping`.

## Options
`ratio`, `ratio_error`, `min_layers`.

## References
- He, Zhang, Ren & Sun, "Delving Deep into Rectifiers", 2015.
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (activation std outside [0.5, 2]).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, target, weighted_of
from diagnose.checks._model import Measure
from diagnose.checks._trends import (
    activation_trend_measure,
    at_or_above,
    variance_trend_advice,
    variance_trend_findings,
)
from diagnose.findings import Finding

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "activation-variance-explosion"
# Two orders of magnitude growth over one plain run; no healthy zoo model grows at all (their
# runs shrink or stay level), a 3x-He ReLU stack grows 5e4x over ten layers.
RATIO = 1e2
# Four orders: float32 logits of that size saturate softmax completely.
RATIO_ERROR = 1e4
MIN_LAYERS = 3

THRESHOLDS: dict[str, float] = {"ratio": RATIO, "ratio_error": RATIO_ERROR, "min_layers": MIN_LAYERS}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    return variance_trend_findings(
        evidence, thresholds, check_id=ID, title="Activation variance explodes with depth", verb="grows",
        fires=at_or_above,
    )


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("he-init", "glorot-init", "lecun-init", "batch-norm", "gradient-clipping")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    return variance_trend_advice(weighted_of(context, finding), context) + [
        Choice("gradient-clipping", target(context))
    ]


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return activation_trend_measure(evidence, max)
