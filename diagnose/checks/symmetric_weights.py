"""Units that start identical and can never become different.

## What it detects
A weighted layer whose weights are all the same value (all zeros, or a constant such as 0.01) and
whose output is read by another weighted layer whose weights are constant too. Every unit of the
first layer then computes the same output and receives the same gradient, at every step.

## Why it matters
Gradient descent breaks the symmetry between the units of a layer only through differences: in
their incoming weights (so they compute different things) or in their outgoing weights (so they
receive different gradients). With both constant, unit j and unit k of the layer see the same
input, produce the same output, and get the same update, so they stay equal forever: a layer of
512 units trains like a layer of one. Random initialisation exists to break this symmetry
(Goodfellow, Bengio & Courville, section 8.4). The loss still moves (the output layer learns on
top of a single feature), so nothing crashes: the model just never becomes better than a linear
model of that one feature.

A single constant layer is not this: a zero-initialised head, a LoRA `B` matrix, a zero gate in a
residual branch (Fixup, SkipInit, adaLN-Zero) or a ControlNet zero convolution read (or are read
by) random weights, so their units receive different gradients from the first step and part at
once. Those are healthy designs and are not reported.

## How it is detected
From the weight statistics of every trainable linear and convolutional layer: a weight counts as
constant when its std is below `constant_cv` (1 %) of its mean's magnitude, or exactly zero. (A
drawn init has a mean far below its std; the probes form the std as sqrt(E[w^2] - E[w]^2) in
float32, which leaves up to ~0.5 % of the mean for a constant tensor, so the bound is 1 %.) A
constant layer is reported when the probes traced its output, through activations and
normalisation layers only, into another weighted layer whose weight is constant too. A
normalisation layer does not help: it treats identical channels identically. Where the probes
could not trace the data flow (TorchScript), nothing is judged.

Severity: error: the layer's units cannot become different, whatever the optimizer or the rate.

## Example
An MLP whose `Linear` layers were all initialised with `nn.init.zeros_` (or `nn.init.constant_(w,
0.05)`): every hidden layer behaves as a single unit, and the loss barely moves.

## Fixes
Draw the weights at random with the scheme their activation needs: `he-init` for ReLU-like,
`glorot-init` for tanh/sigmoid or none, `lecun-init` for SELU. Re-initialising the reported layers
is enough; the last layer of a chain may keep its constant start.

## Options
`constant_cv`.

## References
- Goodfellow, Bengio & Courville, "Deep Learning", 2016, section 8.4 (breaking symmetry).
- AWS SageMaker Debugger, PoorWeightInitialization and AllZero rules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from diagnose.checks._advice import AdviceContext, Choice, init_choices, names, records
from diagnose.checks._model import Measure
from diagnose.checks._signal import STACK_KINDS, by_index
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence
    from probes.records import LayerRecord

ID = "symmetric-weights"
# A constant weight has std 0; the probes' float32 sqrt(E[w^2] - E[w]^2) leaves up to ~0.5 % of the
# mean for one (measured: 0.36 % for 8192 entries of 0.05). Any drawn init has |mean| << std.
CONSTANT_CV = 0.01

THRESHOLDS: dict[str, float] = {"constant_cv": CONSTANT_CV}
# Identical units stay identical whatever the rate.
STOPS_LEARNING = True
# The fixes this check may recommend; `advise` orders them for the evidence at hand.
FIXES = ("he-init", "glorot-init", "lecun-init")

# Layers a symmetric signal passes through unchanged in kind: identical units stay identical.
_TRANSPARENT = ("activation", "norm")


def constant(record: LayerRecord, cv: float) -> bool:
    """Whether the layer's weight is one value repeated (zero included)."""
    weight = record.weight
    if weight is None or weight.frozen or weight.numel < 2:
        return False
    return weight.std == 0.0 or weight.std < cv * abs(weight.mean)


def symmetric_pairs(layers: Sequence[LayerRecord], cv: float = CONSTANT_CV) -> list[tuple[LayerRecord, LayerRecord]]:
    """(constant layer, the constant layer that reads it), for each traced pair, in execution order."""
    ordered = by_index(layers)
    by_name = {r.name: r for r in ordered}
    weighted = [r for r in ordered if r.kind in STACK_KINDS and r.trainable_parameters > 0]
    pairs = []
    for reader in weighted:
        if not constant(reader, cv):
            continue
        source = _weighted_source(reader, by_name)
        if source is not None and source.kind in STACK_KINDS and source.trainable_parameters > 0 and constant(source, cv):
            pairs.append((source, reader))
    return pairs


def _weighted_source(record: LayerRecord, by_name: Mapping[str, LayerRecord]) -> LayerRecord | None:
    """The weighted layer whose output `record` reads, through activations and norm layers only;
    None when the flow was not traced or passes through anything else (an add, a reshape)."""
    source = record.input_from
    for _ in range(len(by_name)):
        if not source:  # None: not traced; "": an op no probe saw
            return None
        upstream = by_name.get(source)
        if upstream is None:
            return None
        if upstream.kind not in _TRANSPARENT:
            return upstream
        source = upstream.input_from
    return None


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    pairs = symmetric_pairs(evidence.layers, thresholds["constant_cv"])
    if not pairs:
        return []
    symmetric = by_index({layer.name: layer for layer, _ in pairs}.values())
    first, reader = pairs[0]
    value = first.weight.mean
    units = first.weight.fan_out
    count = f"{len(symmetric)} layers" if len(symmetric) > 1 else "a layer"
    return [Finding(
        id=ID,
        severity=Severity.ERROR,
        title="Units start identical and cannot become different",
        message=(
            f"{count} ({names(symmetric)}) with every weight equal ({value:.3g}), read by a layer constant too "
            f"({first.name} -> {reader.name}): each layer's {units or ''} units compute and learn one thing"
        ).replace("  ", " "),
        layers=tuple(r.name for r in symmetric),
        evidence={
            "symmetric_layers": len(symmetric),
            "weight_value": value,
            "units": units,
            "read_by": reader.name,
        },
    )]


def advise(finding: Finding, context: AdviceContext) -> list[Choice]:
    chosen = records(context, finding.layers)
    return init_choices(
        context, chosen,
        why=f"{names(chosen)} start with every weight equal: random weights break the symmetry.",
    )


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return Measure("symmetric_layers", float(len({a.name for a, _ in symmetric_pairs(evidence.layers)})))
