"""Gradients vanish toward the input.

## What it detects
The gradient that backpropagation carries to each weighted layer shrinks by orders of magnitude from
the last layer to the first, so the layers near the input barely learn.

## Why it matters
Each layer multiplies the backward signal by its weights and by its activation's slope. When that
product stays below one (sigmoid's slope is at most 0.25; an init too small for ReLU halves the
variance per layer), the shrinkage compounds with depth: the first layers of a deep stack get
updates millions of times smaller than the last ones and stay close to random, while the top layers
fit noise on top of them.

## How it is detected
For every trainable weighted layer (linear, conv, recurrent, attention, embedding) the probes
measure the norm of dLoss/d(output) over the whole output at initialisation. The norm, not the
per-element RMS, because under a proper fan-in init the norm stays level through layers of any
width. The check fits a line through log10(norm) over the layers in execution order and reads off
the change from the last layer to the first; it fires when both that fitted change and the plain
first/last ratio fall below `ratio` (default 1e-3, AUTOTRAINER's beta_1). At least `min_layers`
weighted layers are needed to speak of a trend. Residual and normalised networks keep the flow level
and do not fire.

Severity: error: the layers near the input will not train as configured. It is not relaxed by
the short run: a loss can still fall through the last layers alone while the first ones stay at
their random init.

## Example
Glorot & Bengio's deep sigmoid network: `nn.Sequential` of six `Linear(64, 64)` + `Sigmoid`
layers with weights drawn from U[-1/sqrt(n), 1/sqrt(n)]: the gradient reaching the first layer is
about 1e-5x the one at the head.

## Fixes
For saturating activations the slope is the cause: `selu` first in a plain dense stack, `relu`
(with He init), `batch-norm`, and only then the Glorot scale, which leaves the slope as it is.
Otherwise `he-init` / `glorot-init` when the init is mis-scaled, `batch-norm`,
`residual-connections` for very deep stacks.

## Options
`ratio` (fire below this first/last change), `min_layers`.

## References
- Glorot & Bengio, "Understanding the difficulty of training deep feedforward neural networks", 2010.
- Zhang et al., "AUTOTRAINER", ICSE 2021 (vanishing ratio 1e-3).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import (
    VERY_DEEP,
    AdviceContext,
    Choice,
    dominant_activation,
    hidden_activations,
    hidden_feeders,
    init_choices,
    misscaled,
    target,
)
from diagnose.checks._model import Measure
from diagnose.checks._trends import at_or_below, gradient_ratio, gradient_trend_finding
from diagnose.findings import Finding
from probes.activations import RELU_LIKE, SATURATING

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "vanishing-gradients"
# AUTOTRAINER's beta_1: a first/last gradient ratio of 1e-3 means three orders of magnitude lost.
# Our healthy zoo (ResNet, transformers, LSTM, GPT-2, SELU, tanh+Glorot, small ReLU MLPs) stays
# above 0.06; the sick ones (deep sigmoid, 30-layer ReLU+Xavier) fall to ~1e-5: two orders of margin
# on both sides.
RATIO = 1e-3
# A trend needs at least three points; with two layers a single wide or narrow layer decides it.
MIN_LAYERS = 3

THRESHOLDS: dict[str, float] = {"ratio": RATIO, "min_layers": MIN_LAYERS}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    finding = gradient_trend_finding(
        evidence, thresholds, check_id=ID, title="Gradients vanish toward the input", verb="falls",
        fires=at_or_below,
    )
    return [finding] if finding is not None else []


# The first layers get no usable gradient whatever the rate.
STOPS_LEARNING = True
# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("selu", "relu", "he-init", "glorot-init", "lecun-init", "batch-norm", "residual-connections")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    hidden = hidden_feeders(context) or list(context.weighted)
    activation = dominant_activation(context, hidden)
    choices: list[Choice] = []
    small = misscaled(hidden, "small")
    if activation in SATURATING:
        # The cause is the activation's slope (at most 1/4 for sigmoid), compounding layer after
        # layer: activations whose slope is 1 fix it, SELU first in a plain dense stack (made for
        # one: it also keeps the scale), then ReLU; a norm layer resets the scale. Re-scaling the
        # weights for the sigmoid (Glorot) leaves the slope as it is: measured, it does not cure
        # it, so it comes last.
        acts = hidden_activations(context, [activation])
        relu = Choice("relu", target(context, [r.name for r in acts], activation=activation),
                      f"The hidden layers use {activation} ({len(acts)} calls per forward).")
        if context.plain_dense:
            choices.append(Choice("selu", target(context),
                                  f"This is a plain stack of dense layers with {activation} between them."))
        choices.append(relu)
    elif activation == "selu":
        choices += init_choices(context, hidden)
    else:
        choices += init_choices(context, small)
    if not context.has_norm and not context.has_recurrent:
        choices.append(Choice("batch-norm", target(context, [r.name for r in hidden]),
                              "No normalisation layer resets the scale between these layers."))
    if activation in SATURATING and small:
        choices += init_choices(context, small)
    if context.depth >= VERY_DEEP:
        choices.append(Choice("residual-connections", target(context, [r.name for r in hidden]),
                              f"The stack has {context.depth} weighted layers and no skip path."))
    if activation in RELU_LIKE and not small:
        choices += init_choices(context, hidden)
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return gradient_ratio(evidence)
