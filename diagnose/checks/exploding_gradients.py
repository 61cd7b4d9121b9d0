"""Gradients explode toward the input.

## What it detects
The gradient carried back to each weighted layer grows by orders of magnitude from the last layer
to the first, or a layer's parameter gradient is huge in absolute terms.

## Why it matters
When each layer multiplies the backward signal by more than one (weights too large for the
activation, a chaotic tanh regime, a long recurrence), the product grows geometrically with depth.
The first layers then take steps so large that one update wrecks them; the loss jumps or turns into
NaN after a few steps.

## How it is detected
Same measure as `vanishing-gradients`: the norm of dLoss/d(output) of every trainable weighted
layer at initialisation, with a log-linear fit over execution order. It fires when both the fitted
first/last change and the plain first/last ratio exceed `ratio` (default 70, AUTOTRAINER's beta_3),
or when any layer's parameter-gradient RMS exceeds `huge_rms` (1e6, TheDeepChecker's bound).

A layer whose output feeds a normalisation layer is measured by the gradient with respect to the
normalised output (the norm layer's output gradient times its gain, or the layer's raw output
gradient times its output std when the norm does not read it directly): the raw one scales as one
over the layer's weight scale, so batch-norm nets would show a trend made of init constants and of the
input size (ResNet-50's raw first/last ratio: 214 at 64x64, 70 at 224x224).

The short run (`--steps` > 0, the CLI default) then judges the harm. When every loss stays finite,
the best loss falls at least 10 % below the initial one (and, for cross-entropy, below chance, ln
C, and below the loss of predicting the batch's label frequencies, which a network ignoring its
inputs reaches too) and the final loss has not given back more than half of that gain, the network
trains despite the trend (residual nets whose branches add up their gradients do
this): the finding is an `info`. Otherwise, or without a run, it is an error: a network whose
gradients explode will not train as configured.

Severity: error when the short run fails or is absent (the network will not train as
configured); info when the short run trains normally.

## Example
Ten `Linear(32, 32)` + `ReLU` layers initialised at 3x the He std: the gradient at the first layer
is ~5e4x the one at the head.

## Fixes
`gradient-clipping`, `lower-lr`, `he-init` / `glorot-init` (proper init), `batch-norm`. When the
weights are measurably too large the init is the cause: the init scheme first, then `batch-norm`,
and clipping and a lower rate after them (they bound the steps of a network that still explodes at
init). Where layers read a norm layer's output with weights well above 1/sqrt(fan_in) (a
transformer at a large init range), `lecun-init` comes first: the variance-preserving scale for
normalised inputs, whatever activation follows. For recurrent networks clipping comes first and
batch norm is not offered. When `poor-initialization` reports the weight scale as an error, the
finding names it as the likely cause.

## Options
`ratio`, `huge_rms`, `min_layers`.

## References
- Pascanu, Mikolov & Bengio, "On the difficulty of training recurrent neural networks", 2013.
- Zhang et al., "AUTOTRAINER", ICSE 2021 (exploding ratio 70, 100 % precision for 40-100).
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (gradient magnitude > 1e6).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import (
    AdviceContext,
    Choice,
    hidden_feeders,
    init_choices,
    lecun_choice,
    loud_norm_readers,
    misscaled,
    target,
)
from diagnose.checks._model import DECADES_ABOVE, Measure
from diagnose.checks._signal import flow_layers, relaxed_when_trained
from diagnose.checks._trends import at_or_above, gradient_ratio, gradient_trend_finding
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "exploding-gradients"
# AUTOTRAINER's beta_3 (its paper reports 100 % precision and recall anywhere in 40-100). Our healthy
# zoo peaks at ~4x (GPT-style nets, where LayerNorm scales the gradient up by 1/std of a small
# residual stream); 3x-He ReLU stacks reach 5e4x.
RATIO = 70.0
# TheDeepChecker flags gradients above 1e6: at any sane learning rate such a step destroys the weights.
HUGE_RMS = 1e6
MIN_LAYERS = 3

THRESHOLDS: dict[str, float] = {"ratio": RATIO, "huge_rms": HUGE_RMS, "min_layers": MIN_LAYERS}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    finding = gradient_trend_finding(
        evidence, thresholds, check_id=ID, title="Gradients explode toward the input", verb="grows",
        fires=at_or_above,
    )
    if finding is not None:
        return [relaxed_when_trained(evidence, finding, title="Gradients grow toward the input, and training copes")]
    huge = [
        r for r in flow_layers(evidence.layers)
        if r.gradient.rms is not None and math.isfinite(r.gradient.rms) and r.gradient.rms > thresholds["huge_rms"]
    ]
    if not huge:
        return []
    worst = max(huge, key=lambda r: r.gradient.rms)
    return [
        Finding(
            id=ID,
            severity=Severity.ERROR,
            title="Gradients are huge",
            message=f"gradient RMS of {worst.name} is {worst.gradient.rms:.3g}",
            layers=tuple(r.name for r in huge),
            evidence={"max_gradient_rms": worst.gradient.rms},
        )
    ]


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("he-init", "glorot-init", "lecun-init", "batch-norm", "gradient-clipping", "lower-lr")
# A weight scale the init check has measured far too large is the cause, when it is an error there.
ROOT_CAUSES = ("poor-initialization",)


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    hidden = hidden_feeders(context) or list(context.weighted)
    large = misscaled(hidden, "large")
    clip = Choice("gradient-clipping", target(context),
                  "Recurrent layers repeat the same weights at every time step, so gradients compound."
                  if context.has_recurrent else "")
    lower = Choice("lower-lr", target(context))
    norm = Choice("batch-norm", target(context, [r.name for r in hidden]))
    if context.has_recurrent:
        return [clip, lower] + init_choices(context, large)
    loud = loud_norm_readers(context)
    if loud:
        # Layers reading a norm layer's unit-scale output with weights far above 1/sqrt(fan_in)
        # amplify at every block: LeCun's scale is the variance-preserving one whatever follows
        # (measured on GPT-2 at initializer_range 1: He for the GELU layers left the attention
        # weights and the explosion as they were; LeCun took the ratio from 5e4 to 1).
        lecun = lecun_choice(context, loud)
        return [lecun, *init_choices(context, large), clip, lower]
    if large:
        # The init is the cause: re-scaling it, or a norm layer that resets the scale, cures it;
        # clipping and a lower rate only bound the steps of a network that still explodes at init.
        choices = init_choices(context, large)
        if not context.has_norm:
            choices.append(norm)
        return choices + [clip, lower]
    choices = [clip, lower] + init_choices(context, hidden)
    if not context.has_norm:
        choices.append(norm)
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    if "max_gradient_rms" in finding.evidence:  # fired on the size of the gradient, not its trend
        values = [r.gradient.rms for r in evidence.layers if r.gradient.rms is not None]
        return Measure("max_gradient_rms", max(values) if values else None, DECADES_ABOVE)
    return gradient_ratio(evidence)
