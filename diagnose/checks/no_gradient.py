"""Trainable parameters get no gradient.

## What it detects
Parameters marked trainable (`requires_grad=True`) that receive no gradient, or an all-zero one, in
a backward pass from the loss.

## Why it matters
The optimizer cannot change a parameter without a gradient: that part of the model stays at its
random init forever, while you pay for it in memory and compute and believe it is learning. Usual
causes: a `.detach()`, `.item()`, `.numpy()` or `torch.no_grad()` on the path to the loss; a
layer whose output is computed but never used; a branch switched off by a flag; an integer cast.

## How it is detected
After the backward pass at initialisation, every trainable parameter of every layer that ran is
looked at; the probes list those whose `.grad` is missing or exactly zero. Two zero gradients are
left to other checks: the bias of a layer that feeds a normalisation layer (normalisation removes
the mean, so that bias is merely redundant), and layers that are connected to the loss but whose
gradient is zeroed by units that are dead for every sample (`dead-relu` reports those).

With a short run (`--steps` > 0, the CLI default), a parameter is judged on the whole run: one
that gets a gradient after the first update is not cut off. That is the mark of a deliberately
zero-initialised gate (a zero classifier head as in ViT and MLP-Mixer, a zero last-γ in each
residual branch as in Goyal et al. 2017 and timm's `zero_init_last`, a zero residual gain as in
SkipInit/NF-Nets): everything upstream of a zero gate gets an exactly-zero gradient on the first
pass only. Those are reported as an `info` naming the zero-initialised layers, not as an error.
Without a run the init pass is all there is, and the error stands.

Severity: error (the parameters will never train as configured); info for a zero gate, and info
when the layers cut off hold under 1 % of the trainable parameters and the short run trains
normally (an attention-bias table over a stage that sees a single token at this input size).

## Example
An encoder whose output is `.detach()`-ed before the head, or a side `Linear` whose result is
thrown away.

## Fixes
No catalog fix applies: remove the `.detach()` (or the unused layer), or freeze those parameters
deliberately with `requires_grad_(False)` so the intent is explicit.

## Options
None.

## References
- PyTorch autograd docs, "Locally disabling gradient computation".
- AWS SageMaker Debugger, AllZero rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from diagnose.checks._model import Measure
from diagnose.checks._signal import by_index, trained_normally, zero_weight_layers
from diagnose.checks.symmetric_weights import symmetric_pairs
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "no-gradient"
THRESHOLDS: dict[str, float] = {}


# A layer in which every unit is dead blocks all gradient below it: that zero is dead-relu's finding.
FULLY_DEAD = 0.99
# Layers holding under 1 % of the trainable parameters, in a network whose short run trains, are a
# sliver: reported as info. A detached encoder or an unused branch is far more than that.
SLIVER = 0.01


def _missing(record, explained_by_dead_units: bool) -> tuple[str, ...]:
    names = tuple(record.params_without_gradient)
    if record.weight is not None and record.weight.normalized:
        names = tuple(n for n in names if n.split(".")[-1] != "bias")
    # A gradient that reached the layer's output (even as zeros) means the layer is wired to the
    # loss; with fully dead units in the model the zeros are theirs, not a detached path.
    if explained_by_dead_units and record.gradient.output_rms is not None:
        return ()
    return names


def check(evidence: Evidence, thresholds: Mapping[str, float]) -> list[Finding]:
    fully_dead = any((r.activation.dead_fraction or 0.0) >= FULLY_DEAD for r in evidence.layers)
    affected = [(r, _missing(r, fully_dead)) for r in by_index(evidence.layers)]
    affected = [(r, names) for r, names in affected if names]
    if not affected:
        return []
    cut_off, gated = _split_by_run(evidence, affected)
    findings = []
    if cut_off:
        count = sum(len(names) for _, names in cut_off)
        first, names = cut_off[0]
        findings.append(Finding(
            id=ID,
            severity=_severity(evidence, cut_off),
            title="Trainable parameters get no gradient",
            message=(
                f"{count} trainable parameter tensors in {len(cut_off)} layers get no gradient "
                f"(first: {first.name}.{names[0]})"
                + (f", at initialisation and over all {evidence.run.steps} steps of the short run"
                   if evidence.run_layers else "")
                + "; is the layer's output detached or unused?"
            ),
            layers=tuple(r.name for r, _ in cut_off),
            evidence={
                "parameters_without_gradient": count,
                "layers_without_gradient": len(cut_off),
                "first": f"{first.name}.{names[0]}",
            },
        ))
    gates = zero_weight_layers(evidence.layers)
    paired = {name for pair in symmetric_pairs(evidence.layers) for name in (pair[0].name, pair[1].name)}
    if gates and set(gates) <= paired:
        gated = []  # zero layers chained to zero layers: not a deliberate gate, symmetric-weights' finding
    if gated:
        named = f"zero-initialised {_listing(gates)}" if gates else "a zero-initialised gate (a zero γ or gain)"
        findings.append(Finding(
            id=ID,
            severity=Severity.INFO,
            title="A zero-initialised gate holds back the first gradient",
            message=(
                f"{sum(len(n) for _, n in gated)} parameter tensors in {len(gated)} layers get an exactly-zero "
                f"gradient at initialisation and a nonzero one after the first update: {named} "
                "passes no gradient until it has been updated once (a deliberate design)"
            ),
            layers=tuple(r.name for r, _ in gated),
            evidence={
                "parameters_gated": sum(len(n) for _, n in gated),
                "layers_gated": len(gated),
                "zero_initialised_layers": ", ".join(gates),
            },
        ))
    return findings


def _severity(evidence: Evidence, cut_off) -> Severity:
    """Error, unless the short run trains and the parameters cut off are a sliver of the model.

    A handful of small tensors that never get a gradient (an attention-bias table over a stage that
    attends to a single token at this input size) do not stop a network that trains from training.
    """
    trained, _ = trained_normally(evidence)
    share = _share_of_parameters(evidence, cut_off)
    if trained and share is not None and share < SLIVER:
        return Severity.INFO
    return Severity.ERROR


def _share_of_parameters(evidence: Evidence, cut_off) -> float | None:
    """Upper bound on the share of trainable parameters cut off: whole layers counted."""
    total = evidence.model.trainable_parameters
    if not total:
        return None
    return sum(r.trainable_parameters for r, _ in cut_off) / total


def _split_by_run(evidence: Evidence, affected):
    """(still without gradient over the run, gradient after the first update); all the first without a run."""
    if not evidence.run_layers:
        return affected, []
    over_run = {r.name: set(r.params_without_gradient) for r in evidence.run_layers}
    cut_off, gated = [], []
    for record, names in affected:
        never = over_run.get(record.name)
        still = tuple(n for n in names if never is None or n in never)
        if still:
            cut_off.append((record, still))
        if len(still) < len(names):
            gated.append((record, tuple(n for n in names if n not in still)))
    return cut_off, gated


def _listing(names: list[str], shown: int = 3) -> str:
    if len(names) <= shown:
        return ", ".join(names)
    return f"{', '.join(names[:shown])} and {len(names) - shown} more"


# Parameters without a gradient do not learn whatever the rate.
STOPS_LEARNING = True

# A wiring bug (a branch not connected to the loss, a detach, frozen parameters by mistake): no
# catalog fix applies; the finding's message names the parameters and what to look for.
NO_FIX = "a wiring bug: the message names the parameters and what to look for"


def metric(finding: Finding, evidence: Evidence) -> Measure:
    return Measure("params_without_gradient", float(sum(len(r.params_without_gradient) for r in evidence.layers)))
