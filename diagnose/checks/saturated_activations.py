"""Sigmoid/tanh-like activations are saturated.

## What it detects
A large share of the outputs of a bounded activation (sigmoid, tanh, hardtanh, hardsigmoid,
softsign) sit at its asymptotes, where its derivative is close to zero.

## Why it matters
A saturated unit passes back almost no gradient: the layers below it stop learning, and the unit
itself can only leave the flat zone very slowly. Saturation comes from pre-activations that are too
large: weights drawn with too large a std (N(0, 1) instead of Glorot), large biases, or inputs that
are not standardised.

## How it is detected
The probes measure, per bounded activation output, the share of values in the flat zone
(sigmoid / hardsigmoid below 0.01 or above 0.99, tanh / softsign beyond +-0.99, hardtanh at its
bounds). The check fires from `saturated_fraction` (0.5, as SageMaker Debugger and TheDeepChecker)
at initialisation or over the short run, and reports an error from `saturated_fraction_error`
(0.9). Saturated layers compound: a gradient reaches the layers below them only through units that
are unsaturated in each, about the product of the layers' unsaturated shares. Every bounded
activation with at least 10 % saturated counts toward it, and several such layers are an error
when that product falls to 1 - `saturated_fraction_error` (twelve sigmoid layers with N(0, 1)
weights, 35-55 % saturated each, leave ~1e-3 of the paths open), as one 90 %-saturated layer is.
A `tanh()` called inside an activation module (the tanh approximation of GELU) is not judged on
its own.

Severity: error when the saturation shuts (nearly) every gradient path (the layers below will not
train); warning otherwise (training is slowed).

## Example
Six `Linear(64, 64)` + `Tanh` layers with weights from N(0, 1): pre-activations have a std of ~8
and most units sit at +-1.

## Fixes
`glorot-init` when the weights are too large, `relu` (with He init), `batch-norm`, `fix-bias-init`
when biases push the units to the bounds, `normalize-inputs` when real inputs are unscaled.

## Options
`saturated_fraction`, `saturated_fraction_error`.

## References
- Glorot & Bengio, 2010 (saturation of the top sigmoid layer).
- AWS SageMaker Debugger, SaturatedActivation rule (threshold_layer 50 %).
- Ben Braiek & Khomh, "TheDeepChecker", TOSEM 2022 (saturated > 50 % of neurons).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._advice import (
    AdviceContext,
    Choice,
    bias_dominates,
    dominant_activation,
    init_choices,
    misscaled,
    names,
    records,
    target,
    weighted_of,
)
from diagnose.checks._model import Measure
from diagnose.checks._signal import by_index, max_fraction, owner_is_activation
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "saturated-activations"
# SageMaker Debugger and TheDeepChecker: more than half of a layer's units in the flat zone.
# Our healthy tanh + Glorot stack has ~0 % saturated; tanh with N(0, 1) weights has > 80 %.
SATURATED_FRACTION = 0.5
# Nine in ten outputs flat: the layer passes back almost no gradient at all.
SATURATED_FRACTION_ERROR = 0.9
# Layers below the per-layer bar still count toward the compounded share from this much: a healthy
# tanh/Glorot stack has ~0 % saturated per layer, so 10 % is already a mis-scaled layer.
COMPOUNDING = 0.1

THRESHOLDS: dict[str, float] = {
    "saturated_fraction": SATURATED_FRACTION,
    "saturated_fraction_error": SATURATED_FRACTION_ERROR,
}


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    layers = by_index(evidence.layers)
    run_by_name = {r.name: r for r in evidence.run_layers}
    saturated: list[tuple[str, float, str, str | None]] = []
    partly: list[tuple[str, float, str, str | None]] = []  # under the per-layer bar, still compounding
    for record in layers:
        if owner_is_activation(layers, record):
            continue
        at_init = record.activation.saturated_fraction
        run_record = run_by_name.get(record.name)
        over_run = run_record.activation.saturated_fraction if run_record is not None else None
        if at_init is not None and at_init >= thresholds["saturated_fraction"]:
            saturated.append((record.name, at_init, "init", record.activation_kind))
        elif over_run is not None and over_run >= thresholds["saturated_fraction"]:
            saturated.append((record.name, over_run, "run", record.activation_kind))
        elif at_init is not None and at_init >= COMPOUNDING:
            partly.append((record.name, at_init, "init", record.activation_kind))
    # Saturated layers in a row compound: a gradient reaches the layers below only through units
    # that are unsaturated in every one of them, about the product of the unsaturated shares.
    # Twelve sigmoid layers at 35-55 % each pass ~1e-3 of it; judged like one layer, against the
    # same 90 % bar.
    stacked = saturated + partly
    passing = math.prod(1.0 - item[1] for item in stacked)
    compounded = 1.0 - passing
    if not saturated and not (len(stacked) > 1 and compounded >= thresholds["saturated_fraction_error"]):
        return []
    stacked.sort(key=lambda item: next(r.index for r in layers if r.name == item[0]))
    name, fraction, when, family = max(stacked, key=lambda item: item[1])
    severe = fraction >= thresholds["saturated_fraction_error"] or (
        len(stacked) > 1 and compounded >= thresholds["saturated_fraction_error"])
    severity = Severity.ERROR if severe else Severity.WARNING
    phase = "at initialisation" if when == "init" else "during the short run"
    return [
        Finding(
            id=ID,
            severity=severity,
            title="Activations are saturated",
            message=(
                f"{fraction:.0%} of {family or 'activation'} outputs in {name} are pinned at a bound {phase}"
                + (f"; {len(stacked)} saturated layers in a row leave {passing:.1e} of the gradient paths open"
                   if len(stacked) > 1 else "")
            ),
            layers=tuple(item[0] for item in stacked),
            evidence={
                "max_saturated_fraction": fraction,
                "saturated_layers": len(stacked),
                "activation": family,
                "open_gradient_share": passing,
            },
        )
    ]


# Saturated units pass no gradient whatever the rate.
STOPS_LEARNING = True
# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("he-init", "glorot-init", "lecun-init", "fix-bias-init", "normalize-inputs", "relu", "batch-norm")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    acts = [r for r in records(context, finding.layers) if r.kind == "activation"]
    feeders = weighted_of(context, finding)
    activation = str(finding.evidence.get("activation") or dominant_activation(context, feeders) or "tanh")
    large = misscaled(feeders, "large")
    biased = [f for f in feeders if bias_dominates(f)]
    choices: list[Choice] = []
    if large:
        choices += init_choices(context, large)
    if biased:
        choices.append(Choice("fix-bias-init", target(context, [f.name for f in biased]),
                              f"The biases of {names(biased)} are large next to their outputs' spread."))
    if context.inputs_unscaled:
        choices.append(Choice("normalize-inputs", target(context), "The real inputs are not standardised."))
    if not context.has_recurrent:
        choices.append(Choice("relu", target(context, [r.name for r in acts], activation=activation)))
    if not context.has_norm and not context.has_recurrent:
        choices.append(Choice("batch-norm", target(context, [f.name for f in feeders])))
    if not large:
        choices += init_choices(context, feeders)
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return Measure("max_saturated_fraction", max_fraction(evidence, "saturated_fraction"))
