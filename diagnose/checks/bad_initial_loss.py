"""The loss at initialisation is far from chance level.

## What it detects
For a C-class cross-entropy, an untrained network should be about equally unsure of every class,
so its loss should start near ln C. This check fires when the initial loss is far from it.

## Why it matters
A loss far above ln C means the network starts out confidently wrong: its logits are large, the
softmax is saturated, and the first many steps are spent shrinking the last layer instead of
learning features (the "hockey stick" loss curve). It usually points at a last layer initialised
too large, inputs that are not scaled, or an activation variance that explodes.

## How it is detected
|initial loss - ln C| >= `relative_gap` x ln C (default 1.0, TheDeepChecker's bound: for 10 classes,
an initial loss of 4.6 or more). Only for cross-entropy with a known number of classes (and random
or real labels); non-finite losses belong to `non-finite`.

Severity: warning; an `info` when the short run (`--steps` > 0) still trains normally (the loss
falls at least 10 % and below ln C): the start costs a few steps and no more.

## Example
A ReLU MLP classifier whose last `Linear` was multiplied by 30: its initial loss is ~5.7 where ln 10
is 2.3.

## Fixes
`fix-bias-init` (zero the last layer's bias, or set it to the class prior, and shrink its weights),
`glorot-init` for the last layer; first, where one is measured, the cause upstream:
`normalize-inputs` when the inputs are unscaled, `lecun-init` when layers reading a norm layer's
output are initialised far above 1/sqrt(fan_in) (a transformer at a large init range), the hidden
layers' init scheme when their weights are too large. When an error upstream already inflates
the logits (`residual-stream-growth`, `exploding-gradients`, `activation-variance-explosion`,
`poor-initialization`, `non-finite`), the finding names it as the likely cause, to fix first.

## Options
`relative_gap`.

## References
- Karpathy, "A Recipe for Training Neural Networks", 2019 ("verify loss @ init").
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (|L0 - ln C| >= ln C).
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
    records,
    target,
)
from diagnose.checks._model import Measure
from diagnose.checks._signal import flow_layers, relaxed_when_trained
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "bad-initial-loss"
# TheDeepChecker's bound. Healthy default-init classifiers in our zoo start within 0.4 of ln C;
# an over-scaled head or unscaled inputs start 2-10x above it.
RELATIVE_GAP = 1.0

THRESHOLDS: dict[str, float] = {"relative_gap": RELATIVE_GAP}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    loss = evidence.loss
    if loss is None or loss.initial is None or not loss.expected_initial:
        return []
    if not math.isfinite(loss.initial) or loss.expected_initial <= 0:
        return []
    gap = loss.initial - loss.expected_initial
    if abs(gap) < thresholds["relative_gap"] * loss.expected_initial:
        return []
    weighted = flow_layers(evidence.layers)
    head = weighted[-1].name if weighted else None
    direction = "above" if gap > 0 else "below"
    # A start far from chance that the short run takes below chance within a few steps costs those
    # steps, no more (torchvision's MNASNet: 10.5 -> 0.0 in 20 steps).
    return [relaxed_when_trained(
        evidence,
        Finding(
            id=ID,
            severity=Severity.WARNING,
            title="Initial loss is far from chance level",
            message=(
                f"initial loss {loss.initial:.3g} is {abs(gap):.3g} {direction} ln {loss.num_classes or 'C'} = "
                f"{loss.expected_initial:.3g}, the loss of uniform predictions"
            ),
            layers=(head,) if head else (),
            evidence={
                "initial_loss": loss.initial,
                "expected_initial": loss.expected_initial,
                "relative_gap": abs(gap) / loss.expected_initial,
                "num_classes": loss.num_classes,
            },
        ),
    )]


# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("normalize-inputs", "he-init", "glorot-init", "lecun-init", "fix-bias-init")
# Errors that blow the logits up on their way to the head: with one of them present, the loss far
# from chance is its symptom, and the finding names it (ResNet-34/50 without batch norm: the
# stream grows 40-90x before the head; re-initialising the head only hides that).
ROOT_CAUSES = (
    "non-finite", "residual-stream-growth", "exploding-gradients", "activation-variance-explosion",
    "poor-initialization",
)


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    head = list(finding.layers[-1:])
    choices = []
    if context.inputs_unscaled:  # the cause, when present: unscaled inputs inflate every logit
        choices.append(Choice("normalize-inputs", target(context), "The real inputs are not standardised."))
    loud = loud_norm_readers(context)
    if loud:  # the cause, when present: layers that amplify normalised features at every block
        choices.append(lecun_choice(context, loud))
    large = misscaled(hidden_feeders(context), "large")
    if large:  # the cause, when present: hidden layers that amplify the signal inflate every logit
        choices += init_choices(context, large)
    choices.append(Choice("fix-bias-init", target(context, head, head=True),
                          f"The output layer {head[0]} starts confidently wrong." if head else ""))
    choices += init_choices(context, records(context, head))
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    loss = evidence.loss
    if loss is None or loss.initial is None or not loss.expected_initial:
        return Measure("relative_gap", None)
    return Measure("relative_gap", abs(loss.initial - loss.expected_initial) / loss.expected_initial)
