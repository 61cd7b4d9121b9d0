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

from diagnose.checks._signal import by_index
from diagnose.findings import Finding
from diagnose.severity import Severity

if TYPE_CHECKING:
    from diagnose.evidence import Evidence

ID = "no-gradient"
THRESHOLDS: dict[str, float] = {}


# A layer in which every unit is dead blocks all gradient below it: that zero is dead-relu's finding.
FULLY_DEAD = 0.99


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
    count = sum(len(names) for _, names in affected)
    first, names = affected[0]
    return [
        Finding(
            id=ID,
            severity=Severity.ERROR,
            title="Trainable parameters get no gradient",
            message=(
                f"{count} trainable parameter tensors in {len(affected)} layers get no gradient "
                f"(first: {first.name}.{names[0]}); is the layer's output detached or unused?"
            ),
            layers=tuple(r.name for r, _ in affected),
            evidence={
                "parameters_without_gradient": count,
                "layers_without_gradient": len(affected),
                "first": f"{first.name}.{names[0]}",
            },
        )
    ]
