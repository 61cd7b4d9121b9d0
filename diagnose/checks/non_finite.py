"""NaN or Inf in the inputs, weights, activations, gradients or loss.

## What it detects
A non-finite value anywhere in the one forward and backward pass at initialisation: in an input, a
layer's weights, a layer's output, a gradient, or the loss itself.

## Why it matters
One NaN poisons everything computed from it: the loss becomes NaN, every gradient becomes NaN and
the first optimizer step writes NaN into every weight. Nothing can be learned until the source is
found, and the source is usually the first place it shows up in execution order.

## How it is detected
Inputs whose mean or std is non-finite, weights whose std is non-finite, layers whose outputs or
gradients contain non-finite values (counted by the probes), and a non-finite initial loss. The
message names the first layer, in execution order, where a non-finite value appears. NaN that
appears only later in the short training run is a divergence and belongs to `lr-too-high`.

Severity: error: a NaN or Inf stops training.

## Example
A healthy MLP with one weight set to `float("nan")`, or a batch with a NaN feature.

## Fixes
Clean the data (`normalize-inputs` covers the pipeline step where this belongs), re-initialise the
corrupted layer (`he-init` / `glorot-init`), `gradient-clipping` when the overflow comes from
huge activations.

## Options
None.

## References
- PyTorch, `torch.autograd.detect_anomaly` (locates the backward op that produced NaN).
- Keras `TerminateOnNaN`; AWS SageMaker Debugger, ExplodingTensor rule.
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
    misscaled,
    names,
    records,
    target,
)
from diagnose.checks._model import Measure
from diagnose.checks._signal import by_index
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "non-finite"
THRESHOLDS: dict[str, float] = {}


def _finite(value: float | None) -> bool:
    return value is None or math.isfinite(value)


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    sources: list[str] = []
    layers: list[str] = []
    bad_inputs = [s.name for s in evidence.inputs if not (_finite(s.mean) and _finite(s.std))]
    if bad_inputs:
        sources.append(f"input {bad_inputs[0]}")
    bad_weights = [r for r in by_index(evidence.layers) if r.weight is not None and not _finite(r.weight.std)]
    bad_outputs = [r for r in by_index(evidence.layers) if r.activation.nonfinite > 0]
    bad_gradients = [r for r in by_index(evidence.layers) if r.gradient.nonfinite > 0]
    if bad_weights:
        sources.append(f"weights of {bad_weights[0].name}")
    if bad_outputs:
        sources.append(f"outputs of {bad_outputs[0].name}")
    if bad_gradients:
        sources.append(f"gradients of {bad_gradients[-1].name}")
    loss = evidence.loss
    bad_loss = loss is not None and loss.initial is not None and not math.isfinite(loss.initial)
    if bad_loss:
        sources.append("the initial loss")
    if not sources:
        return []
    for group in (bad_weights, bad_outputs, bad_gradients):
        layers.extend(r.name for r in group if r.name not in layers)
    return [
        Finding(
            id=ID,
            severity=Severity.ERROR,
            title="NaN or Inf values",
            message=f"non-finite values first appear in {sources[0]}" + (
                f" (also in {', '.join(sources[1:])})" if len(sources) > 1 else ""
            ),
            layers=tuple(layers),
            evidence={
                "first_source": sources[0],
                "nonfinite_inputs": len(bad_inputs),
                "nonfinite_weights": len(bad_weights),
                "nonfinite_output_layers": len(bad_outputs),
                "nonfinite_gradient_layers": len(bad_gradients),
                "initial_loss": None if loss is None else loss.initial,
            },
        )
    ]


# NaN or Inf anywhere stops learning whatever the rate.
STOPS_LEARNING = True
# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("normalize-inputs", "he-init", "glorot-init", "lecun-init", "gradient-clipping")


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    source = str(finding.evidence.get("first_source", ""))
    choices: list[Choice] = []
    if source.startswith("input"):
        choices.append(Choice("normalize-inputs", target(context, nonfinite_inputs=True),
                              f"The non-finite values come from the {source}."))
    bad_weights = [r for r in records(context, finding.layers) if r.weight is not None and not math.isfinite(r.weight.std)]
    if bad_weights:
        choices += init_choices(context, bad_weights, why=f"The weights of {names(bad_weights)} hold NaN/Inf: re-initialise them.")
    if source.startswith("outputs"):
        choices += init_choices(context, misscaled(hidden_feeders(context), "large"))
        choices.append(Choice("gradient-clipping", target(context)))
    return choices


def metric(finding: Finding, evidence: Evidence) -> Measure:
    count = sum(r.activation.nonfinite + r.gradient.nonfinite for r in evidence.layers)
    if evidence.loss is not None and evidence.loss.initial is not None and not math.isfinite(evidence.loss.initial):
        count += 1
    return Measure("nonfinite_values", float(count))
